"""Training throughput and peak memory of step 1 and step 2.

    python benchmarks/train.py [--config cpu|gpu|paper] [--iters 10] [--device cpu|cuda]

Uses each configuration's own batch sizes and crop size on real VOC crops
(the ``paper`` configuration only on a GPU). Prints images/s and peak memory
(CUDA: ``max_memory_allocated``; CPU: the process's peak resident set). Exits 0.
"""
import argparse
import resource
import time

import torch

from sgwsss.data import VOCSegmentation, resolve_root
from sgwsss.losses import segmentation_loss, step1_loss
from sgwsss.train import get_config, train_transform
from sgwsss.train.checkpoint import network_for


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu", choices=["cpu", "gpu", "paper", "smoke"])
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write sgwsss/book/results/train_*.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.config == "paper" and device.type != "cuda":
        print("the paper configuration is measured on a GPU only; none here -- skipped")
        return
    cfg = get_config(args.config, budget=1.0)
    try:
        model = network_for(cfg).to(device)
    except RuntimeError as exc:  # e.g. no network for ImageNet weights
        print(f"{exc}; measuring with random weights instead")
        model = network_for(cfg, pretrained=False).to(device)
    model.train()
    ds = VOCSegmentation(resolve_root(args.voc_root), split="train", with_mask=True,
                         transform=train_transform(cfg))
    opt = torch.optim.SGD(model.param_groups(cfg.step1_lr, cfg.weight_decay), lr=cfg.step1_lr, momentum=0.9)
    print(f"config {cfg.name}: {cfg.backbone}, crop {cfg.crop_size}, grid {cfg.grid}, device {device}, "
          f"threads {torch.get_num_threads()}")
    steps = {}
    for step, bs in ((1, cfg.step1_batch_size), (2, cfg.step2_batch_size)):
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=2, drop_last=True)
        it = iter(loader)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for k in range(args.iters + 1):
            b = next(it)
            x, lab, mask = b["image"].to(device), b["label"].to(device), b["mask"].to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, enabled=device.type == "cuda" and cfg.amp):
                out = model(x)
                loss = (step1_loss(out, lab, x, lam=cfg.lam, grid=cfg.grid)[0] if step == 1
                        else segmentation_loss(out.seg, mask))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k:  # the first iteration warms up
                times.append(time.perf_counter() - t0)
        ips = bs * len(times) / sum(times)
        if device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS (process peak so far)"
        print(f"step {step}: batch {bs}, {ips:.2f} images/s, {1000 * sum(times) / len(times):.0f} ms/iteration, peak {peak}")
        steps[f"step{step}"] = {"batch": bs, "images_per_second": ips, "ms_per_iteration": 1000 * sum(times) / len(times),
                                "peak_mib": (torch.cuda.max_memory_allocated() if device.type == "cuda" else
                                             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
                                "peak_kind": "GPU max_memory_allocated" if device.type == "cuda" else "process peak RSS"}
    if not args.no_save:
        from sgwsss.book.report import save_result

        path = save_result(f"train_{cfg.name}" + ("" if device.type == "cpu" else f"_{device.type}"), {
            "config": cfg.name, "backbone": cfg.backbone, "crop": cfg.crop_size, "grid": cfg.grid,
            "device": str(device), "threads": torch.get_num_threads(), "iterations": args.iters, **steps})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
