"""Algorithm 1 of Ke & Hsu: alternating training of one network.

::

    for r = 1 .. n:
        step 1: train with L_cls + lam * L_aff (Eq. 13)            -> checkpoints/round{r}_step1.pt
        pseudo labels of every training image (Table 1 stage)    -> round{r}/pseudo/<id>.png
        step 2: train with L_seg on those pseudo labels (Eq. 12)  -> checkpoints/round{r}_step2.pt
    -> final.pt

The same network (backbone, segmentation head, classification branch,
aggregation layer) is trained in both steps. ``work_dir`` receives
``config.json``, ``metrics.jsonl``, ``checkpoints/last.pt`` (every
``checkpoint_interval`` iterations, atomically) and the end-of-step files.
``train(..., resume=True)`` continues a killed run at the exact step and
iteration, skipping pseudo labels already written, and ends with the same
weights as an uninterrupted run with the same seed.

Run on several GPUs with ``torchrun --nproc_per_node=G -m sgwsss train ...``:
per-process batches of ``step*_batch_size`` make a global batch ``G`` times larger.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from sgwsss.train.checkpoint import (atomic_save, capture_rng_state, load_checkpoint, make_checkpoint, network_for,
                                     read_checkpoint, restore_rng_state, seed_everything)
from sgwsss.train.config import TrainConfig, as_config
from sgwsss.train.loop import METRICS_FILE, MetricsWriter, Runtime, init_distributed, train_step1, train_step2
from sgwsss.train.pseudo import generate_pseudo_labels

__all__ = ["train", "load_checkpoint", "phase_seconds", "read_metrics", "training_ids", "train_images_per_class",
           "RESUME_FREE_FIELDS"]

# Fields that may change between a run and its resumption (they do not change the result).
RESUME_FREE_FIELDS = frozenset({"num_workers", "log_interval", "checkpoint_interval"})
_PHASE_ORDER = {"step1": 1, "pseudo": 2, "step2": 3}


def _position_key(progress: Dict[str, int]) -> Tuple[int, int, int]:
    """Order of a checkpoint position: (round, phase order, iteration)."""
    return progress["round"], _PHASE_ORDER[f"step{progress['step']}"], progress["iteration"]


def _step_done(progress: Optional[Dict[str, int]], round: int, step: int) -> bool:
    if progress is None:
        return False
    pos = (progress["round"], progress["step"])
    return pos > (round, step) or (pos == (round, step) and progress["iteration"] >= progress["iters"])


def _check_resumable(stored: Dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in set(stored) | set(now)
                  if k not in RESUME_FREE_FIELDS and stored.get(k) != now.get(k))
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
        raise ValueError(f"cannot resume {path}: the configuration differs ({detail}); "
                         f"use the stored work_dir/config.json or another work_dir")


def _metrics_records(path: Path) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(line, record)`` for each well-formed line of a ``metrics.jsonl``, in order.

    Well-formed: a JSON object with a known ``phase`` and an integer ``round``. Anything
    else (a line cut short by a kill mid-write, a hand edit) is skipped, by every reader
    alike. A missing file yields nothing.
    """
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and rec.get("phase") in _PHASE_ORDER and isinstance(rec.get("round"), int)
        except ValueError:
            continue
        if ok:
            yield line, rec


def read_metrics(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The well-formed records of a run's ``metrics.jsonl``, in order (see :func:`_metrics_records`).

    A line cut short by a kill mid-write is skipped rather than raised on, so the log of a
    killed run can be read (and plotted) before it is resumed; a missing file gives ``[]``.
    """
    return [rec for _, rec in _metrics_records(Path(path))]


def _truncate_metrics(path: Path, progress: Dict[str, int]) -> None:
    """Drop metrics lines written after the checkpoint we resume from (the killed run's tail)."""
    if not path.exists():
        return
    limit = _position_key(progress)
    keep = [line for line, rec in _metrics_records(path)
            if (rec["round"], _PHASE_ORDER[rec["phase"]], rec.get("iteration", 0)) <= limit]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


@contextlib.contextmanager
def _rng_preserved():
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _summary(work_dir: Path, cfg: TrainConfig, resumed_from) -> Dict[str, Any]:
    last_losses: Dict[str, float] = {}
    metrics = work_dir / METRICS_FILE
    for _, rec in _metrics_records(metrics):
        if rec["phase"] in ("step1", "step2") and "loss" in rec:
            last_losses[f"round{rec['round']}/{rec['phase']}"] = rec["loss"]
    seconds = phase_seconds(metrics)
    return {
        "work_dir": str(work_dir),
        "final_checkpoint": str(work_dir / "final.pt"),
        "metrics": str(metrics),
        "config": cfg.to_dict(),
        "pseudo_dirs": [str(work_dir / f"round{r}" / "pseudo") for r in range(1, cfg.rounds + 1)],
        "last_losses": last_losses,
        "seconds": seconds,
        "resumed_from": resumed_from,
    }


def phase_seconds(metrics: Union[str, os.PathLike]) -> Dict[str, float]:
    """Wall-clock seconds per phase of a run, from its ``metrics.jsonl``.

    Returns ``{"round1/step1": s, "round1/pseudo": s, "round1/step2": s, ..., "total": s}``:
    the sum of the ``seconds`` of every step line (each covers one log interval) and the
    pseudo-label line of each round. Lines without ``seconds`` (logs written before the
    field existed) count as 0; malformed lines are skipped (:func:`read_metrics`); a missing
    file gives ``{}``. A resumed run counts the time of every process that contributed to
    the kept lines, not the time lost to the kill.
    """
    out: Dict[str, float] = {}
    for _, rec in _metrics_records(Path(metrics)):
        key = f"round{rec['round']}/{rec['phase']}"
        out[key] = out.get(key, 0.0) + float(rec.get("seconds", 0.0))
    if out:
        out["total"] = sum(out.values())
    return out


def training_ids(root, cfg: TrainConfig) -> List[str]:
    """The ids a run of ``cfg`` trains on: the ``train_split`` list of the VOC copy at ``root``,
    restricted to ``cfg.train_ids``, thinned evenly when ``cfg.budget < 1`` (at least 8 kept), then
    cut to its first ``cfg.max_images``. An empty list raises ``ValueError``."""
    from sgwsss.data import VOCSegmentation

    ids = list(VOCSegmentation(root, split=cfg.train_split, ids=cfg.train_ids).ids)
    if not ids:
        raise ValueError(f"split {cfg.train_split!r} of {root} is empty")
    if cfg.budget < 1:  # SGWSSS_BUDGET below 1 also thins the images, evenly over the split
        keep = max(8, math.ceil(cfg.budget * len(ids)))
        if keep < len(ids):
            ids = [ids[i] for i in sorted({round(k * (len(ids) - 1) / (keep - 1)) for k in range(keep)})]
    return ids[: cfg.max_images] if cfg.max_images is not None else ids


def train_images_per_class(root, cfg: TrainConfig) -> Dict[str, int]:
    """``{class name: number of training images that contain it}`` over :func:`training_ids`
    (the 20 foreground classes, from ``VOCSegmentation.class_counts()``)."""
    from sgwsss.data import CLASSES, VOCSegmentation

    counts = VOCSegmentation(root, split=cfg.train_split, ids=training_ids(root, cfg)).class_counts()
    return dict(zip(CLASSES[1:], counts.tolist()))


def train(config: Union[TrainConfig, str, dict] = "cpu", voc_root=None, work_dir: Union[str, os.PathLike] = "runs/train",
          resume: bool = False, *, device: Union[str, torch.device, None] = None, progress: bool = True,
          callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Run Algorithm 1 of Ke & Hsu (see the module docstring).

    Args:
        config: a :class:`TrainConfig`, a preset name (``paper``, ``cpu``, ``smoke``) or a config dict.
        voc_root: PASCAL VOC root (``None``: ``$SGWSSS_VOC_ROOT``, see :func:`sgwsss.data.resolve_root`).
        work_dir: output folder (config.json, metrics.jsonl, checkpoints/, round*/pseudo/, final.pt).
        resume: continue the run in ``work_dir`` from ``checkpoints/last.pt`` (a fresh start when there
            is none). Without it, a ``work_dir`` that already holds a run raises ``FileExistsError``.
        device: default ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun), else ``cpu``.
        progress: show tqdm bars (rank 0 only).
        callback: called after every SGD iteration with ``{"round", "step", "iteration", "iters", "loss"}``.

    Returns:
        A JSON-ready dict: ``work_dir``, ``final_checkpoint``, ``metrics``, ``config``, ``pseudo_dirs``,
        ``last_losses`` (last logged loss per round and step), ``resumed_from`` (the checkpoint position or None).
    """
    cfg = as_config(config)
    work_dir = Path(work_dir)
    rank, world, dev, own_group = init_distributed(None if device is None else torch.device(device))
    runtime = Runtime(device=dev, rank=rank, world_size=world, work_dir=work_dir, progress=progress,
                      callback=callback)
    try:
        return _train(cfg, voc_root, runtime, resume)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, voc_root, runtime: Runtime, resume: bool) -> Dict[str, Any]:
    from sgwsss.data import TrainTransform, VOCSegmentation, resolve_root

    work_dir = Path(runtime.work_dir)
    last = runtime.checkpoint_dir / "last.pt"
    final = work_dir / "final.pt"
    ckpt = None
    if last.exists():
        if not resume:
            raise FileExistsError(f"{work_dir} already holds a run ({last}); pass resume=True (--resume) to "
                                  f"continue it, or choose another work_dir")
        ckpt = read_checkpoint(last)
        _check_resumable(ckpt["config"], cfg, last)
    elif any(work_dir.glob("round*/pseudo/*.png")):
        raise FileExistsError(f"{work_dir} holds pseudo labels but no checkpoint; choose an empty work_dir")
    progress = dict(ckpt["progress"]) if ckpt is not None else None

    if runtime.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = work_dir / f".config.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        os.replace(tmp, work_dir / "config.json")
        if progress is None:
            (work_dir / METRICS_FILE).unlink(missing_ok=True)
        else:
            _truncate_metrics(work_dir / METRICS_FILE, progress)
    runtime.barrier()

    if ckpt is not None and final.exists() and _step_done(progress, cfg.rounds, 2):
        return _summary(work_dir, cfg, progress)

    root = resolve_root(voc_root)
    ids = training_ids(root, cfg)
    transform = TrainTransform(crop_size=cfg.crop_size, scale=cfg.scale, hflip=cfg.hflip)

    seed_everything(cfg.seed)
    model = network_for(cfg, pretrained=cfg.pretrained and ckpt is None)
    if ckpt is not None:
        if ckpt.get("backbone", cfg.backbone) != model.backbone_name:
            raise ValueError(f"{last} holds a {ckpt.get('backbone')!r} network, config asks {model.backbone_name!r}")
        model.load_state_dict(ckpt["model"])
    model.to(runtime.device)
    if ckpt is not None:
        restore_rng_state(ckpt["rng"])  # the RNG states right after the checkpointed iteration (rank 0's)

    writer = MetricsWriter(runtime.metrics_path if runtime.is_main else None)
    for r in range(1, cfg.rounds + 1):
        # step 1: L_cls + lam * L_aff
        if not _step_done(progress, r, 1):
            resume_from = ckpt if progress is not None and (progress["round"], progress["step"]) == (r, 1) else None
            ds1 = VOCSegmentation(root, split=cfg.train_split, transform=transform, ids=ids)
            train_step1(model, ds1, cfg, runtime, round=r, resume=resume_from)
        # pseudo labels with the step-1 network (skipped once step 2 of this round has started)
        pseudo_dir = work_dir / f"round{r}" / "pseudo"
        if not (progress is not None and (progress["round"], progress["step"]) >= (r, 2)):
            t0 = time.perf_counter()
            full = VOCSegmentation(root, split=cfg.train_split, ids=ids)
            with _rng_preserved():
                written = generate_pseudo_labels(model, full, pseudo_dir, stage=cfg.pseudo_stage, cfg=cfg,
                                                 crf=cfg.pseudo_crf, progress=runtime.progress)
            writer.write({"phase": "pseudo", "round": r, "iteration": 0, "stage": cfg.pseudo_stage,
                          "written": written, "images": len(ids), "seconds": time.perf_counter() - t0})
        # step 2: L_seg on the pseudo labels, same network
        if not _step_done(progress, r, 2):
            resume_from = ckpt if progress is not None and (progress["round"], progress["step"]) == (r, 2) else None
            ds2 = VOCSegmentation(root, split=cfg.train_split, transform=transform, mask_dir=pseudo_dir, ids=ids)
            train_step2(model, ds2, cfg, runtime, round=r, resume=resume_from)

    if runtime.is_main:
        atomic_save(make_checkpoint(model, cfg, {"round": cfg.rounds, "step": 2, "iteration": cfg.step2_iters,
                                                 "iters": cfg.step2_iters}, kind="final", with_rng=False), final)
    runtime.barrier()
    return _summary(work_dir, cfg, progress)
