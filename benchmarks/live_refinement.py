"""Benchmark: time from a control change to the redrawn live figure, in headless Chromium.

A page made by ``sgwsss.book.live`` holds one VOC photograph with the longest side 500
and two present classes (synthetic smooth maps and features, ``live.demo_image``: no
network needed), stage G-iter15 (15 iterations). Each measured change moves one control
through the page's DOM (an ``input`` event, as a reader's drag does) to a value not in
the page's caches, so the whole refinement is recomputed; the figure reports the time
from the event to the first animation frame after the canvas was redrawn. Printed: the
median (and 90th percentile) over ``--changes`` changes per control, all of them
together, and the cached changes (iterations, class) for comparison. Example::

    python benchmarks/live_refinement.py --changes 24

Needs Debian's ``chromium`` and the ``playwright`` package (no browser download).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgwsss.book import live  # noqa: E402

MOVE = """([name, value]) => {
  const e = document.querySelector(`[data-control="${name}"]`);
  e.value = String(value);
  e.dispatchEvent(new Event(e.tagName === "SELECT" ? "change" : "input", {bubbles: true}));
}"""
READY = ("g => document.querySelector('.sgwsss-live').dataset.generation !== g "
         "&& document.querySelector('.sgwsss-live').dataset.state === 'ready'")


def pick_image(root, split: str, nth: int = 0):
    """The ``nth`` (from 0) image of ``split`` whose longest side is 500 (VOC-sized)."""
    from sgwsss.data import VOCSegmentation

    ds = VOCSegmentation(root, split=split, with_mask=True)
    for i in range(len(ds)):
        item = ds[i]
        if max(item["image"].shape[-2:]) == 500:
            if nth == 0:
                return item
            nth -= 1
    raise SystemExit(f"no image with longest side 500 in {split}")


COMPUTE = []  # the computation's share of each latency (runSetting: workers, messages, Eq. 11)


def move(page, name, value) -> float:
    """Move control ``name`` to ``value``; wait for the redraw; the figure's latency (ms)."""
    gen = page.get_attribute(".sgwsss-live", "data-generation")
    page.evaluate(MOVE, [name, value])
    page.wait_for_function(READY, arg=gen, timeout=120_000)
    timing = page.evaluate("sgwsssLive.figures[0].timing")
    COMPUTE.append(float(timing["computeMs"]))
    return float(timing["latencyMs"])


def plan(n: int):
    """``n`` changes per control to values the page has not cached (radius, log10 eps, threshold)."""
    radii = [r for pair in zip(range(18, 41), range(16, 0, -1)) for r in pair][:n]
    above, below = [-6 + 0.25 * k for k in range(1, 25)], [-6 - 0.25 * k for k in range(1, 9)]
    eps = [v for pair in zip(above, below) for v in pair] + above[len(below):]
    eps = eps[:n]
    thresholds = [round(0.3 + 0.01 * k, 2) for k in range(n)]
    return {"radius": radii, "eps": eps, "threshold": thresholds}


def summary(xs):
    xs = sorted(xs)
    return {"median_ms": statistics.median(xs), "p90_ms": xs[min(len(xs) - 1, int(0.9 * len(xs)))], "n": len(xs)}


def main():
    default_root = os.environ.get("SGWSSS_VOC_ROOT", str(REPO.parent / "shared" / "voc-sample"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voc-root", default=default_root, help="folder holding VOCdevkit/ (default: %(default)s)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--changes", type=int, default=24, help="measured changes per control (>= 20)")
    ap.add_argument("--beta", type=float, default=50.0)
    ap.add_argument("--workers", type=int, default=None, help="make the page see this many cores (default: the machine's)")
    ap.add_argument("--nth", type=int, default=0, help="use the nth VOC-sized image of the split (another input)")
    ap.add_argument("--classes", default="11,14", help="0-based channels of the two synthetic classes")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write the JSON")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    item = pick_image(args.voc_root, args.split, args.nth)
    img = live.demo_image(item, classes=tuple(int(c) for c in args.classes.split(",")))
    fig = live.live_figure([img], config={"grid": 25, "beta": args.beta, "radius": 17, "eps": 1e-6},
                           defaults={"stage": "G-iter15"}, static=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, live.serve(tmp) as url:
        live.write_page(tmp, fig)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            if args.workers:
                page.add_init_script(f"Object.defineProperty(navigator, 'hardwareConcurrency', {{value: {args.workers}}});")
            t0 = time.perf_counter()
            page.goto(f"{url}/index.html")
            page.wait_for_selector(".sgwsss-live[data-state=ready], .sgwsss-live[data-state=failed]", timeout=120_000)
            first = time.perf_counter() - t0
            if page.get_attribute(".sgwsss-live", "data-state") != "ready":
                raise SystemExit("the live figure did not start: " + page.inner_text(".sgwsss-live-note"))
            info = page.evaluate("sgwsssLive.info()")
            workers = (f"{info['workers']} module workers" if info["workers"] else f"on the page ({info['why']})") + \
                (", WebAssembly SIMD kernels" if info["simd"] else ", JS kernels (no WebAssembly SIMD)")
            for warm in ("14", "20", "15", "19", "16"):  # let the JIT and WebAssembly tier-up compile the hot loops
                move(page, "radius", warm)
            move(page, "radius", "17")
            pooled = []
            for name, values in plan(args.changes).items():
                COMPUTE.clear()
                latencies = [move(page, name, v) for v in values]
                pooled += latencies
                results[name] = summary(latencies)
                results[name]["compute_median_ms"] = statistics.median(COMPUTE)
            cached = [move(page, "iterations", str(k)) for k in (3, 9, 15, 6, 12)]
            cached += [move(page, "class", str(k % 2)) for k in (1, 2, 3, 4, 5)]
            browser.close()
    print(f"image {img.id} ({item['image'].shape[-1]}x{item['image'].shape[-2]}), 2 classes, G-iter15, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, {workers}")
    print(f"first figure after page load: {first * 1000:.0f} ms")
    for name, r in results.items():
        print(f"  {name:9s}: median {r['median_ms']:6.0f} ms, p90 {r['p90_ms']:6.0f} ms over {r['n']} changes "
              f"(all 15 iterations recomputed; of which computing {r['compute_median_ms']:.0f} ms)")
    print(f"cached (iterations, class): median {statistics.median(cached):.0f} ms over {len(cached)} changes")
    out = {"image": img.id, "classes": 2, "iterations": 15, "changes": results,
           "median_recompute_ms": statistics.median(pooled), "recompute_changes": len(pooled),
           "cached_median_ms": statistics.median(cached),
           "first_figure_ms": first * 1000, "chromium": chromium, "cores": os.cpu_count(), "engine": workers,
           "load_average": os.getloadavg()[0]}
    print(f"median over all {len(pooled)} recomputing changes: {out['median_recompute_ms']:.0f} ms (goal: 150 ms)")
    if not args.no_save:
        from sgwsss.book.report import machine, save_result

        out["machine"] = machine()
        print("saved", save_result("live_refinement", out))


if __name__ == "__main__":
    main()
