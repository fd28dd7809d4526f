"""Benchmark: sgwsss's self-guided refinement against OpenCV doing the same work, with a time breakdown.

Both sides run ``--iterations`` rounds of "Otsu binarisation + guided filter (r, eps)"
on every present class of full-size VOC images (Sec. 3.3 of Ke & Hsu, the G-iter15 stage):

* sgwsss: ``self_guided_refine(image, maps, iterations, labels=...)`` on (1, 20, H, W) maps
  (guide statistics included, absent classes zero), as the pipeline calls it;
* OpenCV: ``cv2.ximgproc.createGuidedFilter(image, r, eps)`` once per image, then per
  class and iteration ``skimage.filters.threshold_otsu`` + ``filter``.

Two kinds of input, each with 1, 2 and 3 classes per image:

* ``trained``: stage A localization maps of a trained run (``--run``: a work dir with
  ``checkpoints/round1_step1.pt``; default: the book's cached ``cpu`` run): the network's
  ``infer`` maps, min-max normalised and upsampled as ``refine_stage("A", ...)`` does,
  for the image's classes (present classes first, then the highest-scoring others);
* ``smooth``: arbitrary smooth random maps (Gaussian-filtered noise, ``--sigma``, scaled to [0, 1]).

The two sides run interleaved (alternating order), ``--repeats`` times per image (the
fastest counts), at each thread count of ``--threads`` (torch, numba and OpenCV alike).
Printed: one line per image and class count with the breakdown (guide statistics,
Otsu, filtering, everything else), the medians per kind and class count with the
ratio OpenCV / sgwsss (above 1: sgwsss is faster), one filter pass alone, and the
largest difference of one filter pass from the float64 reference
(:func:`sgwsss.refine.guided_filter_reference.reference_guided_filter`). The JSON goes to
``sgwsss/book/results/guided_filter.json`` (``--no-save``: print only). Example::

    python benchmarks/guided_filter.py --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
import zlib

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgwsss.refine.guided_filter import GuidedFilter  # noqa: E402
from sgwsss.refine.guided_filter_reference import reference_guided_filter  # noqa: E402
from sgwsss.refine.self_guided import TIMING_PARTS, self_guided_refine  # noqa: E402

KINDS = ("trained", "smooth")
CLASSES = (1, 2, 3)


def find_run(path: str | None) -> pathlib.Path:
    """The trained run whose stage-A maps are input kind ``trained``; a clear error when it is missing.

    Default: the book's run of the ``cpu`` configuration for ``$SGWSSS_BUDGET``, else the newest
    ``cpu-*`` run in the book's work folder that has a step-1 checkpoint.
    """
    step1 = pathlib.Path("checkpoints") / "round1_step1.pt"
    if path is None:
        from sgwsss.book import run_name, work_dir
        from sgwsss.train import get_config

        run = work_dir(run_name(get_config("cpu")))
        if not (run / step1).exists():
            found = sorted(work_dir().glob(f"cpu-*/{step1}"), key=lambda p: p.stat().st_mtime)
            run = found[-1].parents[1] if found else run
    else:
        run = pathlib.Path(path).expanduser()
    if not (run / step1).exists():
        raise SystemExit(f"no trained run at {run} ({run / step1} is missing): pass --run <work dir of `sgwsss "
                         "train`> (the book keeps its run in ~/.cache/sgwsss/work/cpu-budget<b>-<hash>), train one with "
                         "`python -m sgwsss train --config cpu --work-dir DIR`, or measure only --kinds smooth")
    return run


def trained_examples(run: pathlib.Path, dataset):
    """(id, image (H, W, 3), maps (3, H, W)) with stage A maps of the run's step-1 network."""
    from sgwsss.refine.stages import refine_stage
    from sgwsss.train import load_checkpoint

    model, meta = load_checkpoint(run / "checkpoints" / "round1_step1.pt")
    cfg = meta["config"]
    for i in range(len(dataset)):
        item = dataset[i]
        x = item["image"][None]
        with torch.no_grad():
            out = model.infer(x, cfg.infer_scales, cfg.infer_flip)
        score = out.logits[0] + 1e3 * torch.as_tensor(item["label"]).float()  # present classes first
        chosen = torch.zeros(1, score.numel())
        chosen[0, score.argsort(descending=True)[: max(CLASSES)]] = 1
        maps = refine_stage("A", x, out.cam, chosen)[0, chosen[0] > 0]
        order = score[chosen[0] > 0].argsort(descending=True)
        yield item["id"], item["image"].permute(1, 2, 0).numpy().copy(), maps[order].numpy()


def smooth_examples(dataset, sigma: float):
    """(id, image (H, W, 3), maps (3, H, W)): Gaussian-filtered noise scaled to [0, 1], seeded by the id."""
    from scipy.ndimage import gaussian_filter

    for i in range(len(dataset)):
        item = dataset[i]
        image = item["image"].permute(1, 2, 0).numpy().copy()
        rng = np.random.default_rng(zlib.crc32(item["id"].encode()))
        maps = []
        for _ in range(max(CLASSES)):
            m = gaussian_filter(rng.standard_normal(image.shape[:2]), sigma)
            maps.append(((m - m.min()) / (m.max() - m.min())).astype(np.float32))
        yield item["id"], image, np.stack(maps)


def run_sgwsss(img_t, maps_t, labels, args, sync):
    """One timed self_guided_refine: (seconds, {part: seconds})."""
    timings = {}
    sync()
    t0 = time.perf_counter()
    self_guided_refine(img_t, maps_t, iterations=args.iterations, radius=args.radius, eps=args.eps, labels=labels,
                       timings=timings)
    sync()
    return time.perf_counter() - t0, timings


def run_opencv(image, maps, args):
    """The same work with OpenCV's guided filter and skimage's Otsu: (seconds, {part: seconds})."""
    import cv2
    from skimage.filters import threshold_otsu

    parts = dict.fromkeys(TIMING_PARTS, 0.0)
    t0 = time.perf_counter()
    gf = cv2.ximgproc.createGuidedFilter(image, args.radius, args.eps)
    t1 = time.perf_counter()
    parts["statistics"] = t1 - t0
    for q in maps:
        for _ in range(args.iterations):
            t2 = time.perf_counter()
            p = (q > threshold_otsu(q)).astype(np.float32)
            t3 = time.perf_counter()
            q = gf.filter(p)
            parts["otsu"] += t3 - t2
            parts["filter"] += time.perf_counter() - t3
    total = time.perf_counter() - t0
    parts["other"] = total - sum(parts[k] for k in TIMING_PARTS[:3])
    return total, parts


def measure(examples, threads: int, args, device) -> list[dict]:
    """Per image and class count: the fastest of ``--repeats`` interleaved runs of each side."""
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for n, (kind, name, image, maps) in enumerate(examples):
        img_t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device)
        for k in CLASSES:
            maps_t = torch.zeros(1, 20, *image.shape[:2], device=device)
            labels = torch.zeros(1, 20, device=device)
            maps_t[0, :k] = torch.from_numpy(maps[:k]).to(device)
            labels[0, :k] = 1
            if n == 0 and k == CLASSES[0]:  # warm-up: compiled-kernel loading, first-call set-up
                run_sgwsss(img_t, maps_t, labels, args, sync), run_opencv(image, maps[:k], args)
            sg, cv = [], []
            for rep in range(args.repeats):
                order = (0, 1) if (n + k + rep) % 2 == 0 else (1, 0)
                for side in order:
                    if side == 0:
                        sg.append(run_sgwsss(img_t, maps_t, labels, args, sync))
                    else:
                        cv.append(run_opencv(image, maps[:k], args))
            sg_t, sg_parts = min(sg, key=lambda r: r[0])
            cv_t, cv_parts = min(cv, key=lambda r: r[0])
            rows.append({"threads": threads, "kind": kind, "id": name, "classes": k, "sgwsss": sg_t, "opencv": cv_t,
                         "sgwsss_parts": sg_parts, "opencv_parts": cv_parts})
            print(_row_line(rows[-1]), flush=True)
    return rows


def _parts_text(parts: dict) -> str:
    return " ".join(f"{k[:5]} {parts[k] * 1e3:5.1f}" for k in TIMING_PARTS)


def _row_line(row: dict) -> str:
    return (f"  {row['threads']}t {row['kind']:7s} {row['id']} k={row['classes']}  "
            f"sgwsss {row['sgwsss'] * 1e3:6.1f} ms [{_parts_text(row['sgwsss_parts'])}]  "
            f"OpenCV {row['opencv'] * 1e3:6.1f} ms [{_parts_text(row['opencv_parts'])}]  "
            f"ratio {row['opencv'] / row['sgwsss']:.2f}")


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per (threads, kind, classes) and per (threads, kind) over all class counts."""
    out = []
    keys = sorted({(r["threads"], r["kind"], r["classes"]) for r in rows})
    keys += sorted({(t, kind, None) for t, kind, _ in keys})
    for t, kind, k in keys:
        sel = [r for r in rows if r["threads"] == t and r["kind"] == kind and (k is None or r["classes"] == k)]
        sg = statistics.median(r["sgwsss"] for r in sel) * 1e3
        cv = statistics.median(r["opencv"] for r in sel) * 1e3
        parts = {side: {p: statistics.median(r[f"{side}_parts"][p] for r in sel) * 1e3 for p in TIMING_PARTS}
                 for side in ("sgwsss", "opencv")}
        out.append({"threads": t, "kind": kind, "classes": "all" if k is None else k, "runs": len(sel),
                    "ms_sgwsss": sg, "ms_opencv": cv, "ratio": cv / sg,
                    "median_ratio": statistics.median(r["opencv"] / r["sgwsss"] for r in sel),
                    "breakdown_ms_sgwsss": parts["sgwsss"], "breakdown_ms_opencv": parts["opencv"]})
    return out


def filter_and_accuracy(examples, args, device) -> dict:
    """One filter pass (ms per map) of both sides on Otsu masks, and each one's largest difference from the
    float64 reference on masks and on the continuous maps (first ``--accuracy-images`` images of each kind)."""
    import cv2
    from skimage.filters import threshold_otsu

    f_sg, f_cv, err_sg, err_cv = [], [], [], []
    seen = dict.fromkeys(KINDS, 0)
    for kind, _, image, maps in examples:
        binary = np.stack([(m > threshold_otsu(m)).astype(np.float32) for m in maps])
        gf_cv = cv2.ximgproc.createGuidedFilter(image, args.radius, args.eps)
        gf_sg = GuidedFilter(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device), args.radius,
                             args.eps)
        bin_t = torch.from_numpy(binary)[None].to(device)
        gf_sg(bin_t)
        for _ in range(3):
            t0 = time.perf_counter()
            q_sg = gf_sg(bin_t)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            f_sg.append((time.perf_counter() - t0) / len(maps))
            t0 = time.perf_counter()
            q_cv = np.stack([gf_cv.filter(b) for b in binary])
            f_cv.append((time.perf_counter() - t0) / len(maps))
        if seen[kind] < args.accuracy_images:
            seen[kind] += 1
            guide = image.transpose(2, 0, 1)
            cont = torch.from_numpy(maps[:1])[None].to(device)
            for src, ours, theirs in ((binary[0], q_sg[0, 0], q_cv[0]),
                                      (maps[0], gf_sg(cont)[0, 0], gf_cv.filter(maps[0]))):
                ref = reference_guided_filter(guide, src, args.radius, args.eps)
                err_sg.append(float(np.abs(ours.double().cpu().numpy() - ref).max()))
                err_cv.append(float(np.abs(theirs.astype(np.float64) - ref).max()))
    ms_sg, ms_cv = statistics.median(f_sg) * 1e3, statistics.median(f_cv) * 1e3
    acc = {"max_error_sgwsss": max(err_sg), "max_error_opencv": max(err_cv),
           "median_error_sgwsss": statistics.median(err_sg), "median_error_opencv": statistics.median(err_cv),
           "accuracy_maps": len(err_sg)} if err_sg else {}
    return {"filter_ms_sgwsss": ms_sg, "filter_ms_opencv": ms_cv, "filter_ratio": ms_cv / ms_sg, **acc}


def parse_args(argv=None):
    default_root = os.environ.get("SGWSSS_VOC_ROOT", str(REPO.parent / "shared" / "voc-sample"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voc-root", default=default_root, help="folder holding VOCdevkit/ (default: %(default)s)")
    ap.add_argument("--split", default="val", help="images reported on (default: val; the kernels' settings "
                                                    "were chosen on train images)")
    ap.add_argument("--images", type=int, default=20, help="images per input kind")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of: " + ", ".join(KINDS))
    ap.add_argument("--run", default=None, help="trained run (work dir) for the 'trained' maps (default: the "
                                                "book's cached cpu run)")
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--radius", type=int, default=17)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--sigma", type=float, default=25.0, help="smoothing of the 'smooth' maps (px)")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per image and side (fastest counts)")
    ap.add_argument("--accuracy-images", type=int, default=5, help="images per kind compared with float64")
    ap.add_argument("--device", default="cpu", help="device of the sgwsss side (cpu or cuda)")
    ap.add_argument("--save", default=None, metavar="NAME",
                    help="result name under sgwsss/book/results/ (default: guided_filter, or guided_filter_cuda)")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write the JSON")
    args = ap.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not args.kinds or set(args.kinds) - set(KINDS):
        ap.error(f"--kinds must name some of {', '.join(KINDS)}, got {args.kinds}")
    return args


def load_examples(args) -> tuple[list, str | None]:
    from sgwsss.data import VOCSegmentation, resolve_root

    run = find_run(args.run) if "trained" in args.kinds else None
    root = resolve_root(args.voc_root)
    dataset = VOCSegmentation(root, split=args.split)
    dataset = VOCSegmentation(root, split=args.split, ids=list(dataset.ids)[: args.images])
    examples = []
    if run is not None:
        examples += [("trained", *e) for e in trained_examples(run, dataset)]
    if "smooth" in args.kinds:
        examples += [("smooth", *e) for e in smooth_examples(dataset, args.sigma)]
    return examples, (str(run) if run else None)


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2

    if not hasattr(cv2, "ximgproc"):
        print("cv2.ximgproc is missing: install opencv-contrib-python(-headless)", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    examples, run = load_examples(args)
    load_before = os.getloadavg()
    print(f"{len(examples)} images ({', '.join(args.kinds)}; split {args.split}), classes {CLASSES}, "
          f"{args.iterations} iterations, r={args.radius}, eps={args.eps:g}, sgwsss on {device}, "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}, load average {load_before[0]:.2f}")
    print("  per image: total ms [statistics, Otsu, filtering, everything else]")
    rows = []
    for t in args.threads:
        rows += measure(examples, t, args, device)
    summary = summarise(rows)
    extra = filter_and_accuracy(examples, args, device)
    load_after = os.getloadavg()
    print_summary(summary, extra, load_before, load_after)
    if not args.no_save:
        save(args, summary, extra, rows, run, device, (load_before, load_after))
    return 0


def print_summary(summary, extra, load_before, load_after) -> None:
    print(f"medians, ms/image (load average {load_before[0]:.2f} -> {load_after[0]:.2f}; ratio = OpenCV / sgwsss):")
    for s in summary:
        b = s["breakdown_ms_sgwsss"]
        print(f"  {s['threads']} threads  {s['kind']:7s} classes {str(s['classes']):3s}: sgwsss {s['ms_sgwsss']:6.1f}  "
              f"OpenCV {s['ms_opencv']:6.1f}  ratio {s['ratio']:.2f} (median of ratios {s['median_ratio']:.2f})  "
              f"sgwsss [{' '.join(f'{k[:5]} {b[k]:.1f}' for k in TIMING_PARTS)}]")
    print(f"one filter pass, median ms/map: sgwsss {extra['filter_ms_sgwsss']:.2f}  OpenCV "
          f"{extra['filter_ms_opencv']:.2f}  ratio {extra['filter_ratio']:.2f}")
    if "max_error_sgwsss" in extra:
        print(f"max |filter - float64 reference| over {extra['accuracy_maps']} maps (masks and continuous maps): "
              f"sgwsss {extra['max_error_sgwsss']:.2e} (median {extra['median_error_sgwsss']:.1e})  "
              f"OpenCV {extra['max_error_opencv']:.2e} (median {extra['median_error_opencv']:.1e})")


def save(args, summary, extra, rows, run, device, loads) -> None:
    import cv2

    from sgwsss.book.report import save_result

    top = max(args.threads)
    kind = "trained" if "trained" in args.kinds else args.kinds[0]
    main_row = next(s for s in summary if s["threads"] == top and s["kind"] == kind and s["classes"] == "all")
    name = args.save or ("guided_filter" if device.type == "cpu" else f"guided_filter_{device.type}")
    path = save_result(name, {
        "images": args.images, "split": args.split, "kinds": args.kinds, "classes": list(CLASSES),
        "iterations": args.iterations, "radius": args.radius, "eps": args.eps, "threads": top,
        "thread_counts": args.threads, "device": str(device), "opencv": cv2.__version__, "run": run,
        "backend": GuidedFilter(torch.rand(1, 3, 8, 8, device=device), args.radius, args.eps).backend,
        "load_average": {"before": loads[0][0], "after": loads[1][0]},
        # the headline (read by the results chapter): the trained maps, every class count, the top thread count
        "refine_kind": kind, "refine_ms_sgwsss": main_row["ms_sgwsss"], "refine_ms_opencv": main_row["ms_opencv"],
        "refine_ratio": main_row["ratio"], **extra, "summary": summary,
        "per_image": [{**r, "sgwsss": r["sgwsss"] * 1e3, "opencv": r["opencv"] * 1e3,
                       "sgwsss_parts": {k: v * 1e3 for k, v in r["sgwsss_parts"].items()},
                       "opencv_parts": {k: v * 1e3 for k, v in r["opencv_parts"].items()}} for r in rows],
    })
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
