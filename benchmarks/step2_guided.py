"""Step 2 with L_seg through the guided-filter layer (Eqs. 9-10) against the plain step 2, on ``val``.

    python benchmarks/step2_guided.py --run RUN_DIR [--val-images N] [--no-save]

RUN_DIR is a finished ``sgwsss train`` run. From its step-1 network
(``checkpoints/round1_step1.pt``) and its pseudo labels (``round1/pseudo``), step 2 is
trained twice with the run's configuration, seed and iterations: as the run did
(``step2_guided_filter=False``, Eq. 12 on the logits) and with the loss taken through
the guided filter of the logits, the crop as guide (``step2_guided_filter=True``; the
reading of Sec. 3.3 in :mod:`sgwsss.refine.guided_layer`). Each network is scored on
``val`` (mIoU, no CRF) twice: its own arg-max (as ``sgwsss predict``) and the arg-max of
its logits passed through the same guided filter with the val image as guide. The plain
network is also compared with the run's ``final.pt`` (identical weights expected: the same
step 2). Prints a table and saves ``sgwsss/book/results/step2_guided.json``. Exits 0.
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sgwsss.book.report import save_result
from sgwsss.data import VOCSegmentation, resolve_root
from sgwsss.evaluate import Evaluator, markdown_table, pct, subset_indices
from sgwsss.refine.guided_filter import guided_filter
from sgwsss.train import load_checkpoint, read_checkpoint, train_transform, training_ids
from sgwsss.train.loop import Runtime, train_step2


def score(model, val, indices, cfg):
    """val mIoU of the network's arg-max and of its guided-filtered logits' arg-max."""
    raw, guided = Evaluator(val), Evaluator(val)
    for i in tqdm(indices, desc="val", leave=False):
        item = val[int(i)]
        x = item["image"][None]
        with torch.no_grad():
            logits = F.interpolate(model.infer(x, cfg.infer_scales, cfg.infer_flip).seg.float(), size=x.shape[-2:],
                                   mode="bilinear", align_corners=False)
            raw.add(item["id"], logits.argmax(1)[0])
            guided.add(item["id"], guided_filter(x, logits, cfg.radius, cfg.eps).argmax(1)[0])
    return raw.result(), guided.result()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--val-images", type=int, default=None, help="val images scored (default: all)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    root = resolve_root(args.voc_root)
    step1 = args.run / "checkpoints" / "round1_step1.pt"
    _, meta = load_checkpoint(step1)
    cfg = meta["config"]
    ids = training_ids(root, cfg)
    ds2 = VOCSegmentation(root, split=cfg.train_split, transform=train_transform(cfg),
                          mask_dir=args.run / "round1" / "pseudo", ids=ids)
    val = VOCSegmentation(root, split="val", with_mask=True)
    indices = subset_indices(len(val), args.val_images)
    results, identical = {}, None
    for guided in (False, True):
        model, _ = load_checkpoint(step1)
        run_cfg = cfg.replace(step2_guided_filter=guided)
        t0 = time.perf_counter()
        losses = train_step2(model, ds2, run_cfg, Runtime(work_dir=None))["losses"]
        seconds = time.perf_counter() - t0
        model.eval()
        raw, filtered = score(model, val, indices, cfg)
        name = "L_seg through the guided filter (Eqs. 9-10)" if guided else "L_seg on the logits (as the run)"
        results[name] = {"step2_guided_filter": guided, "step2_seconds": seconds, "last_loss": losses[-1],
                         "val_miou": raw["miou"], "val_iou": raw["iou"], "val_miou_guided_prediction": filtered["miou"],
                         "val_iou_guided_prediction": filtered["iou"]}
        if not guided and (args.run / "final.pt").exists():
            final = read_checkpoint(args.run / "final.pt")["model"]
            identical = all(torch.equal(v.cpu(), final[k]) for k, v in model.state_dict().items())
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in results[name].items()
                     if "iou" not in k or "miou" in k}, flush=True)
    rows = [[k, pct(r["val_miou"]), pct(r["val_miou_guided_prediction"]), f"{r['step2_seconds'] / 60:.1f}"]
            for k, r in results.items()]
    print(f"val: {len(indices)} images; step 2: {cfg.step2_iters} iterations, seed {cfg.seed}; run {args.run}")
    print(markdown_table(["step 2", "val mIoU", "val mIoU, prediction guided-filtered", "step 2 minutes"], rows))
    print("plain step 2 has the weights of the run's final.pt:", identical)
    if not args.no_save:
        path = save_result("step2_guided", {"run": str(args.run), "config": cfg.to_dict(), "val_images": len(indices),
                                            "results": results, "plain_equals_run_final": identical})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
