"""Pseudo-label quality of each Table 1 stage on ``train``, without and with dense CRF.

    python benchmarks/stages.py --run RUN_DIR [--images N] [--crf-images M] [--beta B] [--save NAME]

RUN_DIR is a finished ``sgwsss train`` run; its step-1 network
(``checkpoints/round1_step1.pt``) gives the localization maps every stage starts
from, with the run's grid, beta, radius and eps (``--beta`` overrides the walk's
beta, e.g. 1 for the paper's ``T = D^-1 W``). For each stage (A, R, G-w/o-aff,
G, G-iter15-w/o-aff, G-iter15) the pseudo labels (Eq. 11) of the ``train`` images
are scored against the ground truth (mIoU as the nan-mean over classes with a
non-zero union); with CRF on ``--crf-images`` of them (spread evenly; the CRF
costs 1-5 s per image and stage on two cores). Labels and CRF come from the run's
:class:`~sgwsss.pipeline.PseudoLabelPipeline`, the recipe its training used. Prints a table and saves
``sgwsss/book/results/stages.json``, with the run's time per training phase
(``run_seconds``, from its ``metrics.jsonl``), and each image's confusion matrix in
``sgwsss/book/results/stages_per_image.npz`` (``benchmarks/per_image.py``): ``ids`` (N,)
unicode, ``plain/<stage>`` (N, 21, 21) int32 for every stage (A, R, G-w/o-aff, G,
G-iter15-w/o-aff, G-iter15), and for the CRF subset ``crf_ids`` (M,) with
``crf_plain/<stage>`` (the same M images without CRF) and ``crf/<stage>`` (with CRF),
each (M, 21, 21) int32; rows ground truth, columns prediction; each sums over its images
to the JSON's ``confusion`` (asserted before saving). ``--crf-recipe labelled`` scores the
CRF the way training's ``pseudo_crf`` did before issue 13 (only the classes already in the
pseudo label allowed) instead of the pipeline's recipe (background + every image-level
class), to measure what the recipe changes. Exits 0.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from per_image import save_per_image
from sgwsss.book.report import save_result
from sgwsss.crf import CRFParams, crf_labels, labels_to_probs
from sgwsss.constants import STAGES
from sgwsss.data import CLASSES, NUM_CLASSES, VOCSegmentation, resolve_root
from sgwsss.evaluate import markdown_table, pct, stage_miou, subset_indices
from sgwsss.pipeline import PseudoLabelPipeline
from sgwsss.train import METRICS_FILE, load_checkpoint, phase_seconds, train_images_per_class


class LabelledOnlyCRF(PseudoLabelPipeline):
    """The CRF recipe of training's ``pseudo_crf`` before issue 13: only background and the classes
    already present in the pseudo label may be chosen (for ``--crf-recipe labelled``)."""

    def crf_refine(self, image, pseudo, labels):
        pseudo = np.asarray(pseudo).astype(np.int64)
        allowed = sorted({0, *np.unique(pseudo).tolist()})
        probs = labels_to_probs(pseudo, NUM_CLASSES, classes=allowed)
        return crf_labels(image.detach().cpu().numpy(), probs, self.crf or CRFParams())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a finished `sgwsss train` work dir")
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=None, help="images scored without CRF (default: all)")
    ap.add_argument("--crf-images", type=int, default=100, help="images scored with CRF (0: none)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--beta", type=float, default=None, help="random-walk beta (default: the run's)")
    ap.add_argument("--save", default="stages", metavar="NAME", help="result name under sgwsss/book/results/")
    ap.add_argument("--crf-recipe", choices=("image-level", "labelled"), default="image-level",
                    help="CRF's allowed classes: background + image-level classes (the pipeline's), or only "
                         "those in the pseudo label (training's pseudo_crf before issue 13)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    stages = args.stages.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_checkpoint(args.run / "checkpoints" / "round1_step1.pt", device=device)
    cfg = meta["config"]
    root = resolve_root(args.voc_root)
    ds = VOCSegmentation(root, split=args.split, with_mask=True)
    beta = cfg.beta if args.beta is None else args.beta
    pipeline = PseudoLabelPipeline.from_config(cfg).replace(beta=beta)  # the run's pseudo-label recipe
    if args.crf_recipe == "labelled":
        pipeline = LabelledOnlyCRF(**{f: getattr(pipeline, f) for f in pipeline.__dataclass_fields__})
    t0 = time.perf_counter()
    plain = stage_miou(model, ds, stages, pipeline, indices=subset_indices(len(ds), args.images), per_image=True)
    t1 = time.perf_counter()
    crf = {}
    if args.crf_images:
        scored = stage_miou(model, ds, stages, pipeline, crf=True, indices=subset_indices(len(ds), args.crf_images),
                            per_image=True)
        crf = {s: scored[s + "+CRF"] for s in stages}
        plain_sub = {s: scored[s] for s in stages}
    t2 = time.perf_counter()
    n_plain = len(subset_indices(len(ds), args.images))
    n_crf = len(subset_indices(len(ds), args.crf_images)) if args.crf_images else 0
    rows = []
    for s in stages:
        rows.append([s, pct(plain[s]["miou"]), pct(plain_sub[s]["miou"]) if crf else "-",
                     pct(crf[s]["miou"]) if crf else "-"])
    print(f"{args.split}: {n_plain} images without CRF, {n_crf} with CRF; step-1 network of {args.run}; beta {beta:g}")
    print(markdown_table(["stage", f"mIoU ({n_plain} images)", f"mIoU ({n_crf} images)",
                          f"mIoU + CRF ({n_crf} images)"], rows))
    print(f"seconds: {t1 - t0:.0f} without CRF, {t2 - t1:.0f} with CRF")
    if not args.no_save:
        path = save_result(args.save, {
            "split": args.split, "run": str(args.run), "config": cfg.to_dict(), "beta": beta, "images": n_plain,
            "crf_recipe": args.crf_recipe, "load_average": list(os.getloadavg()),
            "crf_images": n_crf, "classes": list(CLASSES),
            "stages": {s: {"miou": plain[s]["miou"], "iou": plain[s]["iou"],
                           "seconds_per_image": plain[s]["seconds_per_image"], "confusion": plain[s]["confusion"],
                           **({"miou_subset": plain_sub[s]["miou"], "miou_crf": crf[s]["miou"],
                               "iou_crf": crf[s]["iou"], "confusion_subset": plain_sub[s]["confusion"],
                               "confusion_crf": crf[s]["confusion"]} if crf else {})} for s in stages},
            "seconds": {"plain": t1 - t0, "crf": t2 - t1},
            "run_seconds": phase_seconds(args.run / METRICS_FILE),
            "train_images_per_class": train_images_per_class(root, cfg),
        })
        print(f"saved {path}")
        arrays = {f"plain/{s}": plain[s]["per_image"] for s in stages}
        confusions = {f"plain/{s}": plain[s]["confusion"] for s in stages}
        id_lists = {"ids": plain[stages[0]]["ids"]}
        if crf:
            for s in stages:
                arrays[f"crf_plain/{s}"], confusions[f"crf_plain/{s}"] = plain_sub[s]["per_image"], plain_sub[s]["confusion"]
                arrays[f"crf/{s}"], confusions[f"crf/{s}"] = crf[s]["per_image"], crf[s]["confusion"]
            id_lists["crf_ids"] = plain_sub[stages[0]]["ids"]
        print(f"saved {save_per_image(args.save, arrays, confusions, id_lists)}")


if __name__ == "__main__":
    main()
