"""Step 1 of a configuration with a chosen crop-padding fill, to measure what issue 13's padding fix changed.

    python benchmarks/padding.py --work-dir DIR [--config cpu] [--fill imagenet|backbone] [--voc-root ROOT]
    python benchmarks/stages.py --run DIR --crf-images 0 --save NAME

Before issue 13 every backbone's training crops were padded with the ImageNet mean colour
(0.485, 0.456, 0.406); since then :func:`sgwsss.train.train_transform` pads with the backbone's
own mean (127/255 for EfficientNet-Lite0), which is 0 after the backbone's normalisation.
``--fill imagenet`` trains step 1 of round 1 exactly as ``sgwsss train`` does (same seed, data,
iterations) but with the old fill; ``--fill backbone`` with today's. The run stops after step 1
(``DIR/checkpoints/round1_step1.pt``, which is all ``benchmarks/stages.py`` reads), so its stage
scores compare, image by image, with those of a full run of the same configuration
(``benchmarks/bootstrap.py``'s paired bootstrap on the two ``*_per_image.npz`` files). Exits 0.
"""
import argparse
from pathlib import Path

import sgwsss.train.algorithm as algorithm
from sgwsss.constants import IMAGENET_MEAN
from sgwsss.data import TrainTransform
from sgwsss.train.config import as_config


class _StepOneDone(Exception):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--fill", choices=("imagenet", "backbone"), default="imagenet",
                    help="padding colour: the ImageNet mean (before issue 13) or the backbone's mean (today)")
    ap.add_argument("--voc-root", default=None)
    args = ap.parse_args()
    cfg = as_config(args.config)
    if args.fill == "imagenet":
        def old_transform(c):
            return TrainTransform(crop_size=c.crop_size, scale=c.scale, hflip=c.hflip, fill=IMAGENET_MEAN)
        algorithm.train_transform = old_transform

    def stop_after_step1(info):
        if info["step"] == 1 and info["iteration"] == info["iters"]:
            raise _StepOneDone

    try:
        algorithm.train(cfg, voc_root=args.voc_root, work_dir=args.work_dir, resume=True, callback=stop_after_step1)
    except _StepOneDone:
        pass
    ckpt = args.work_dir / "checkpoints" / "round1_step1.pt"
    if not ckpt.is_file():
        raise SystemExit(f"step 1 did not finish: {ckpt} is missing")
    print(f"step 1 with fill {args.fill}: {ckpt}")


if __name__ == "__main__":
    main()
