"""Throughput of the whole pseudo-label stage and the share of each part.

    python benchmarks/pseudo_labels.py [--checkpoint CKPT] [--images 30] [--device cpu|cuda] [--threads 2]

Per image: network forward (localization maps + aggregation features, with the run's
test-time augmentation ``infer_scales`` / ``infer_flip``), affinity
and random walk (Eqs. 2-3, 5), self-guided refinement with 15 guided-filter
iterations (Eqs. 6-8), pseudo labels (Eq. 11) -- the G-iter15 stage of Table 1.
Prints images/s, the median ms of each part and its share, and whether the
refinement costs at most half of the forward pass (the goal). Exits 0.
"""
import argparse
import statistics
import time

import torch

from sgwsss.data import VOCSegmentation, resolve_root
from sgwsss.evaluate import subset_indices
from sgwsss.pipeline import PseudoLabelPipeline
from sgwsss.refine.pseudo_label import pseudo_label
from sgwsss.train import get_config
from sgwsss.train.checkpoint import network_for


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--checkpoint", default=None, help="a trained run's checkpoint (default: ImageNet weights)")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=15, choices=(1, 15), help="1: stage G; 15: stage G-iter15")
    ap.add_argument("--grid", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-save", action="store_true", help="print only; do not write sgwsss/book/results/pseudo_labels*.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint:
        from sgwsss.train import load_checkpoint

        model, meta = load_checkpoint(args.checkpoint, device=device)
        cfg = meta["config"]
    else:  # ImageNet weights, with the cpu configuration's settings
        cfg = get_config("cpu", budget=1.0)
        model = network_for(cfg).to(device)
    grid = args.grid or cfg.grid
    stage = {1: "G", 15: "G-iter15"}[args.iterations]
    pipeline = PseudoLabelPipeline.from_config(cfg, stage=stage, crf=False).replace(grid=grid)  # as the run's labels
    model.eval()
    ds = VOCSegmentation(resolve_root(args.voc_root), split="train")
    parts = {"forward": [], "affinity + random walk": [], f"guided filter x{args.iterations}": [], "Eq. 11": []}
    totals = []
    for n, i in enumerate(subset_indices(len(ds), args.images + 2)):
        item = ds[int(i)]
        x, lab = item["image"][None].to(device), item["label"][None].to(device)
        with torch.no_grad():
            sync(device); t0 = time.perf_counter()
            net = pipeline.infer(model, x, lab)
            sync(device); t1 = time.perf_counter()
            r = pipeline.base_maps(net)  # T (Eqs. 2-3) and R = T A (Eq. 5), upsampled
            sync(device); t2 = time.perf_counter()
            g = pipeline.refine(net, r)
            sync(device); t3 = time.perf_counter()
            pseudo_label(g, net.labels)
            sync(device); t4 = time.perf_counter()
        if n < 2:  # warm-up
            continue
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt)
        totals.append(t4 - t0)
    total = sum(totals)
    print(f"device {device}, threads {torch.get_num_threads()}, {len(totals)} images, grid {grid}, "
          f"forward scales {list(cfg.infer_scales)} flip {cfg.infer_flip}")
    print(f"throughput: {len(totals) / total:.2f} images/s")
    for key, vals in parts.items():
        print(f"  {key:>24}: median {1000 * statistics.median(vals):7.1f} ms  ({100 * sum(vals) / total:4.1f}% of time)")
    fwd = sum(parts["forward"])
    refine = total - fwd
    print(f"refinement / forward = {refine / fwd:.2f} (goal <= 0.5): {'met' if refine <= 0.5 * fwd else 'not met'}")
    if not args.no_save:
        from sgwsss.book.report import save_result

        name = "pseudo_labels" if device.type == "cpu" else f"pseudo_labels_{device.type}"
        path = save_result(name, {
            "device": str(device), "threads": torch.get_num_threads(), "images": len(totals), "grid": grid,
            "iterations": args.iterations, "checkpoint": args.checkpoint, "images_per_second": len(totals) / total,
            "infer_scales": list(cfg.infer_scales), "infer_flip": cfg.infer_flip,
            "median_ms": {k: 1000 * statistics.median(v) for k, v in parts.items()},
            "share": {k: sum(v) / total for k, v in parts.items()}, "refine_over_forward": refine / fwd,
        })
        print(f"saved {path}")


if __name__ == "__main__":
    main()
