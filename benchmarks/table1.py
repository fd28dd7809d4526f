"""The paper's Table 1 protocol on a VOC copy (the sample by default).

    python benchmarks/table1.py --run RUN_DIR [--out runs/table1] [--stages A,R,...]
                                [--images N] [--step2-iters K] [--val-images M] [--crf]

RUN_DIR is a finished ``sgwsss train`` run (its ``checkpoints/round1_step1.pt`` is
the step-1 network every stage starts from). For each stage: (1) pseudo labels
for the training split; (2) step 2 (L_seg, Eq. 12) from the step-1 network on
them; (3) the segmentation network's mIoU on ``val`` without and with dense CRF.
The pseudo labels' own mIoU on ``train`` comes from ``benchmarks/stages.py``
(``sgwsss/book/results/stages.json``) when it was run on the same RUN_DIR. Saves
``sgwsss/book/results/table1.json`` (the results chapter reads it) and writes the
pseudo labels, predictions and ``table1.md`` under ``--out``. Exits 0.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from sgwsss.book.report import load_result, save_result
from sgwsss.constants import STAGES
from sgwsss.data import CLASSES, VOCSegmentation, resolve_root
from sgwsss.evaluate import evaluate_folder, markdown_table, pct, per_class_table, subset_indices
from sgwsss.files import atomic_write_text
from sgwsss.paper import PAPER_TABLE1
from sgwsss.pipeline import PseudoLabelPipeline
from sgwsss.train import generate_pseudo_labels, load_checkpoint, predict, train_transform
from sgwsss.train.loop import Runtime, train_step2


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/table1"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--images", type=int, default=None, help="training images used (default: all of train_aug)")
    ap.add_argument("--val-images", type=int, default=None)
    ap.add_argument("--step2-iters", type=int, default=None, help="default: the run's configuration")
    ap.add_argument("--crf", action="store_true", help="also score val predictions with dense CRF")
    ap.add_argument("--no-save", action="store_true", help="do not write sgwsss/book/results/table1.json")
    args = ap.parse_args()
    stages = args.stages.split(",")
    root = resolve_root(args.voc_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step1 = args.run / "checkpoints" / "round1_step1.pt"
    model, meta = load_checkpoint(step1, device=device)
    cfg = meta["config"]
    if args.step2_iters:
        cfg = cfg.replace(step2_iters=args.step2_iters)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"config": cfg.to_dict(), "run": str(args.run), "stages": {}}
    measured = load_result("stages")
    if measured is not None and Path(measured["run"]).resolve() != args.run.resolve():
        measured = None  # another run's pseudo labels

    full = VOCSegmentation(root, split=cfg.train_split)
    ids = [full.ids[i] for i in subset_indices(len(full), args.images)]
    val = VOCSegmentation(root, split="val")
    val_ids = [val.ids[i] for i in subset_indices(len(val), args.val_images)]
    for stage in stages:
        t0 = time.perf_counter()
        sdir = args.out / stage.replace("/", "")
        pseudo = sdir / "pseudo"
        model, _ = load_checkpoint(step1, device=device)
        generate_pseudo_labels(model, VOCSegmentation(root, split=cfg.train_split, ids=ids), pseudo,
                               PseudoLabelPipeline.from_config(cfg, stage=stage))
        ds2 = VOCSegmentation(root, split=cfg.train_split, ids=ids, mask_dir=pseudo, transform=train_transform(cfg))
        train_step2(model, ds2, cfg, Runtime(device=device, work_dir=None))
        model.eval()
        pl = (measured or {}).get("stages", {}).get(stage, {})
        row = {"pseudo_label_miou_train": pl.get("miou"), "images": len(ids), "val_images": len(val_ids),
               "step2_iters": cfg.step2_iters}
        for crf in ([False, True] if args.crf else [False]):
            pred = sdir / ("pred_crf" if crf else "pred")
            predict(model, VOCSegmentation(root, split="val", ids=val_ids), pred, crf=crf, scales=cfg.infer_scales,
                    flip=cfg.infer_flip)
            scores = evaluate_folder(root, "val", pred, ids=val_ids, progress=False)
            row["val_miou_crf" if crf else "val_miou"] = scores["miou"]
            row["val_iou_crf" if crf else "val_iou"] = scores["iou"]
        row["seconds"] = time.perf_counter() - t0
        results["stages"][stage] = row
        atomic_write_text(args.out / "table1.json", json.dumps(results, indent=1))
        if not args.no_save:
            save_result("table1", results)
        print(stage, {k: v for k, v in row.items() if "iou" not in k or "miou" in k}, flush=True)

    rows = [[s, pct(r["pseudo_label_miou_train"]), pct(r.get("val_miou")), pct(r.get("val_miou_crf")),
             "n/a" if PAPER_TABLE1[s] is None else PAPER_TABLE1[s]] for s, r in results["stages"].items()]
    table = markdown_table(["stage", "pseudo-label mIoU (train)", "val mIoU", "val mIoU + CRF", "paper"], rows)
    per_class = {s: {"miou": r["val_miou"], "iou": r["val_iou"]} for s, r in results["stages"].items()}
    md = table + "\n\nPer class (val, no CRF):\n\n" + per_class_table(per_class, CLASSES) + "\n"
    atomic_write_text(args.out / "table1.md", md)
    print(md)


if __name__ == "__main__":
    main()
