"""The live refinement figure (sgwsss.book.live + _static/sgwsss_live*.js) against the package.

A page built by the exporter is opened in headless Chromium (Debian's ``chromium`` through
Playwright, no browser download); the maps the page computes are read back through
``window.sgwsssLive.computeEncoded`` and compared with the Python operators on the same
inputs (:func:`sgwsss.book.live.stage_maps`, i.e. ``refine_stage`` for the Table 1
stages): a real VOC photograph with synthetic smooth maps of three overlapping classes
and synthetic features, so no trained network is needed. Also: a trained run's real
outputs when one is cached, every control changes the canvas, and the degrade paths.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sgwsss.book import live

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
CONFIG = {"grid": 25, "beta": 10.0, "radius": 17, "eps": 1e-6}
CLASSES = (6, 11, 14)  # bus, dog, person channels: three classes whose maps overlap


# ---------------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def images(voc_small_dataset):
    return [live.demo_image(voc_small_dataset[i], CLASSES, seed=i) for i in range(2)]


# ----------------------------------------------------------------------------------- pages

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server (module workers do not load from file://) over a temporary folder."""
    root = tmp_path_factory.mktemp("live-pages")
    with live.serve(root) as url:
        yield root, url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, server, name, figure, *, book_page=True, extra_html="", init_script=None, wait="ready"):
    root, url = server
    live.write_page(root / name, figure, book_page=book_page, extra_html=extra_html)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if init_script:
        page.add_init_script(init_script)
    page.goto(f"{url}/{name}/index.html")
    if wait:
        page.wait_for_selector(f".sgwsss-live[data-state={wait}]", timeout=120_000)
    page.errors = errors
    return page


@pytest.fixture(scope="module")
def figure(images):
    return live.live_figure(images, config=CONFIG, defaults={"stage": "G"}, static=True)


@pytest.fixture(scope="module")
def page(browser, server, figure):
    p = open_page(browser, server, "main", figure)
    yield p
    p.close()


def js_compute(page, **opts):
    r = page.evaluate("(o) => sgwsssLive.computeEncoded(o)", opts)
    maps = np.stack([np.frombuffer(base64.b64decode(m), dtype="<f4").reshape(r["h"], r["w"]) for m in r["maps"]])
    labels = np.frombuffer(base64.b64decode(r["labels"]), dtype=np.uint8).reshape(r["h"], r["w"])
    return maps, labels


def canvas_digest(page):
    return hashlib.sha1(page.evaluate("document.querySelector('[data-sgwsss-live-canvas]').toDataURL()").encode()
                        ).hexdigest()


# -------------------------------------------------------------------- agreement with Python

SETTINGS = [
    dict(stage="A"),
    dict(stage="R"),
    dict(stage="G-w/o-aff"),
    dict(stage="G"),
    dict(stage="G-iter15-w/o-aff"),
    dict(stage="G-iter15"),
    dict(stage="R", beta=2.0, steps=3),
    dict(stage="G", beta=40.0, steps=2),
    dict(stage="G-w/o-aff", iterations=5, threshold=0.35),
    dict(stage="G-iter15", radius=5, eps=1e-3),
    dict(stage="G", radius=30, eps=1e-8, iterations=7, image=1),
]


def compare(page, img, stage, **kw):
    """The page's maps and labels against the package's: (max abs, share of labels equal, share of |diff| > 1e-3,
    and for the stages after the walk also the max abs against the package's refinement of the page's own R)."""
    from sgwsss.refine.self_guided import self_guided_refine

    maps, labels = js_compute(page, image=img.id, stage=stage, **kw)
    ref_maps, ref_labels = (t.numpy() for t in live.stage_maps(img, stage, grid=CONFIG["grid"], **kw))
    assert maps.shape == ref_maps.shape
    diff = np.abs(maps - ref_maps)
    out = {"max_abs": float(diff.max()), "labels_equal": float((labels == ref_labels).mean()),
           "beyond_1e-3": float((diff > 1e-3).mean())}
    k = {"G-w/o-aff": 1, "G": 1, "G-iter15-w/o-aff": 15, "G-iter15": 15}.get(stage, 0)
    if stage in ("R", "G", "G-iter15"):
        # The package's float32 walk carries 1e-6..1e-4 of rounding noise (torch's vectorised sqrt, exp, pow are
        # not correctly rounded; W^beta multiplies relative errors by beta); the page walks in float64, so its R
        # is compared with the package's float64 R too. A pixel of R that close to its Otsu threshold binarises
        # either way (as the package's float32 and float64 runs do), so the refinement is also checked on the
        # page's own R, where it must agree to the tolerance everywhere.
        walk = {key: kw[key] for key in ("beta", "steps") if key in kw}
        r_js, _ = js_compute(page, image=img.id, stage="R", **walk)
        r_py, _ = live.stage_maps(img, "R", grid=CONFIG["grid"], **walk)
        r_64, _ = live.stage_maps(img, "R", grid=CONFIG["grid"], dtype=torch.float64, **walk)
        out["r_max_abs"] = float(np.abs(r_js - r_py.numpy()).max())
        out["r_max_abs_float64"] = float(np.abs(r_js - r_64.numpy()).max())
    if stage in ("G", "G-iter15"):
        full = torch.zeros(1, 20, *maps.shape[1:])
        full[0, list(CLASSES)] = torch.from_numpy(r_js)
        refined = self_guided_refine(img.image[None], full, iterations=kw.get("iterations") or k,
                                     radius=kw["radius"], eps=kw["eps"], labels=img.labels[None],
                                     threshold=kw.get("threshold"))[0, list(CLASSES)].numpy()
        out["max_abs_same_r"] = float(np.abs(maps - refined).max())
        if out["beyond_1e-3"] > 1e-3:
            # the package's own float32-vs-float64 difference on these inputs: the same flips
            own, _ = live.stage_maps(img, stage, grid=CONFIG["grid"], dtype=torch.float64, **kw)
            out["package_beyond_1e-3"] = float((np.abs(ref_maps - own.numpy()) > 1e-3).mean())
    return out


def _labels_agree(share: float) -> None:
    """Issue 18's bar: the page's pseudo labels equal the package's on >= 99.9% of pixels.

    Eq. 11's ties (two classes' refined maps both 1 inside overlapping masks) are broken the same way on
    both sides by ``TIE_TOLERANCE``; before it, float32 rounding picked the winner (98.75% on a trained
    run's image, and 94-99% between the package's own numba and torch paths).
    """
    assert share >= 0.999, f"labels equal on {100 * share:.3f}% < 99.9%"


def stepwise(page, img, stage, k, kw):
    """Max abs, over iterations 1..k, of the page's iteration j against one package iteration of the page's j - 1.

    Otsu's threshold is a discontinuous function of the map: the first maximum of the between-class variance
    moves by a bin when a 1-ulp change of the map's maximum moves the bin edges (seen: iteration 1 of the
    demo's person map, 0.4508 on the page and 0.4451 in the package, on maps within 1.8e-7; Otsu of the
    page's own map gives the page's threshold exactly). Each later iteration then binarises a different
    mask, so 15 iterations end up to 0.08 apart. Checking every iteration from the page's previous one
    tests the operator without that amplification.
    """
    from sgwsss.refine.self_guided import self_guided_refine

    source = "A" if stage in ("G-w/o-aff", "G-iter15-w/o-aff") else "R"
    walk = {key: kw[key] for key in ("beta", "steps") if key in kw and source == "R"}
    prev, _ = js_compute(page, image=img.id, stage=source, **walk)
    worst = 0.0
    for j in range(1, k + 1):
        cur, _ = js_compute(page, image=img.id, stage="G-w/o-aff" if source == "A" else "G", iterations=j, **kw)
        full = torch.zeros(1, 20, *prev.shape[1:])
        full[0, list(CLASSES)] = torch.from_numpy(prev.copy())
        one = self_guided_refine(img.image[None], full, iterations=1, radius=kw["radius"], eps=kw["eps"],
                                 labels=img.labels[None], threshold=kw.get("threshold"))[0, list(CLASSES)].numpy()
        worst = max(worst, float(np.abs(cur - one).max()))
        prev = cur
    return worst


@needs_browser
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_page_matches_python(page, images, setting):
    """Refined maps within 1e-3 (max abs) and pseudo labels equal on >= 99.9% of pixels.

    For the refinements after the walk the 1e-3 holds on the page's own R (``max_abs_same_r``); against
    the package's R it holds except near the few pixels of R whose binarisation float32 noise decides,
    which are no more than the package's own float32 and float64 computations disagree on (+ 0.1%).
    """
    s = dict(setting)
    img = images[s.pop("image", 0)]
    stage = s.pop("stage")
    kw = {"beta": CONFIG["beta"], "radius": CONFIG["radius"], "eps": CONFIG["eps"], **s}
    r = compare(page, img, stage, **kw)
    print(f"\n{img.id} {stage} {kw}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
    if "r_max_abs" in r:
        assert r["r_max_abs"] <= 1e-3 and r["r_max_abs_float64"] <= 1e-5
    if "max_abs_same_r" in r:
        assert r["max_abs_same_r"] <= 1e-3
        assert r["beyond_1e-3"] <= r.get("package_beyond_1e-3", 0.0) + 1e-3
    else:
        k = s.get("iterations") or {"G-w/o-aff": 1, "G-iter15-w/o-aff": 15}.get(stage, 0)
        if r["max_abs"] > 1e-3 and k > 1:  # an Otsu bin flip in an early iteration (see stepwise)
            r["stepwise_max_abs"] = stepwise(page, img, stage, k, {key: v for key, v in kw.items() if key != "iterations"})
            print(f"  stepwise max abs {r['stepwise_max_abs']:.3g}")
            assert r["stepwise_max_abs"] <= 1e-3
        else:
            assert r["max_abs"] <= 1e-3
    assert not page.errors
    _labels_agree(r["labels_equal"])


@needs_browser
def test_page_matches_a_trained_run(browser, server, voc_root):
    """The network's real maps and features, when a trained run is cached (else skipped)."""
    from sgwsss import book
    from sgwsss.data import VOCSegmentation

    # the chapters' runs (conftest points the data cache elsewhere, so not book.work_dir())
    work = Path(os.environ.get("SGWSSS_WORK_DIR") or Path.home() / ".cache" / "sgwsss" / "work")
    runs = sorted(work.glob("cpu-*/checkpoints/round1_step1.pt")) + sorted(work.glob("*/checkpoints/round1_step1.pt"))
    if not runs:
        pytest.skip(f"no trained run under {work} (the chapters train one)")
    model, meta = book.load_model(runs[0].parents[1], "step1")
    train = VOCSegmentation(voc_root, split="train", with_mask=True)
    explorers = [book.Explorer(model, train[i], config=meta["config"]) for i in (10, 200)]
    fig = live.live_figure(explorers, static=False)
    cfg = fig.payload["config"]
    p = open_page(browser, server, "trained", fig)
    try:
        for ex, stage in ((explorers[0], "G-iter15"), (explorers[1], "G"), (explorers[1], "R")):
            maps, labels = js_compute(p, image=ex.item["id"], stage=stage)
            img = live.as_live_image(ex)
            ref_maps, ref_labels = live.stage_maps(img, stage, grid=cfg["grid"], beta=cfg["beta"],
                                                   radius=cfg["radius"], eps=cfg["eps"])
            diff = np.abs(maps - ref_maps.numpy())
            agree = float((labels == ref_labels.numpy()).mean())
            print(f"\ntrained run, {ex.item['id']} {stage}: max abs {diff.max():.3g}, beyond 1e-3 "
                  f"{(diff > 1e-3).mean():.3g}, labels equal on {100 * agree:.4f}%")
            assert (diff > 1e-3).mean() <= 1e-3
            _labels_agree(agree)
    finally:
        p.close()


# --------------------------------------------------------------------------------- controls

@needs_browser
def test_every_control_changes_the_figure(browser, server, figure):
    """Moving each control (as a reader does, through the DOM) redraws the canvas differently."""
    p = open_page(browser, server, "controls", figure)
    try:
        moves = [("stage", "G-iter15"), ("radius", "9"), ("eps", "-3"), ("iterations", "4"), ("thresholdMode", "manual"),
                 ("threshold", "0.3"), ("beta", "0.3"), ("steps", "4"), ("class", "1"), ("image", "1"),
                 ("stage", "A"), ("iterations", "2")]
        for name, value in moves:
            before, gen = canvas_digest(p), p.get_attribute(".sgwsss-live", "data-generation")
            p.evaluate("""([name, value]) => {
                const e = document.querySelector(`[data-control="${name}"]`);
                e.value = value;
                e.dispatchEvent(new Event(e.tagName === "SELECT" ? "change" : "input", {bubbles: true}));
            }""", [name, value])
            p.wait_for_function("g => document.querySelector('.sgwsss-live').dataset.generation !== g "
                                "&& document.querySelector('.sgwsss-live').dataset.state === 'ready'", arg=gen,
                                timeout=60_000)
            assert canvas_digest(p) != before, f"moving {name} to {value} did not change the figure"
        state = p.evaluate("sgwsssLive.figures[0].state()")
        # stage A + an iterations move switches to the refined stage without the walk
        assert state["stage"] == "G-w/o-aff" and state["iterations"] == 2
        assert not p.errors
    finally:
        p.close()


@needs_browser
def test_static_book_hides_kernel_only_outputs(browser, server, figure):
    cell = ('<div class="cell tag_sgwsss-kernel-only"><div class="cell_input">code</div>'
            '<div class="cell_output" id="widgets">ipywidgets</div></div>')
    p = open_page(browser, server, "kernel-only", figure, extra_html=cell)
    try:
        assert not p.is_visible("#widgets")
        assert "need a running kernel" in p.inner_text(".sgwsss-live-kernel-note")
        assert p.is_visible("[data-sgwsss-live-canvas]") and not p.is_visible(".sgwsss-live-static")
    finally:
        p.close()


# ------------------------------------------------------------------------------- degrading

def assert_static(browser, server, name, figure, words, init_script=None):
    """The page keeps the static figure and its note says why (``words`` in it)."""
    p = open_page(browser, server, name, figure, init_script=init_script, wait="failed")
    try:
        assert p.is_visible(".sgwsss-live-static") and not p.is_visible("[data-sgwsss-live-canvas]")
        assert words in p.inner_text(".sgwsss-live-note")
    finally:
        p.close()


@needs_browser
def test_without_the_module_the_static_figure_stays(browser, server, figure):
    broken = live.LiveFigure(figure.payload, figure.static_jpeg, "./_static/missing.js")
    assert_static(browser, server, "no-module", broken, "could not load")


@needs_browser
def test_missing_browser_feature_keeps_the_static_figure(browser, server, figure):
    assert_static(browser, server, "no-bitmap", figure, "createImageBitmap", "delete window.createImageBitmap;")


@needs_browser
def test_altered_pixels_are_refused(browser, server, figure):
    """A browser that perturbs canvas read-backs (privacy protection) must not show wrong numbers."""
    farble = """
    const orig = CanvasRenderingContext2D.prototype.getImageData;
    CanvasRenderingContext2D.prototype.getImageData = function (...a) {
      const d = orig.apply(this, a); d.data[0] ^= 1; return d;
    };"""
    assert_static(browser, server, "farbled", figure, "altered", farble)


@needs_browser
def test_outside_the_book_the_static_figure_says_where_it_runs(browser, server, figure):
    """A notebook front-end (no book page): no attempt to load, one line, ipywidgets untouched."""
    cell = '<div class="cell tag_sgwsss-kernel-only"><div class="cell_output" id="widgets">ipywidgets</div></div>'
    root, url = server
    page_path = live.write_page(root / "notebook", figure, book_page=True, extra_html=cell)
    html = page_path.read_text().replace(' data-content_root="./"', "")  # what Jupyter shows: no Sphinx page
    page_path.write_text(html)
    p = browser.new_page()
    try:
        p.goto(f"{url}/notebook/index.html")
        p.wait_for_function("document.querySelector('.sgwsss-live-note').textContent.includes('rendered book')")
        assert p.is_visible(".sgwsss-live-static") and p.is_visible("#widgets")
    finally:
        p.close()


@needs_browser
def test_without_workers_the_page_computes_the_same(browser, server, figure, page):
    """On the page itself and with the JS passes (no WebAssembly): the same bits as the workers' SIMD kernels."""
    p = open_page(browser, server, "no-workers", figure, init_script="delete window.Worker; window.sgwsssLiveNoWasm = true;")
    try:
        assert "no Web Workers" in p.inner_text(".sgwsss-live-note")
        assert "without WebAssembly SIMD" in p.inner_text(".sgwsss-live-status")
        assert "without WebAssembly" not in page.inner_text(".sgwsss-live-status")
        for opts in (dict(stage="G", radius=9, eps=1e-4), dict(stage="G-iter15-w/o-aff", radius=17, image=1)):
            a, la = js_compute(p, **opts)
            b, lb = js_compute(page, **opts)
            assert np.array_equal(a, b) and np.array_equal(la, lb)
    finally:
        p.close()


# --------------------------------------------------------------------------- Python side

def test_payload_is_lossless_and_small(images):
    from PIL import Image
    import io

    fig = live.live_figure(images[:1], config=CONFIG, static=False)
    im = fig.payload["images"][0]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(im["rgb"]["data"]))).convert("RGB"))
    expected = np.round(images[0].image.numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(rgb, expected)
    assert im["rgb"]["fnv1a"] == live.fnv1a(expected.tobytes())
    cam = np.frombuffer(base64.b64decode(im["cam"]["data"]), dtype="<f4").reshape(len(CLASSES), im["cam"]["h"], -1)
    assert np.array_equal(cam, images[0].cam[list(CLASSES)].numpy())
    assert im["classes"] == list(CLASSES)
    assert fig.sizes()["images"][0]["total"] < 600_000  # a VOC photo: under 0.6 MB of base64


def test_fnv1a_reference_values():
    assert live.fnv1a(b"") == 0x811C9DC5
    assert live.fnv1a(b"a") == 0xE40C292C
    assert live.fnv1a(b"foobar") == 0xBF9CF968


def test_stage_maps_is_refine_stage_for_table1_stages(images):
    from sgwsss.refine.affinity import affinity_matrix, resize_to_grid, transition_matrix
    from sgwsss.refine.stages import refine_stage

    img = images[0]
    maps, _ = live.stage_maps(img, "G", grid=25, beta=10.0)
    t = transition_matrix(affinity_matrix(resize_to_grid(img.feat[None], 25), grid=25), 10.0)
    ref = refine_stage("G", img.image[None], img.cam[None], img.labels[None], t, grid=25)
    assert torch.equal(maps, ref[0, list(CLASSES)])


def test_exporter_errors_name_the_problem(images):
    img = images[0]
    with pytest.raises(ValueError, match="8-bit"):
        live.image_payload(live.LiveImage("x", img.image * 0.5 + 0.001, img.cam, img.labels, img.feat), 25)
    with pytest.raises(ValueError, match="no present class"):
        live.image_payload(live.LiveImage("x", img.image, img.cam, torch.zeros(20), img.feat), 25)
    with pytest.raises(ValueError, match="unknown controls"):
        live.live_figure([img], config=CONFIG, controls=("radius", "sigma"), static=False)
    with pytest.raises(ValueError, match="missing"):
        live.live_figure([img], config={"grid": 25}, static=False)
    with pytest.raises(TypeError, match="cannot make a live image"):
        live.as_live_image(42)
