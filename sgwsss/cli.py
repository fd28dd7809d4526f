"""Command line: ``sgwsss`` (console script) and ``python -m sgwsss``.

Subcommands follow the pipeline::

    sgwsss train --config {cpu,paper,smoke} --voc-root DIR --work-dir DIR [--resume]
    sgwsss pseudo-labels --checkpoint CKPT --voc-root DIR --split SPLIT --stage STAGE --out DIR [--crf]
    sgwsss predict --checkpoint CKPT --voc-root DIR --split SPLIT --out DIR [--crf]
    sgwsss evaluate --voc-root DIR --split SPLIT --pred DIR

Every expected failure (a wrong argument, a missing file, a checkpoint from another
backbone, missing predictions) prints one ``sgwsss: error: ...`` line and exits
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sgwsss import __version__
from sgwsss.constants import STAGES

# The Table 1 stage names; kept here too so that ``--help`` needs no torch import.
CONFIG_NAMES = ("cpu", "gpu", "paper", "smoke")
SPLITS = ("train", "train_aug", "val")


class CLIError(Exception):
    """An expected failure reported as one line."""


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {value}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgwsss",
        description="Self-guided weakly supervised semantic segmentation (Ke & Hsu).",
    )
    parser.add_argument("--version", action="version", version=f"sgwsss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    voc_help = "PASCAL VOC root (folder holding VOCdevkit/); default: $SGWSSS_VOC_ROOT"

    p = sub.add_parser("train", help="run Algorithm 1 (step 1, pseudo labels, step 2; n rounds)")
    p.add_argument("--config", choices=CONFIG_NAMES, default="cpu", help="named configuration")
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--work-dir", required=True, type=Path, help="checkpoints, metrics.jsonl, pseudo labels")
    p.add_argument("--resume", action="store_true", help="continue from work-dir/checkpoints/last.pt")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a configuration field (repeatable), e.g. --set step1_iters=100")

    p = sub.add_parser("pseudo-labels", help="write a Table 1 stage's pseudo labels as <id>.png")
    p.add_argument("--checkpoint", required=True, type=_existing_file)
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--stage", default="G-iter15", choices=STAGES)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (classes: background + the image's)")

    p = sub.add_parser("predict", help="write the segmentation network's masks as <id>.png")
    p.add_argument("--checkpoint", required=True, type=_existing_file)
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing")

    p = sub.add_parser("evaluate", help="mIoU of a folder of <id>.png masks; prints one JSON object")
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--pred", required=True, type=_existing_dir)
    return parser


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train(args) -> int:
    from sgwsss.train import get_config, train

    cfg = get_config(args.config, **_parse_overrides(args.set))
    result = train(cfg, voc_root=args.voc_root, work_dir=args.work_dir, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(json.dumps(result, indent=None, default=str))
    return 0


def _load_for_inference(args):
    import torch

    from sgwsss.data import VOCSegmentation
    from sgwsss.train import load_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_checkpoint(args.checkpoint, device=device)
    dataset = VOCSegmentation(args.voc_root, split=args.split)
    return model, meta, dataset


def _cmd_pseudo_labels(args) -> int:
    from sgwsss.pipeline import PseudoLabelPipeline
    from sgwsss.train import generate_pseudo_labels

    model, meta, dataset = _load_for_inference(args)
    pipeline = PseudoLabelPipeline.from_config(meta["config"], stage=args.stage, crf=args.crf)
    n = generate_pseudo_labels(model, dataset, args.out, pipeline)
    print(json.dumps({"written": n, "out": str(args.out), "stage": args.stage}))
    return 0


def _cmd_predict(args) -> int:
    from sgwsss.train import predict

    model, meta, dataset = _load_for_inference(args)
    cfg = meta["config"]  # the run's test-time augmentation (infer_scales, infer_flip)
    n = predict(model, dataset, args.out, crf=args.crf, scales=cfg.infer_scales, flip=cfg.infer_flip)
    print(json.dumps({"written": n, "out": str(args.out)}))
    return 0


def _cmd_evaluate(args) -> int:
    from sgwsss.data import resolve_root
    from sgwsss.evaluate import evaluate_folder

    result = evaluate_folder(resolve_root(args.voc_root), args.split, args.pred)
    print(json.dumps(result))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "pseudo-labels": _cmd_pseudo_labels,
    "predict": _cmd_predict,
    "evaluate": _cmd_evaluate,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sgwsss: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    except (CLIError, OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sgwsss: error: {message}", file=sys.stderr)
        return 2
