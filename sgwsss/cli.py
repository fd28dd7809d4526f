"""Command line: ``sgwsss`` (console script) and ``python -m sgwsss``.

Subcommands follow the pipeline::

    sgwsss train --config {cpu,paper,smoke} --voc-root DIR --work-dir DIR [--resume]
    sgwsss pseudo-labels --checkpoint CKPT --voc-root DIR --split SPLIT --stage STAGE --out DIR [--crf]
    sgwsss predict --checkpoint CKPT --voc-root DIR --split SPLIT --out DIR [--crf]
    sgwsss evaluate --voc-root DIR --split SPLIT --pred DIR

Every expected failure (a wrong argument, a missing file, a checkpoint from another
backbone, missing predictions) prints one ``sgwsss: error: ...`` line and exits
with status 2; no traceback.

``pseudo-labels`` and ``predict`` write ``provenance.json`` beside the PNGs of ``--out``: the
checkpoint (path, size, sha256), the command, stage, split, CRF and pipeline settings. A rerun
with the same record skips the PNGs already written (resume); a folder written with another
checkpoint or settings (or holding PNGs without a record) is refused unless ``--overwrite``
is given, which deletes those PNGs and writes them anew.
"""
from __future__ import annotations

import argparse
import hashlib
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

    out_epilog = (f"--out receives <id>.png and {PROVENANCE}, the record of what made them (checkpoint sha256, "
                  "stage, split, CRF, settings). Rerun with the same record: PNGs already there are kept "
                  "(resume). Another checkpoint or settings, or PNGs without a record: refused, unless "
                  "--overwrite, which deletes those PNGs and writes them anew.")
    out_help = "output folder (see below)"
    overwrite_help = f"replace PNGs made with another checkpoint or settings (or without {PROVENANCE})"

    p = sub.add_parser("pseudo-labels", help="write a Table 1 stage's pseudo labels as <id>.png",
                       epilog=out_epilog)
    p.add_argument("--checkpoint", required=True, type=_existing_file)
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--stage", default="G-iter15", choices=STAGES)
    p.add_argument("--out", required=True, type=Path, help=out_help)
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (classes: background + the image's)")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)

    p = sub.add_parser("predict", help="write the segmentation network's masks as <id>.png", epilog=out_epilog)
    p.add_argument("--checkpoint", required=True, type=_existing_file)
    p.add_argument("--voc-root", default=None, help=voc_help)
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--out", required=True, type=Path, help=out_help)
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)

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


def _folder_arg(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise CLIError(f"{option} {path}: expected a folder, but it is a file")


def _cmd_train(args) -> int:
    from sgwsss.train import get_config, train

    _folder_arg(args.work_dir, "--work-dir")
    cfg = get_config(args.config, **_parse_overrides(args.set))
    result = train(cfg, voc_root=args.voc_root, work_dir=args.work_dir, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(json.dumps(result, indent=None, default=str))
    return 0


PROVENANCE = "provenance.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _provenance(args, settings: dict) -> dict:
    """What the PNGs of ``--out`` are made of: the checkpoint's identity and the command's settings."""
    ckpt = Path(args.checkpoint)
    return {"command": args.command, "checkpoint": {"path": str(ckpt.resolve()), "size": ckpt.stat().st_size,
                                                     "sha256": _sha256(ckpt)},
            "split": args.split, "crf": bool(args.crf), "settings": settings}


def _prepare_out(args, record: dict, ids) -> None:
    """Check ``--out`` against its provenance record: same record -> resume; otherwise refuse, or with
    ``--overwrite`` delete the PNGs of ``ids`` there. Then write the record (before any PNG)."""
    out = Path(args.out)
    _folder_arg(out, "--out")
    path = out / PROVENANCE
    pngs = [out / f"{i}.png" for i in ids if (out / f"{i}.png").exists()] if out.is_dir() else []
    stored = json.loads(path.read_text()) if path.is_file() else None
    same = stored is not None and _same_record(stored, record)
    if not same and (pngs or stored is not None):
        if not args.overwrite:
            why = (f"holds {len(pngs)} PNG(s) but no {PROVENANCE}" if stored is None
                   else f"was written with other settings ({_record_diff(stored, record)})")
            raise CLIError(f"--out {out} {why}; pass --overwrite to replace them, or choose another --out")
        for png in pngs:
            png.unlink()
    if not same:
        from sgwsss.files import atomic_write_text

        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def _same_record(stored: dict, record: dict) -> bool:
    """Equal records, the checkpoint compared by content (size and sha256), not by path."""
    def key(r):
        return {**r, "checkpoint": {k: v for k, v in dict(r.get("checkpoint") or {}).items() if k != "path"}}
    return json.loads(json.dumps(key(stored), default=str)) == json.loads(json.dumps(key(record), default=str))


def _record_diff(stored: dict, record: dict) -> str:
    parts = []
    if (stored.get("checkpoint") or {}).get("sha256") != record["checkpoint"]["sha256"]:
        parts.append(f"checkpoint {(stored.get('checkpoint') or {}).get('path')} -> {record['checkpoint']['path']}")
    for k in ("command", "split", "crf"):
        if stored.get(k) != record[k]:
            parts.append(f"{k} {stored.get(k)!r} -> {record[k]!r}")
    old, new = stored.get("settings") or {}, json.loads(json.dumps(record["settings"], default=str))
    parts += [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(parts[:4]) or "another record"


def _load_for_inference(args):
    import torch

    from sgwsss.data import VOCSegmentation
    from sgwsss.train import load_checkpoint

    _folder_arg(Path(args.out), "--out")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_checkpoint(args.checkpoint, device=device)
    dataset = VOCSegmentation(args.voc_root, split=args.split)
    return model, meta, dataset


def _run_writer(args, write) -> int:
    """``write()`` with non-finite network outputs reported as one line naming the checkpoint."""
    from sgwsss.train.pseudo import NonFiniteOutputError

    try:
        return write()
    except NonFiniteOutputError as exc:
        raise CLIError(f"checkpoint {args.checkpoint} gives non-finite (NaN or inf) network outputs on image "
                       f"{exc.image_ids[0]!r}; its weights are unusable: use an earlier checkpoint or retrain") from None


def _cmd_pseudo_labels(args) -> int:
    import dataclasses

    from sgwsss.pipeline import PseudoLabelPipeline
    from sgwsss.train import generate_pseudo_labels

    model, meta, dataset = _load_for_inference(args)
    pipeline = PseudoLabelPipeline.from_config(meta["config"], stage=args.stage, crf=args.crf)
    _prepare_out(args, _provenance(args, dataclasses.asdict(pipeline)), dataset.ids)
    n = _run_writer(args, lambda: generate_pseudo_labels(model, dataset, args.out, pipeline))
    print(json.dumps({"written": n, "out": str(args.out), "stage": args.stage}))
    return 0


def _cmd_predict(args) -> int:
    import dataclasses

    from sgwsss.crf import CRFParams
    from sgwsss.train import predict

    model, meta, dataset = _load_for_inference(args)
    cfg = meta["config"]  # the run's test-time augmentation (infer_scales, infer_flip)
    settings = {"scales": list(cfg.infer_scales), "flip": cfg.infer_flip,
                "crf_params": dataclasses.asdict(CRFParams()) if args.crf else None}
    _prepare_out(args, _provenance(args, settings), dataset.ids)
    n = _run_writer(args, lambda: predict(model, dataset, args.out, crf=args.crf, scales=cfg.infer_scales,
                                          flip=cfg.infer_flip, skip_existing=True))
    print(json.dumps({"written": n, "out": str(args.out)}))
    return 0


def _cmd_evaluate(args) -> int:
    from sgwsss.data import resolve_root
    from sgwsss.evaluate import evaluate_folder

    result = evaluate_folder(resolve_root(args.voc_root, images=False), args.split, args.pred)
    print(json.dumps(result))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "pseudo-labels": _cmd_pseudo_labels,
    "predict": _cmd_predict,
    "evaluate": _cmd_evaluate,
}


INTERRUPT_HINTS = {
    "train": "to continue, run the same command with --resume",
    "pseudo-labels": "to continue, run the same command again (the PNGs already written are kept)",
    "predict": "to continue, run the same command again (the PNGs already written are kept)",
    "evaluate": "nothing was written; run the command again",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from sgwsss.data import voc

    saved, voc.HINT_STYLE = voc.HINT_STYLE, "cli"  # data-root errors name --voc-root, not Python arguments
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"sgwsss: interrupted; {INTERRUPT_HINTS[args.command]}", file=sys.stderr)
        return 130
    except (CLIError, OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sgwsss: error: {message}", file=sys.stderr)
        return 2
    finally:
        voc.HINT_STYLE = saved
