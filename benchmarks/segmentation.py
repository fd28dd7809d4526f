"""The segmentation network of a finished run on ``val``, without and with dense CRF.

    python benchmarks/segmentation.py --run RUN_DIR [--split val] [--no-crf] [--voc-root DIR]

RUN_DIR is a finished ``sgwsss train`` run. Its final network (``final.pt``)
predicts every image of the split with the run's test-time augmentation
(``infer_scales`` / ``infer_flip``), as ``sgwsss predict`` does, into
``RUN_DIR/pred_<split>`` and ``RUN_DIR/pred_<split>_crf``; the masks are scored as
``sgwsss evaluate`` does (mIoU: nan-mean over classes with a non-zero union).
Prints the per-class table (as the paper's Table 2) and saves
``sgwsss/book/results/segmentation.json``. Exits 0.
"""
import argparse
import time
from pathlib import Path

import torch

from sgwsss.book.report import save_result
from sgwsss.data import CLASSES, VOCSegmentation, resolve_root
from sgwsss.evaluate import evaluate_folder, pct, per_class_table
from sgwsss.train import load_checkpoint, predict, train_images_per_class


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--split", default="val")
    ap.add_argument("--no-crf", action="store_true", help="skip the CRF column")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    root = resolve_root(args.voc_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_checkpoint(args.run / "final.pt", device=device)
    cfg = meta["config"]
    ds = VOCSegmentation(root, split=args.split)
    results, seconds = {}, {}
    for crf in ([False] if args.no_crf else [False, True]):
        name = "network + CRF" if crf else "network"
        out = args.run / f"pred_{args.split}{'_crf' if crf else ''}"
        t0 = time.perf_counter()
        predict(model, ds, out, crf=crf, scales=cfg.infer_scales, flip=cfg.infer_flip)
        seconds[name] = time.perf_counter() - t0
        results[name] = evaluate_folder(root, args.split, out)
    print(f"{args.split}: {len(ds)} images; final network of {args.run} ({cfg.name}, pseudo labels {cfg.pseudo_stage},"
          f" scales {list(cfg.infer_scales)}, flip {cfg.infer_flip})")
    print(per_class_table(results, CLASSES))
    print({k: pct(v["miou"]) for k, v in results.items()}, "seconds:", {k: round(v) for k, v in seconds.items()})
    if not args.no_save:
        path = save_result("segmentation", {
            "split": args.split, "run": str(args.run), "config": cfg.to_dict(), "images": len(ds),
            "results": {k: {"miou": v["miou"], "iou": v["iou"]} for k, v in results.items()},
            "seconds": seconds,
            "train_images_per_class": train_images_per_class(root, cfg)})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
