"""The trained model that travels with sgwsss, so that a reader can skip training.

A *bundle* is one file, ``sgwsss/book/weights/<config>.pt``, with its manifest ``<config>.json``
(SHA-256, size, the configuration, where it came from). It holds the two networks the chapters
load -- after step 1 of round 1 (``checkpoints/round1_step1.pt``, the one the pseudo labels come
from) and after Algorithm 1 (``final.pt``) -- in half precision, a tensor that is the same in both
stored once, plus the run's ``metrics.jsonl`` (the loss curves of chapter 3). Both files are package
data: a ``pip install`` from the repository, as in Colab, brings them, and the code that reads a
bundle always comes from the same commit as the bundle.

Make one from a finished run folder (what the lead commits)::

    python -m sgwsss.book.pretrained RUN            # writes sgwsss/book/weights/<config>.{pt,json}

:func:`materialize` checks the SHA-256 and writes the bundle out as an ordinary run folder
(``pretrained-<config>-<sha12>/``, with a ``pretrained.json`` listing each file's SHA-256, which
:func:`check_file` verifies again when a network is loaded).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NETWORKS = ("checkpoints/round1_step1.pt", "final.pt")
METRICS = "metrics.jsonl"
STAMP = "pretrained.json"
BUNDLE_FORMAT = 1

__all__ = ["WEIGHTS_DIR", "PretrainedError", "pack", "manifest", "verify", "materialize", "check_file", "main"]


class PretrainedError(ValueError):
    """A travelling checkpoint is missing a part or fails its checksum."""


def sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _half(state: Dict[str, Any], shared: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Float tensors in float16; a tensor equal to the one of ``shared`` under the same key is that
    very tensor, so :func:`torch.save` stores it once."""
    import torch

    out = {}
    for k, v in state.items():
        v = v.half() if v.is_floating_point() else v
        if shared is not None and k in shared and shared[k].dtype == v.dtype and torch.equal(shared[k], v):
            v = shared[k]
        out[k] = v
    return out


def pack(run: os.PathLike, out_dir: Optional[os.PathLike] = None) -> Path:
    """Write the bundle of the finished run folder ``run`` as ``out_dir/<config name>.pt`` + ``.json``
    (default ``out_dir``: :data:`WEIGHTS_DIR`).

    Returns:
        The ``.pt`` path.
    """
    from sgwsss.book import run_name
    from sgwsss.train.checkpoint import atomic_save, read_checkpoint
    from sgwsss.train.config import as_config

    run, out_dir = Path(run), Path(WEIGHTS_DIR if out_dir is None else out_dir)
    missing = [n for n in (*NETWORKS, METRICS) if not (run / n).is_file()]
    if missing:
        raise PretrainedError(f"{run} is not a finished run: missing {', '.join(missing)}")
    ckpts = {n: read_checkpoint(run / n) for n in NETWORKS}
    config = ckpts["final.pt"]["config"]
    if ckpts[NETWORKS[0]]["config"] != config:
        raise PretrainedError(f"{run}: the two checkpoints were written by different configurations")
    first = _half(ckpts[NETWORKS[0]]["model"])
    networks = {}
    for n, ck in ckpts.items():
        networks[n] = {"kind": ck.get("kind"), "backbone": ck.get("backbone"), "progress": ck.get("progress", {}),
                       "model": first if n == NETWORKS[0] else _half(ck["model"], shared=first)}
    bundle = {"format": BUNDLE_FORMAT, "config": config, "networks": networks,
              "metrics": (run / METRICS).read_text()}
    name = config["name"]
    path = atomic_save(bundle, out_dir / f"{name}.pt")
    info = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
            "run_name": run_name(as_config(config)), "config": config, "source_run": str(run.resolve()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    tmp = out_dir / f".{name}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out_dir / f"{name}.json")
    return path


def manifest(name: str, weights_dir: Optional[os.PathLike] = None) -> Optional[Dict[str, Any]]:
    """The manifest of the bundle ``name`` in ``weights_dir`` (default :data:`WEIGHTS_DIR`), with the
    bundle's ``path`` added; ``None`` when no bundle of that name travels with this install."""
    weights_dir = WEIGHTS_DIR if weights_dir is None else weights_dir
    path = Path(weights_dir) / f"{name}.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    info["path"] = str(Path(weights_dir) / info["file"])
    return info


def verify(info: Dict[str, Any]) -> Path:
    """The bundle file of manifest ``info``, after checking its SHA-256; :class:`PretrainedError` otherwise."""
    path = Path(info["path"])
    if not path.is_file():
        raise PretrainedError(f"the travelling checkpoint {path} is missing (its manifest is there): reinstall "
                              f"sgwsss, or train with book.train_run(..., pretrained=False)")
    got = sha256(path)
    if got != info["sha256"]:
        raise PretrainedError(f"the travelling checkpoint {path} fails its SHA-256 check (expected "
                              f"{info['sha256']}, got {got}): reinstall sgwsss, or train with "
                              f"book.train_run(..., pretrained=False)")
    return path


def check_file(run: os.PathLike, relative: str) -> None:
    """In a folder written by :func:`materialize`, check the SHA-256 of ``run/relative`` (else nothing to do)."""
    stamp = Path(run) / STAMP
    if not stamp.is_file():
        return
    expected = json.loads(stamp.read_text())["files"].get(relative)
    path = Path(run) / relative
    if expected is not None and (not path.is_file() or sha256(path) != expected):
        raise PretrainedError(f"{path} (from the travelling checkpoint) is missing or fails its SHA-256 check; "
                              f"delete {run} and call book.train_run again")


def materialize(info: Dict[str, Any], work: os.PathLike) -> Path:
    """Write the verified bundle of manifest ``info`` as a run folder under ``work``; returns that folder.

    Reuses the folder when it holds this very bundle (its ``pretrained.json`` names the same SHA-256).
    """
    import torch

    from sgwsss.train.checkpoint import FORMAT, atomic_save

    run = Path(work) / f"pretrained-{info['config']['name']}-{info['sha256'][:12]}"
    stamp = run / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == info["sha256"]:
        return run
    bundle = torch.load(verify(info), map_location="cpu", weights_only=True)
    if bundle.get("format") != BUNDLE_FORMAT or set(bundle.get("networks", {})) != set(NETWORKS):
        raise PretrainedError(f"{info['path']} is not a format-{BUNDLE_FORMAT} sgwsss bundle")
    files = {}
    for rel, net in bundle["networks"].items():
        ckpt = {"format": FORMAT, "kind": net["kind"], "backbone": net["backbone"], "config": bundle["config"],
                "model": net["model"], "optimizer": None, "scaler": None, "progress": net["progress"], "rng": None}
        files[rel] = sha256(atomic_save(ckpt, run / rel))
    (run / METRICS).write_text(bundle["metrics"])
    (run / "config.json").write_text(json.dumps(bundle["config"], indent=1) + "\n")
    tmp = run / f".{STAMP}.tmp"
    tmp.write_text(json.dumps({"sha256": info["sha256"], "bundle": info["file"], "files": files}, indent=1) + "\n")
    os.replace(tmp, stamp)  # written last: the folder is complete
    return run


def main(argv=None) -> int:
    """``python -m sgwsss.book.pretrained RUN [--out DIR]``: make the travelling bundle of a finished run."""
    ap = argparse.ArgumentParser(prog="python -m sgwsss.book.pretrained", description=main.__doc__)
    ap.add_argument("run", type=Path, help="a finished run folder (final.pt, checkpoints/round1_step1.pt, ...)")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {WEIGHTS_DIR}")
    args = ap.parse_args(argv)
    try:
        path = pack(args.run, args.out)
    except (PretrainedError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = json.loads(path.with_suffix(".json").read_text())
    print(f"wrote {path} ({info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256']}) and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
