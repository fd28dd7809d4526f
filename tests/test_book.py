"""The rendered book: build the HTML from the chapters' stored outputs and open
chapter pages in headless Chromium (Debian's ``chromium``), as a reader would.

The chapters themselves are executed by nbval (``make test``); here the build
runs with execution off, so it checks the rendering: the Colab buttons, the
embedded widget state, the live figures of chapters 4-6 (mounted, every control redraws, no\ndead ipywidgets control visible) and the figures; and, driven by
Playwright over a local HTTP server, that every page typesets its maths with the
MathJax served with the book (no raw TeX left, nothing fetched off localhost) and
that every exercise's worked answer is hidden until the reader clicks it.
"""
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (REPO / "book").glob("[0-9][0-9]_*.ipynb"))
BACK_MATTER = ["references"]  # book/references.md: the bibliography page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build(source: Path, out: Path) -> Path:
    """``jupyter-book build -W`` of ``source`` into ``out`` with the repository's configuration,
    execution off (the stored outputs); returns the HTML folder."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    cfg_path = out / "_config.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).with_name("jupyter-book")
    res = subprocess.run([str(jb), "build", str(source), "--config", str(cfg_path), "--path-output", str(out),
                          "-W", "--keep-going"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Build the book into a temporary folder, without executing the chapters."""
    return _build(REPO, tmp_path_factory.mktemp("book"))


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    listed = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    assert listed == [f"book/{c}" for c in CHAPTERS + BACK_MATTER]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_button_opens_this_chapter_on_main(built_book, chapter):
    html = (built_book / "book" / f"{chapter}.html").read_text()
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{repo}/blob/main/book/{chapter}.ipynb"
    assert expected in html


LIVE_CHAPTERS = ["04_affinity", "05_self_guided", "06_pseudo_labels"]
PAGE_LIMIT = 4 * 1024 * 1024  # issue 18: each chapter page under about 4 MB


@pytest.mark.parametrize("chapter", LIVE_CHAPTERS)
def test_static_page_has_a_live_figure_and_no_frame_slider(built_book, chapter):
    """The live figure (with its data and a static fallback) replaced the pre-rendered frame slider; the
    ipywidgets cells are tagged kernel-only (the module hides them on the static page); the page stays small."""
    page = built_book / "book" / f"{chapter}.html"
    html = page.read_text()
    assert html.count('<div class="sgwsss-live"') == 1
    assert 'class="sgwsss-live-data"' in html and 'class="sgwsss-live-static"' in html
    assert "sgwsss-frame-slider" not in html  # the frame sliders are gone
    assert "tag_sgwsss-kernel-only" in html  # the ipywidgets cell, hidden by the module on this page
    assert "application/vnd.jupyter.widget-state+json" in html  # ipywidgets state embedded (for a kernel-less view)
    # the live figure's static fallback (a data: JPEG) and the chapter's other figures (files in _images/)
    assert len(re.findall(r'<img[^>]+src="(?:data:image/(?:png|jpeg);base64,|\.\./_images/)', html)) >= 2
    assert page.stat().st_size < PAGE_LIMIT, f"{chapter}.html is {page.stat().st_size / 2**20:.1f} MiB"


@pytest.mark.parametrize("chapter", ["07_segmentation", "09_results"])
def test_markdown_table_outputs_render_as_tables(built_book, chapter):
    """The per-class and results tables are Markdown outputs: they must become HTML tables, not pipe text."""
    html = (built_book / "book" / f"{chapter}.html").read_text()
    assert "<table" in html
    assert "|---|" not in html and "| --- |" not in html


needs_chromium = pytest.mark.skipif(
    _chromium() is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")


@needs_chromium
@pytest.mark.parametrize("chapter", LIVE_CHAPTERS)
def test_live_figure_runs_and_no_dead_control_is_visible(book_url, browser, chapter):
    """On the built page the live figure mounts (its canvas replaces the static figure), every control it shows
    redraws it, and no ipywidgets control (which would need a kernel) is left visible."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{book_url}book/{chapter}.html", wait_until="load")
        page.wait_for_selector(".sgwsss-live[data-state=ready]", timeout=180_000)
        assert page.is_visible("[data-sgwsss-live-canvas]") and not page.is_visible(".sgwsss-live-static")
        for sel in (".tag_sgwsss-kernel-only .cell_output", ".jupyter-widgets", ".widget-slider", ".widget-dropdown"):
            loc = page.locator(sel)
            visible = [i for i in range(loc.count()) if loc.nth(i).is_visible()]
            assert not visible, f"{len(visible)} visible {sel} on the static page (dead controls)"
        assert "need a running kernel" in page.inner_text(".sgwsss-live-kernel-note")
        controls = page.locator(".sgwsss-live [data-control]").evaluate_all(
            "els => els.filter(e => e.offsetParent !== null).map(e => [e.dataset.control, e.tagName, "
            "e.tagName === 'SELECT' ? [...e.options].map(o => o.value) : [e.min, e.max]])")
        assert controls, "the live figure shows no control"
        def move(name, value):
            gen = page.get_attribute(".sgwsss-live", "data-generation")
            page.evaluate("""([name, value]) => {
                const e = document.querySelector(`[data-control="${name}"]`);
                e.value = value;
                e.dispatchEvent(new Event(e.tagName === "SELECT" ? "change" : "input", {bubbles: true}));
            }""", [name, value])
            page.wait_for_function("g => document.querySelector('.sgwsss-live').dataset.generation !== g "
                                   "&& document.querySelector('.sgwsss-live').dataset.state === 'ready'", arg=gen,
                                   timeout=120_000)
            return page.evaluate("document.querySelector('[data-sgwsss-live-canvas]').toDataURL()")

        for name, tag, values in controls:  # each control moved from the defaults, then put back
            current = page.eval_on_selector(f'[data-control="{name}"]', "e => e.value")
            options = [v for v in values if v != current] if tag == "SELECT" else [v for v in values[::-1] if v != current]
            if not options:
                continue  # a picker with one option (e.g. an image's only class)
            before = page.evaluate("document.querySelector('[data-sgwsss-live-canvas]').toDataURL()")
            assert move(name, options[0]) != before, f"{chapter}: moving {name} to {options[0]} did not change the figure"
            move(name, current)
    finally:
        page.close()


# ---- Playwright: maths typeset offline, solutions hidden until clicked ---------------------------------

# Raw TeX a reader should never see: math delimiters, a control word (\times, \mathbb, \frac, \sum,
# \top, ...), or a $...$ span holding TeX that was never turned into maths.
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\\[A-Za-z]{2,}|\$[^$\n]*[\\^_{}][^$\n]*\$")

# After MathJax's first typeset (and its fonts) has finished: what the page shows. Code (pre, code) is
# left out of the visible text: TeX in a code cell is code.
_RENDER_JS = """async () => {
  const mj = window.MathJax;
  const typesetter = !!(mj && mj.startup && mj.startup.promise);
  if (typesetter) await mj.startup.promise;
  await document.fonts.ready;
  const maths = [...document.querySelectorAll('span.math, div.math')];
  const hide = document.createElement('style');
  hide.textContent = 'pre, code { display: none !important; }';
  document.head.appendChild(hide);
  const text = (document.querySelector('article') || document.body).innerText;
  hide.remove();
  return {
    typesetter,
    maths: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 60)),
    errors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    fonts: [...document.fonts].filter(f => f.family.startsWith('MJX') && f.status === 'error').map(f => f.family),
    text,
  };
}"""


@functools.lru_cache(maxsize=None)
def _source_has_maths(name: str) -> bool:
    """Whether a chapter's Markdown cells (or a Markdown page) hold $...$ maths."""
    path = REPO / "book" / f"{name}.ipynb"
    if path.exists():
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = (REPO / "book" / f"{name}.md").read_text()
    return re.search(r"\$[^$\n]+\$", text) is not None


class _Server(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def serve():
    """``serve(folder)`` -> the base URL of an HTTP server on 127.0.0.1 over ``folder``."""
    servers = []

    def start(folder: Path) -> str:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Server, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (Debian's, no Playwright download) for every page of the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, url: str, base: str):
    """Open ``url``; every request off ``base`` is recorded and aborted. Returns (page, report, problems)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    offsite, missing = [], []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            offsite.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("response", lambda resp: missing.append(resp.url) if resp.status >= 400 and "/mathjax/" in resp.url
            else None)
    page.goto(url, wait_until="load")
    report = page.evaluate(_RENDER_JS)
    problems = [f"request left localhost: {u}" for u in offsite]
    problems += [f"MathJax file missing: {u}" for u in missing]
    if report["maths"] and not report["typesetter"]:
        problems.append("MathJax did not load")
    problems += [f"maths not typeset: {m!r}" for m in report["untypeset"][:5]]
    problems += [f"MathJax error: {e!r}" for e in report["errors"][:5]]
    problems += [f"MathJax font not loaded: {f}" for f in report["fonts"]]
    text = report["text"]
    problems += [f"raw TeX in the page's text: {text[max(0, m.start() - 30):m.end() + 30]!r}"
                 for m in list(RAW_TEX.finditer(text))[:5]]
    return page, report, problems


def _solution_problems(page) -> list:
    """Every exercise has a solution; every solution is hidden until its toggle is clicked, then shown."""
    problems = []
    solutions = page.locator("div.solution")
    answered = {a.removeprefix("#") for a in page.locator("div.solution .admonition-title a.reference")
                .evaluate_all("els => els.map(e => e.getAttribute('href'))")}
    for ex in page.locator("div.exercise").evaluate_all("els => els.map(e => e.id)"):
        if ex not in answered:
            problems.append(f"exercise {ex} has no worked answer (solution)")
    for i in range(solutions.count()):
        sol = solutions.nth(i)
        link = sol.locator(".admonition-title a.reference")
        name = f"to {link.first.get_attribute('href').removeprefix('#')}" if link.count() else sol.get_attribute("id")
        body = sol.locator(":scope > :not(.admonition-title)")
        if body.count() == 0:
            problems.append(f"solution {name} is empty")
            continue
        if any(body.nth(j).is_visible() for j in range(body.count())):
            problems.append(f"solution {name} is shown before any click")
            continue
        toggle = sol.locator("button.toggle-button, summary")
        if toggle.count() == 0:
            problems.append(f"solution {name} has nothing to click")
            continue
        toggle.first.click()
        try:
            body.first.wait_for(state="visible", timeout=5000)
        except Exception:  # playwright's TimeoutError
            problems.append(f"solution {name} stays hidden after a click")
    return problems


@pytest.fixture(scope="module")
def book_url(built_book, serve):
    return serve(built_book)


@needs_chromium
@pytest.mark.parametrize("name", CHAPTERS + BACK_MATTER)
def test_page_renders_offline(book_url, browser, name):
    """MathJax from the book typesets every formula (no raw TeX in the text, no TeX error, its fonts
    loaded), no request leaves localhost, and every exercise's solution is hidden until clicked."""
    page, report, problems = _open(browser, f"{book_url}book/{name}.html", book_url)
    try:
        if _source_has_maths(name) and not report["maths"]:
            problems.append("the source has $...$ maths but the page has no maths element")
        problems += _solution_problems(page)
    finally:
        page.close()
    assert not problems, "\n".join(problems)


SCRATCH_PAGES = {
    "_toc.yml": "format: jb-book\nroot: good\nchapters:\n  - file: defects\n  - file: refs\n",
    "good.md": r"""# Good

Inline $T = D^{-1} W$ and $x \in \mathbb{R}^{C \times H \times W}$; {cite:t}`he2013guided` and {cite:p}`otsu1979threshold`.

$$G^c_p = \sum_q K_{pq}(I)\, B^c_q, \qquad \frac{1}{|\omega|}\, a^\top$$

```{exercise}
:label: ex-good

What does $\epsilon$ do?
```

```{solution} ex-good
:class: dropdown

It regularises $a_k$.
```
""",
    "defects.md": r"""# Defects

Raw TeX outside maths: \mathbb{R}. Unbalanced maths: $\frac{1}{$. A TeX error: $x^^2$.
An image from elsewhere:
![](https://offsite.invalid/pixel.png)

```{exercise}
:label: ex-shown

A question.
```

```{solution} ex-shown

Shown before any click.
```

```{exercise}
:label: ex-unanswered

A question with no worked answer.
```
""",
    "refs.md": "# References\n\n```{bibliography}\n```\n",
}


@pytest.fixture(scope="module")
def scratch_url(tmp_path_factory, serve):
    """A two-page scratch book with the repository's configuration: one page as the chapters should
    be (maths, citations, an exercise with a hidden solution), one with a defect of each kind."""
    src = tmp_path_factory.mktemp("scratch-src")
    for name in ("_static", "_vendor"):
        shutil.copytree(REPO / name, src / name)
    shutil.copy(REPO / "references.bib", src)
    for name, text in SCRATCH_PAGES.items():
        (src / name).write_text(text)
    return serve(_build(src, tmp_path_factory.mktemp("scratch")))


@needs_chromium
def test_render_checks_pass_a_good_page_and_catch_each_defect(scratch_url, browser):
    page, report, problems = _open(browser, f"{scratch_url}good.html", scratch_url)
    try:
        assert report["typesetter"] and report["maths"] == 5  # 2 inline, 1 display, 1 in the exercise, 1 in its solution
        assert page.locator(".bibtex-citation a[href^='refs.html']").count() == 2
        problems += _solution_problems(page)
        assert page.locator("div.solution").is_visible()
    finally:
        page.close()
    assert problems == []

    page, report, problems = _open(browser, f"{scratch_url}defects.html", scratch_url)
    try:
        problems += _solution_problems(page)
    finally:
        page.close()
    found = "\n".join(problems)
    assert "request left localhost: https://offsite.invalid/pixel.png" in found
    assert re.search(r"^raw TeX in the page's text: .*\\\\mathbb\{R\}", found, re.M)
    assert "maths not typeset: '\\\\(\\\\frac{1}{\\\\)'" in found  # MathJax finds no maths in unbalanced braces
    assert "MathJax error: 'Missing open brace for superscript'" in found
    assert "solution to ex-shown is shown before any click" in found
    assert "exercise ex-unanswered has no worked answer (solution)" in found
