"""The segmentation network of a finished run on ``val``, without and with dense CRF.

    python benchmarks/segmentation.py --run RUN_DIR [--split val] [--no-crf] [--voc-root DIR]

RUN_DIR is a finished ``sgwsss train`` run. Its final network (``final.pt``)
predicts every image of the split with the run's test-time augmentation
(``infer_scales`` / ``infer_flip``), as ``sgwsss predict`` does, into
``RUN_DIR/pred_<split>`` and ``RUN_DIR/pred_<split>_crf``; the masks are scored as
``sgwsss evaluate`` does (mIoU: nan-mean over classes with a non-zero union).
Prints the per-class table (as the paper's Table 2) and saves
``sgwsss/book/results/segmentation.json`` and each image's confusion matrix in
``sgwsss/book/results/segmentation_per_image.npz`` (``benchmarks/per_image.py``): ``ids``
(N,) unicode with ``plain`` (N, 21, 21) int32, and ``crf_ids`` with ``crf`` (the same
images with CRF); rows ground truth, columns prediction; each sums over its images to the
JSON's ``confusion`` (asserted before saving). Exits 0.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from per_image import save_per_image

from sgwsss.book.report import save_result
from sgwsss.data import CLASSES, VOCSegmentation, read_mask, resolve_root
from sgwsss.evaluate import Evaluator, confusion_matrix, pct, per_class_table
from sgwsss.train import load_checkpoint, predict, train_images_per_class


def score_per_image(val, pred_dir):
    """:meth:`Evaluator.score_folder` of ``pred_dir`` and each image's confusion matrix (N, C, C)."""
    ev = Evaluator(val)
    result = ev.score_folder(pred_dir)
    per_image = np.stack([confusion_matrix(read_mask(pred_dir / f"{i}.png"), ev.ground_truth(i)) for i in ev.scored])
    return result, list(ev.scored), per_image


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
    val = VOCSegmentation(root, split=args.split, with_mask=True)
    results, seconds, per_image = {}, {}, {}
    for crf in ([False] if args.no_crf else [False, True]):
        name = "network + CRF" if crf else "network"
        out = args.run / f"pred_{args.split}{'_crf' if crf else ''}"
        t0 = time.perf_counter()
        predict(model, ds, out, crf=crf, scales=cfg.infer_scales, flip=cfg.infer_flip)
        seconds[name] = time.perf_counter() - t0
        results[name], ids, per_image[name] = score_per_image(val, out)
    print(f"{args.split}: {len(ds)} images; final network of {args.run} ({cfg.name}, pseudo labels {cfg.pseudo_stage},"
          f" scales {list(cfg.infer_scales)}, flip {cfg.infer_flip})")
    print(per_class_table(results, CLASSES))
    print({k: pct(v["miou"]) for k, v in results.items()}, "seconds:", {k: round(v) for k, v in seconds.items()})
    if not args.no_save:
        path = save_result("segmentation", {
            "split": args.split, "run": str(args.run), "config": cfg.to_dict(), "images": len(ds),
            "results": {k: {"miou": v["miou"], "iou": v["iou"], "confusion": v["confusion"]}
                        for k, v in results.items()},
            "seconds": seconds, "load_average": list(os.getloadavg()),
            "train_images_per_class": train_images_per_class(root, cfg)})
        print(f"saved {path}")
        keys = {"network": "plain", "network + CRF": "crf"}
        arrays = {keys[k]: v for k, v in per_image.items()}
        confusions = {keys[k]: results[k]["confusion"] for k in per_image}
        id_lists = {"ids": ids, **({"crf_ids": ids} if "crf" in arrays else {})}
        print(f"saved {save_per_image('segmentation', arrays, confusions, id_lists)}")


if __name__ == "__main__":
    main()
