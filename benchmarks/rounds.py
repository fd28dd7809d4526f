"""What each round of Algorithm 1 gives: its pseudo labels on ``train`` and its network on ``val``.

    python benchmarks/rounds.py --run RUN_DIR [--crf] [--val-images N] [--no-save]

RUN_DIR is a finished ``sgwsss train`` run with ``rounds >= 1`` (e.g. a 1-round run extended
with ``sgwsss train --set rounds=2 --resume``, see :mod:`sgwsss.train.algorithm`). For every
round ``r``:

- the pseudo labels step 2 trained on (``RUN_DIR/round{r}/pseudo``) are scored against the
  ground truth of the ``train`` images among them (mIoU: nan-mean over classes with a
  non-zero union; :class:`~sgwsss.evaluate.Evaluator`);
- the round's final network (``checkpoints/round{r}_step2.pt``) predicts ``val`` as
  ``sgwsss predict`` does (the run's test-time augmentation; ``--crf``: also with dense CRF)
  into ``RUN_DIR/pred_val_round{r}[_crf]`` and is scored the same way.

Each later round is compared with round 1 by a 95% paired bootstrap over images
(:func:`~sgwsss.evaluate.paired_bootstrap`, 2000 resamples, seed 0). Prints a table and saves
``sgwsss/book/results/rounds.json`` and ``rounds_per_image.npz`` (``benchmarks/per_image.py``):
``pseudo_ids`` (N,) unicode with ``pseudo/round{r}`` (N, 21, 21) int32, ``ids`` (M,) val ids
with ``val/round{r}`` (and ``val_crf/round{r}`` with ``--crf``) (M, 21, 21) int32; rows ground
truth, columns prediction; each sums to the JSON's ``confusion`` (asserted). Exits 0.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from per_image import save_per_image
from sgwsss.book.report import save_result
from sgwsss.data import VOCSegmentation, read_mask, resolve_root
from sgwsss.evaluate import Evaluator, confusion_matrix, markdown_table, paired_bootstrap, pct, subset_indices
from sgwsss.train import load_checkpoint, predict, read_checkpoint


def score_folder(dataset, pred_dir):
    """The Evaluator's result for ``pred_dir`` and each image's (C, C) confusion matrix, stacked."""
    ev = Evaluator(dataset)
    result = ev.score_folder(pred_dir, progress=False)
    per_image = np.stack([confusion_matrix(read_mask(Path(pred_dir) / f"{i}.png"), ev.ground_truth(i))
                          for i in ev.scored])
    return result, list(ev.scored), per_image


def bootstrap(per_image, key_of, rounds):
    """Round r minus round 1, for every r > 1: ``{"round{r}": {"delta", "low", "high", "verdict"}}``."""
    out = {}
    for r in rounds[1:]:
        b = paired_bootstrap(per_image[key_of(r)], per_image[key_of(rounds[0])], n_resamples=2000, seed=0)
        out[f"round{r}"] = {"delta": b.delta, "low": b.low, "high": b.high, "n_images": b.n_images,
                            "verdict_round_r_better": b.verdict("greater")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--val-images", type=int, default=None, help="val images scored (default: all)")
    ap.add_argument("--crf", action="store_true", help="also score each round's network with dense CRF")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    root = resolve_root(args.voc_root)
    final = read_checkpoint(args.run / "final.pt")
    cfg = load_checkpoint(args.run / "final.pt")[1]["config"]
    rounds = list(range(1, final["progress"]["round"] + 1))
    train_ids = [i for i in VOCSegmentation(root, split="train").ids
                 if (args.run / "round1" / "pseudo" / f"{i}.png").exists()]
    train = VOCSegmentation(root, split="train", ids=train_ids, with_mask=True)
    val_all = VOCSegmentation(root, split="val", with_mask=True)
    val_ids = [val_all.ids[int(k)] for k in subset_indices(len(val_all), args.val_images)]
    val = VOCSegmentation(root, split="val", ids=val_ids, with_mask=True)
    results, per_image, ids, seconds = {}, {}, {}, {}
    for r in rounds:
        res, ids["pseudo_ids"], per_image[f"pseudo/round{r}"] = score_folder(train, args.run / f"round{r}" / "pseudo")
        results[f"pseudo/round{r}"] = res
        model, _ = load_checkpoint(args.run / "checkpoints" / f"round{r}_step2.pt")
        for crf in ([False, True] if args.crf else [False]):
            key = f"val{'_crf' if crf else ''}/round{r}"
            out = args.run / f"pred_val_round{r}{'_crf' if crf else ''}"
            t0 = time.perf_counter()
            predict(model, val, out, crf=crf, scales=cfg.infer_scales, flip=cfg.infer_flip)
            seconds[key] = time.perf_counter() - t0
            results[key], ids["ids"], per_image[key] = score_folder(val, out)
        print(f"round {r}: pseudo labels {pct(results[f'pseudo/round{r}']['miou'])} (train, {len(train_ids)} images),"
              f" network {pct(results[f'val/round{r}']['miou'])} (val, {len(val_ids)} images)", flush=True)
    kinds = ["pseudo", "val"] + (["val_crf"] if args.crf else [])
    deltas = {k: bootstrap(per_image, lambda r, k=k: f"{k}/round{r}", rounds) for k in kinds}
    rows = [[f"round {r}"] + [pct(results[f"{k}/round{r}"]["miou"]) for k in kinds] for r in rounds]
    print(f"run {args.run}: {len(rounds)} rounds; train {len(train_ids)} images, val {len(val_ids)} images")
    print(markdown_table(["round", "pseudo labels, train mIoU", "network, val mIoU"]
                         + (["network + CRF, val mIoU"] if args.crf else []), rows))
    for k, d in deltas.items():
        for name, b in d.items():
            print(f"{k}: {name} - round1 = {pct(b['delta'])} [{pct(b['low'])}, {pct(b['high'])}] "
                  f"({b['verdict_round_r_better']})")
    if not args.no_save:
        path = save_result("rounds", {
            "run": str(args.run), "config": cfg.to_dict(), "rounds": len(rounds), "train_images": len(train_ids),
            "val_images": len(val_ids), "load_average": list(os.getloadavg()), "seconds": seconds,
            "results": {k: {"miou": v["miou"], "iou": v["iou"], "confusion": v["confusion"]} for k, v in results.items()},
            "bootstrap_vs_round1": deltas})
        print(f"saved {path}")
        confusions = {k: results[k]["confusion"] for k in per_image}
        print(f"saved {save_per_image('rounds', per_image, confusions, ids)}")


if __name__ == "__main__":
    main()
