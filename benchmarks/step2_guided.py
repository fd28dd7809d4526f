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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sgwsss.book.report import save_result
from sgwsss.data import VOCSegmentation, resolve_root
from sgwsss.evaluate import Evaluator, confusion_matrix, markdown_table, pct, subset_indices
from sgwsss.evaluate.bootstrap import paired_bootstrap
from sgwsss.refine.guided_filter import guided_filter
from sgwsss.train import load_checkpoint, read_checkpoint, train_transform, training_ids
from sgwsss.train.loop import Runtime, train_step2


sys.path.insert(0, str(Path(__file__).resolve().parent))
from per_image import save_per_image  # noqa: E402


def score(model, val, indices, cfg):
    """val scores of the network's arg-max and of its guided-filtered logits' arg-max.

    Returns ``(raw, guided, per_image)``: two :meth:`Evaluator.result` dicts and
    ``{"raw": (N, 21, 21), "guided": (N, 21, 21)}`` per-image confusion matrices.
    """
    raw, guided = Evaluator(val), Evaluator(val)
    per_image = {"raw": [], "guided": []}
    for i in tqdm(indices, desc="val", leave=False):
        item = val[int(i)]
        x = item["image"][None]
        with torch.no_grad():
            logits = F.interpolate(model.infer(x, cfg.infer_scales, cfg.infer_flip).seg.float(), size=x.shape[-2:],
                                   mode="bilinear", align_corners=False)
            for kind, ev, pred in (("raw", raw, logits.argmax(1)[0]),
                                   ("guided", guided, guided_filter(x, logits, cfg.radius, cfg.eps).argmax(1)[0])):
                ev.add(item["id"], pred)
                per_image[kind].append(confusion_matrix(pred, ev.ground_truth(item["id"])))
    return raw.result(), guided.result(), {k: np.stack(v) for k, v in per_image.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--val-images", type=int, default=None, help="val images scored (default: all)")
    ap.add_argument("--iters", type=int, default=None, help="step 2 iterations (default: the run's; a smoke test only)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    root = resolve_root(args.voc_root)
    step1 = args.run / "checkpoints" / "round1_step1.pt"
    _, meta = load_checkpoint(step1)
    cfg = meta["config"]
    if args.iters is not None:
        cfg = cfg.replace(step2_iters=args.iters)
    ids = training_ids(root, cfg)
    ds2 = VOCSegmentation(root, split=cfg.train_split, transform=train_transform(cfg),
                          mask_dir=args.run / "round1" / "pseudo", ids=ids)
    val = VOCSegmentation(root, split="val", with_mask=True)
    indices = subset_indices(len(val), args.val_images)
    results, identical, arrays, confusions = {}, None, {}, {}
    for guided in (False, True):
        model, _ = load_checkpoint(step1)
        run_cfg = cfg.replace(step2_guided_filter=guided)
        t0 = time.perf_counter()
        losses = train_step2(model, ds2, run_cfg, Runtime(work_dir=None))["losses"]
        seconds = time.perf_counter() - t0
        model.eval()
        raw, filtered, per_image = score(model, val, indices, cfg)
        key = "guided_layer" if guided else "plain"
        arrays[f"{key}/raw"], arrays[f"{key}/guided"] = per_image["raw"], per_image["guided"]
        confusions[f"{key}/raw"], confusions[f"{key}/guided"] = raw["confusion"], filtered["confusion"]
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
    boot = {}
    for kind in ("raw", "guided"):  # guided-layer step 2 minus plain step 2, paired over val images
        b = paired_bootstrap(arrays[f"guided_layer/{kind}"], arrays[f"plain/{kind}"], n_resamples=2000, seed=0)
        boot[kind] = {"delta": b.delta, "low": b.low, "high": b.high, "confidence": b.confidence,
                      "n_images": b.n_images, "n_resamples": b.n_resamples, "verdict_greater": b.verdict("greater")}
        print(f"guided-layer minus plain, prediction {kind}: {100 * b.delta:+.2f} points, "
              f"95% CI [{100 * b.low:+.2f}, {100 * b.high:+.2f}] ({b.verdict('greater')} that it helps)")
    if not args.no_save:
        path = save_result("step2_guided", {"run": str(args.run), "config": cfg.to_dict(), "val_images": len(indices),
                                            "results": results, "plain_equals_run_final": identical,
                                            "bootstrap_guided_minus_plain": boot})
        ids = [val.ids[int(i)] for i in indices]
        print(f"saved {path}")
        print(f"saved {save_per_image('step2_guided', arrays, confusions, {'ids': ids})}")


if __name__ == "__main__":
    main()
