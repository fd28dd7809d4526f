"""The rendered book: build the HTML from the chapters' stored outputs and open
chapter pages in headless Chromium (Debian's ``chromium``), as a reader would.

The chapters themselves are executed by nbval (``make test``); here the build
runs with execution off, so it checks the rendering: the Colab buttons, the
embedded widget state, the kernel-free sliders and the figures.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (REPO / "book").glob("[0-9][0-9]_*.ipynb"))


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Build the book into a temporary folder, without executing the chapters."""
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    cfg_path = out / "_config.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).with_name("jupyter-book")
    res = subprocess.run([str(jb), "build", str(REPO), "--config", str(cfg_path), "--path-output", str(out),
                          "-W", "--keep-going"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "_build" / "html"


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    listed = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    assert listed == [f"book/{c}" for c in CHAPTERS]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_button_opens_this_chapter_on_main(built_book, chapter):
    html = (built_book / "book" / f"{chapter}.html").read_text()
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{repo}/blob/main/book/{chapter}.ipynb"
    assert expected in html


@pytest.mark.parametrize("chapter", ["04_affinity", "05_self_guided", "06_pseudo_labels"])
def test_static_page_has_controls_and_figures(built_book, chapter):
    html = (built_book / "book" / f"{chapter}.html").read_text()
    assert 'class="sgwsss-frame-slider"' in html  # the kernel-free slider
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= 3
    if chapter != "06_pseudo_labels":
        assert "application/vnd.jupyter.widget-state+json" in html  # ipywidgets state embedded


@pytest.mark.parametrize("chapter", ["07_segmentation", "09_results"])
def test_markdown_table_outputs_render_as_tables(built_book, chapter):
    """The per-class and results tables are Markdown outputs: they must become HTML tables, not pipe text."""
    html = (built_book / "book" / f"{chapter}.html").read_text()
    assert "<table" in html
    assert "|---|" not in html and "| --- |" not in html


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("chapter", ["04_affinity", "05_self_guided"])
def test_chromium_renders_widgets_and_figures(built_book, chapter, tmp_path):
    page = built_book / "book" / f"{chapter}.html"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    # the frame slider's range input and its first frame are in the live DOM
    assert re.search(r'<input[^>]+type="range"', dom)
    assert "sgwsss-frame-label" in dom
    # figures: the notebook's PNG outputs
    assert len(re.findall(r'<img[^>]+src="data:image/png', dom)) >= 3
    # ipywidgets rendered by the embedded widget manager (sliders become widget DOM nodes)
    assert re.search(r'class="[^"]*(widget-slider|jupyter-widgets|widget-hslider)', dom), "no rendered widget controls"
