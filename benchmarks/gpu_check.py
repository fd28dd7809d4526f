"""The GPU checks of the CUDA path, in one script: correctness checks, then the GPU rows of the benchmarks.

    python benchmarks/gpu_check.py [--voc-root DIR] [--out DIR]     # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --cpu-smoke                      # the same code on the CPU, tiny (CI)

Checks (each prints PASS or FAIL with its figures; the exit status is 1 when one fails):

1. ``guided_filter``: the guided filter on the device against the float64 reference (scipy box
   filters) on VOC images, r = 17, eps 1e-6 and 1e-2: max |error| <= 1e-4, as the CPU tests require.
2. ``otsu``: the batched Otsu thresholds on the device against ``skimage.filters.threshold_otsu``.
3. ``amp_train``: Algorithm 1 on the device with AMP -- the ``cpu`` preset with random weights, 4
   images, 2 step-1 and 2 step-2 iterations (AMP steps of both), pseudo labels of those images
   between them: finite losses, the grad scaler's state saved (AMP was on), one PNG per image with
   only background, present classes and ignore.
4. ``pseudo_agree``: pseudo labels of that run's step-1 network on the device against the CPU's,
   same images: pixel agreement >= 99% (skipped when the device is the CPU).
5. ``resume``: the ``smoke`` preset on the device killed mid step 1, resumed, against an
   uninterrupted run: the same loss curve (rtol 1e-3) and final weights (atol 1e-3).
6. ``ddp_nccl`` (CUDA only): ``torchrun --nproc_per_node=min(2, GPUs) -m sgwsss train --config smoke``.

Benchmark rows (the scripts next to this one, run in-process, JSON into ``--out``):
``guided_filter.py`` (sgwsss on the device against OpenCV on the CPU, goal >= 20x),
``pseudo_labels.py`` (images/s and the share of each part) and ``train.py`` for ``cpu``, ``gpu``
and ``paper`` (step 1 / step 2 images/s, peak memory; random weights when the ImageNet weights
cannot be downloaded). ``--cpu-smoke`` runs everything on the CPU with one image and one
iteration, to keep this script working where there is no GPU (train.py with the ``smoke`` preset).
Writes ``<out>/gpu_check.json`` with every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sgwsss.data import VOCSegmentation, resolve_root  # noqa: E402
from sgwsss.train import get_config, read_checkpoint, train  # noqa: E402

SMALL_IDS = ("2008_001934", "2009_005055")  # two small train_aug images of the VOC sample (~250x200)


class Kill(Exception):
    """A simulated kill of the training process."""


def check_guided_filter(device, voc, images):
    """Check 1: max |guided filter - float64 reference| on VOC images (smooth random maps, the benchmark's
    ``smooth`` input kind)."""
    from guided_filter import smooth_examples

    from sgwsss.data import VOCSegmentation
    from sgwsss.refine.guided_filter import GuidedFilter
    from sgwsss.refine.guided_filter_reference import reference_guided_filter

    dataset = VOCSegmentation(voc.parent.parent, split="train")
    dataset = VOCSegmentation(voc.parent.parent, split="train", ids=list(dataset.ids)[:images])
    worst = 0.0
    for _, image, maps in smooth_examples(dataset, 8.0):
        guide = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
        src = torch.from_numpy(maps[:2])[None].to(device)
        for eps in (1e-6, 1e-2):
            got = GuidedFilter(guide, 17, eps)(src)[0].double().cpu().numpy()
            for k in range(src.shape[1]):
                want = reference_guided_filter(image.transpose(2, 0, 1), maps[k], 17, eps)
                worst = max(worst, float(np.abs(got[k] - want).max()))
    return worst <= 1e-4, {"max_abs_error": worst, "images": images, "goal": 1e-4}


def check_otsu(device):
    """Check 2: Otsu thresholds of random maps against scikit-image's, within one histogram bin."""
    from skimage.filters import threshold_otsu

    from sgwsss.refine.otsu import otsu_threshold

    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 5, 96, 80, generator=gen) ** torch.linspace(0.5, 3, 5).view(1, 5, 1, 1)
    got = otsu_threshold(maps.to(device)).cpu().numpy()
    want = np.array([[threshold_otsu(m.numpy()) for m in row] for row in maps])
    bin_width = float((maps.amax((-1, -2)) - maps.amin((-1, -2))).max()) / 256
    err = float(np.abs(got - want).max())
    return err <= bin_width, {"max_abs_difference": err, "bin_width": bin_width}


def check_amp_train(device, voc_root, work, smoke):
    """Check 3: Algorithm 1 with AMP on the device (random weights, 4 images, 2 + 2 iterations)."""
    from PIL import Image

    small = dict(crop_size=128, step1_batch_size=2, step2_batch_size=2, train_ids=SMALL_IDS) if smoke else {}
    cfg = get_config("cpu", budget=1.0, pretrained=False, max_images=None if smoke else 4, step1_iters=2, step2_iters=2,
                     checkpoint_interval=1, log_interval=1, num_workers=0, amp=True, **small)
    t0 = time.perf_counter()
    result = train(cfg, voc_root=voc_root, work_dir=work, device=device, progress=False)
    seconds = time.perf_counter() - t0
    losses = [r["loss"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    scaler = read_checkpoint(work / "checkpoints" / "round1_step2.pt").get("scaler")
    pngs = sorted((work / "round1" / "pseudo").glob("*.png"))
    ds = VOCSegmentation(voc_root, split=cfg.train_split, ids=[p.stem for p in pngs])
    bad = []
    for png in pngs:
        item = ds[ds.ids.index(png.stem)]
        allowed = {0, 255} | {int(c) + 1 for c in np.nonzero(item["label"].numpy())[0]}
        if not set(np.unique(np.array(Image.open(png))).tolist()) <= allowed:
            bad.append(png.stem)
    amp_on = scaler is not None
    ok = (len(losses) == 4 and all(math.isfinite(v) for v in losses) and len(pngs) == len(ds) > 0 and not bad
          and (amp_on or device.type != "cuda"))
    return ok, {"losses": losses, "amp_scaler_saved": amp_on, "pseudo_labels": len(pngs), "bad_labels": bad,
                "seconds": seconds, "final": Path(result["final_checkpoint"]).name}


def check_pseudo_agreement(device, voc_root, run):
    """Check 4: the same network's pseudo labels on the device and on the CPU, pixel agreement."""
    from PIL import Image

    from sgwsss.train import generate_pseudo_labels, load_checkpoint

    if device.type == "cpu":
        return None, {"skipped": "the device is the CPU"}
    ckpt = run / "checkpoints" / "round1_step1.pt"
    ds = VOCSegmentation(voc_root, split="train_aug", ids=list(SMALL_IDS))
    out = {}
    for dev in ("cpu", device):
        model, meta = load_checkpoint(ckpt, device=dev)
        out[str(dev)] = run / f"agree-{torch.device(dev).type}"
        generate_pseudo_labels(model, ds, out[str(dev)], stage=meta["config"].pseudo_stage, cfg=meta["config"],
                               progress=False)
    same = total = 0
    for png in sorted(out["cpu"].glob("*.png")):
        a, b = (np.array(Image.open(d / png.name)) for d in out.values())
        same, total = same + int((a == b).sum()), total + a.size
    agreement = same / max(total, 1)
    return agreement >= 0.99, {"agreement": agreement, "images": len(SMALL_IDS), "goal": 0.99}


def check_resume(device, voc_root, work, smoke):
    """Check 5: killed in step 1 and resumed vs uninterrupted, on the device (smoke: at the end of step 1)."""
    cfg = get_config("smoke", budget=1.0, train_ids=SMALL_IDS[:1] if smoke else SMALL_IDS, max_images=None,
                     step1_iters=3 if smoke else 4, step2_iters=1 if smoke else 2, checkpoint_interval=2)

    def killer(event):
        if (event["step"], event["iteration"]) == (1, 3):
            raise Kill("killed at step 1 iteration 3")

    full, resumed = work / "full", work / "resumed"
    train(cfg, voc_root=voc_root, work_dir=full, device=device, progress=False)
    try:
        train(cfg, voc_root=voc_root, work_dir=resumed, device=device, progress=False, callback=killer)
    except Kill:
        pass
    res = train(cfg, voc_root=voc_root, work_dir=resumed, resume=True, device=device, progress=False)
    curve = [[r["loss"] for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
             for w in (full, resumed)]
    a, b = (read_checkpoint(w / "final.pt")["model"] for w in (full, resumed))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    ok = (res["resumed_from"] is not None and len(curve[0]) == len(curve[1])
          and np.allclose(curve[0], curve[1], rtol=1e-3, atol=1e-6) and diff <= 1e-3)
    return ok, {"resumed_from": res["resumed_from"], "loss_curves": curve, "max_weight_difference": diff}


def check_ddp(voc_root, work):
    """Check 6: DDP with NCCL through torchrun, on up to two GPUs."""
    n = min(2, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m", "sgwsss", "train",
           "--config", "smoke", "--voc-root", str(voc_root), "--work-dir", str(work)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "SGWSSS_BUDGET": "1"})
    ok = res.returncode == 0 and (work / "final.pt").is_file()
    return ok, {"processes": n, "returncode": res.returncode, "tail": (res.stdout + res.stderr)[-1500:]}


def benchmark_rows(device, voc_root, out, smoke):
    """The benchmarks' GPU rows (in-process), each saved as JSON under ``out``."""
    import guided_filter
    import pseudo_labels
    import train as train_bench

    dev, root = ["--device", device.type], ["--voc-root", str(voc_root)]
    rows = {}
    # smoke: the smooth maps only (no trained run needed); on a GPU both kinds (the book's cached run, else smooth)
    gf = ["--images", "1", "--iterations", "2", "--kinds", "smooth"] if smoke else ["--images", "20"]
    if not smoke:
        try:
            guided_filter.find_run(None)
        except SystemExit as e:
            print(f"guided filter: {e}; measuring the smooth maps only")
            gf += ["--kinds", "smooth"]
    guided_filter.main([*gf, *dev, *root, "--threads", str(os.cpu_count() or 1), "--save", "gpu_check_guided_filter"])
    rows["guided_filter"] = json.loads((out / "gpu_check_guided_filter.json").read_text())
    pseudo_labels.main([*(["--images", "1"] if smoke else ["--images", "30"]), *dev, *root])
    rows["pseudo_labels"] = json.loads((out / f"pseudo_labels{'' if device.type == 'cpu' else '_' + device.type}.json")
                                       .read_text())
    for config in ("smoke",) if smoke else ("cpu", "gpu", "paper"):
        if config == "paper" and device.type != "cuda":
            continue
        train_bench.main(["--config", config, "--iters", "1" if smoke else "20", *dev, *root])
        name = f"train_{config}" + ("" if device.type == "cpu" else f"_{device.type}")
        rows[f"train_{config}"] = json.loads((out / f"{name}.json").read_text())
    return rows


def summary(rows):
    """The lines that answer the goals: guided filter speed-up, pseudo-label and training throughput."""
    gf = rows["guided_filter"]
    lines = [f"guided filter: OpenCV/sgwsss refine {gf['refine_ratio']:.1f}x, filter {gf['filter_ratio']:.1f}x "
             f"(goal >= 20x on a GPU): {'met' if gf['refine_ratio'] >= 20 else 'not met'}",
             f"pseudo labels: {rows['pseudo_labels']['images_per_second']:.2f} images/s"]
    for key, r in rows.items():
        if key.startswith("train_"):
            lines.append(f"{key[6:]:>6}: step 1 {r['step1']['images_per_second']:.1f} images/s, peak "
                         f"{r['step1']['peak_mib']:.0f} MiB; step 2 {r['step2']['images_per_second']:.1f} images/s, "
                         f"peak {r['step2']['peak_mib']:.0f} MiB")
    return lines


def run_checks(device, voc_root, work, smoke):
    checks = {}

    def record(name, fn, *args):
        t0 = time.perf_counter()
        try:
            ok, info = fn(*args)
        except Exception as exc:  # a crash is a failed check, with its message
            ok, info = False, {"error": f"{type(exc).__name__}: {exc}"}
        info["check_seconds"] = round(time.perf_counter() - t0, 2)
        checks[name] = {"ok": ok, **info}
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        shown = {k: v for k, v in info.items() if k not in ("loss_curves", "tail")}
        print(f"[{status}] {name}: {shown}", flush=True)

    voc = resolve_root(voc_root)
    record("guided_filter", check_guided_filter, device, voc, 1 if smoke else 5)
    record("otsu", check_otsu, device)
    record("amp_train", check_amp_train, device, voc_root, work / "amp", smoke)
    record("pseudo_agree", check_pseudo_agreement, device, voc_root, work / "amp")
    record("resume", check_resume, device, voc_root, work / "resume", smoke)
    if device.type == "cuda":
        record("ddp_nccl", check_ddp, voc_root, work / "ddp")
    return checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", default=None, help="folder holding VOCdevkit/ (default: $SGWSSS_VOC_ROOT)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="JSON results (default: %(default)s)")
    ap.add_argument("--cpu-smoke", action="store_true", help="run on the CPU with tiny sizes (no GPU needed)")
    ap.add_argument("--no-benchmarks", action="store_true", help="the checks only")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or use --cpu-smoke for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    voc_root = str(resolve_root(args.voc_root).parent.parent)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu (smoke)'}, "
          f"torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    saved = os.environ.get("SGWSSS_RESULTS_DIR")
    try:
        checks = run_checks(device, voc_root, work, args.cpu_smoke)
        os.environ["SGWSSS_RESULTS_DIR"] = str(args.out)  # the benchmarks save here, not in sgwsss/book/results
        rows = {} if args.no_benchmarks else benchmark_rows(device, voc_root, args.out, args.cpu_smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if saved is None:
            os.environ.pop("SGWSSS_RESULTS_DIR", None)
        else:
            os.environ["SGWSSS_RESULTS_DIR"] = saved
    lines = summary(rows) if rows else []
    print("\n".join(["", "summary:", *lines]))
    from sgwsss.book.report import machine

    (args.out / "gpu_check.json").write_text(json.dumps(
        {"device": str(device), "smoke": args.cpu_smoke, "machine": machine(), "checks": checks, "rows": rows,
         "summary": lines}, indent=1, default=str) + "\n")
    failed = [k for k, v in checks.items() if v["ok"] is False]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed or skipped" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
