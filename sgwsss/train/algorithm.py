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

Extending a run to more rounds: resume it with a larger ``rounds`` and nothing
else changed (``sgwsss train --config cpu --set rounds=2 --work-dir RUN --resume``).
Round ``r`` never depends on ``n`` (its data order is a function of the seed,
round, step and epoch; its learning rates of the step's iterations; the RNG
states travel in the checkpoint), so the new rounds start from the finished
run's last checkpoint and the result is bit-identical to a fresh run with that
many rounds. ``final.pt`` is then the last round's network; every earlier
round's stays in ``checkpoints/round{r}_step2.pt``.

Run on several GPUs with ``torchrun --nproc_per_node=G -m sgwsss train ...``:
per-process batches of ``step*_batch_size`` make a global batch ``G`` times larger.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist

from sgwsss.constants import INPUT_NORMALIZATION
from sgwsss.files import atomic_write_text, remove_stale_temps
from sgwsss.train.checkpoint import (atomic_save, capture_rng_state, load_checkpoint, load_weights, make_checkpoint,
                                     network_for, read_checkpoint, restore_rng_state, seed_everything)
from sgwsss.train.config import TrainConfig, as_config
from sgwsss.train.loop import Runtime, init_distributed, train_step1, train_step2
from sgwsss.train.metrics import METRICS_FILE, MetricsWriter, loss_records, phase_seconds, truncate_metrics
from sgwsss.train.pseudo import generate_pseudo_labels

__all__ = ["train", "load_checkpoint", "training_ids", "train_images_per_class", "train_transform",
           "RESUME_FREE_FIELDS"]

# Fields that may change between a run and its resumption (they do not change the result).
RESUME_FREE_FIELDS = frozenset({"num_workers", "log_interval", "checkpoint_interval"})


def _step_done(progress: Optional[Dict[str, int]], round: int, step: int) -> bool:
    if progress is None:
        return False
    pos = (progress["round"], progress["step"])
    return pos > (round, step) or (pos == (round, step) and progress["iteration"] >= progress["iters"])


def _check_resumable(stored: Dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint of another configuration; ``rounds`` may grow (extending a run, see :func:`train`)."""
    now = cfg.to_dict()
    diff = sorted(k for k in set(stored) | set(now)
                  if k not in RESUME_FREE_FIELDS and stored.get(k) != now.get(k)
                  and not (k == "rounds" and now[k] > stored.get(k, now[k])))
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
        raise ValueError(f"cannot resume {path}: the configuration differs ({detail}); "
                         f"use the stored work_dir/config.json or another work_dir")


@contextlib.contextmanager
def _rng_preserved():
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _summary(work_dir: Path, cfg: TrainConfig, resumed_from) -> Dict[str, Any]:
    metrics = work_dir / METRICS_FILE
    last_losses = {f"round{rec['round']}/{rec['phase']}": rec["loss"] for rec in loss_records(metrics)}
    return {
        "work_dir": str(work_dir),
        "final_checkpoint": str(work_dir / "final.pt"),
        "metrics": str(metrics),
        "config": cfg.to_dict(),
        "pseudo_dirs": [str(work_dir / f"round{r}" / "pseudo") for r in range(1, cfg.rounds + 1)],
        "last_losses": last_losses,
        "seconds": phase_seconds(metrics),
        "resumed_from": resumed_from,
    }


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


def train_transform(cfg: TrainConfig):
    """The augmentation of both SGD steps: a :class:`~sgwsss.data.TrainTransform` with the configuration's
    crop size, rescale range and flip, padding small crops with the backbone's mean colour.

    The padded pixels go through the network like any other (and into the global average pool
    of Eq. 1), so they must be 0 after the backbone's own normalisation
    (:data:`sgwsss.constants.INPUT_NORMALIZATION`): the ImageNet mean for ResNet-101, 127/255
    for EfficientNet-Lite0, whose input is ``(255 x - 127) / 128``.
    """
    from sgwsss.data import TrainTransform

    mean, _ = INPUT_NORMALIZATION[cfg.backbone]
    return TrainTransform(crop_size=cfg.crop_size, scale=cfg.scale, hflip=cfg.hflip, fill=mean)


def train(config: Union[TrainConfig, str, dict] = "cpu", voc_root=None, work_dir: Union[str, os.PathLike] = "runs/train",
          resume: bool = False, *, device: Union[str, torch.device, None] = None, progress: bool = True,
          callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Run Algorithm 1 of Ke & Hsu (see the module docstring).

    Args:
        config: a :class:`TrainConfig`, a preset name (``paper``, ``gpu``, ``cpu``, ``smoke``) or a config dict.
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
    if work_dir.exists() and not work_dir.is_dir():
        raise NotADirectoryError(f"work_dir {work_dir}: expected a folder, but it is a file")
    rank, world, dev, own_group = init_distributed(None if device is None else torch.device(device))
    runtime = Runtime(device=dev, rank=rank, world_size=world, work_dir=work_dir, progress=progress,
                      callback=callback)
    try:
        return _train(cfg, voc_root, runtime, resume)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _open_run(cfg: TrainConfig, runtime: Runtime, resume: bool) -> Optional[Dict[str, Any]]:
    """Check ``work_dir`` and prepare it: the checkpoint to resume from (None: a fresh start).

    Writes ``config.json``; trims ``metrics.jsonl`` to the checkpoint (or removes it on a fresh
    start). Refuses a ``work_dir`` that holds a run unless ``resume``, and a checkpoint of
    another configuration.
    """
    work_dir = Path(runtime.work_dir)
    last = runtime.checkpoint_dir / "last.pt"
    if runtime.is_main:  # temp files of killed writers (checkpoints, pseudo labels, config, metrics)
        remove_stale_temps(work_dir, recursive=True)
    ckpt = None
    if last.exists():
        if not resume:
            raise FileExistsError(f"{work_dir} already holds a run ({last}); pass resume=True (--resume) to "
                                  f"continue it, or choose another work_dir")
        ckpt = read_checkpoint(last)
        _check_resumable(ckpt["config"], cfg, last)
    elif any(work_dir.glob("round*/pseudo/*.png")):
        raise FileExistsError(f"{work_dir} holds pseudo labels but no checkpoint; choose an empty work_dir")
    if runtime.is_main:
        atomic_write_text(work_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if ckpt is None:
            (work_dir / METRICS_FILE).unlink(missing_ok=True)
        else:
            truncate_metrics(work_dir / METRICS_FILE, ckpt["progress"])
    runtime.barrier()
    return ckpt


def _network(cfg: TrainConfig, runtime: Runtime, ckpt: Optional[Dict[str, Any]]) -> torch.nn.Module:
    """The network on ``runtime.device``: ImageNet start, or the checkpoint's weights and RNG states."""
    seed_everything(cfg.seed)
    model = network_for(cfg, pretrained=cfg.pretrained and ckpt is None)
    if ckpt is not None:
        if ckpt.get("backbone", cfg.backbone) != model.backbone_name:
            raise ValueError(f"{runtime.checkpoint_dir / 'last.pt'} holds a {ckpt.get('backbone')!r} network, "
                             f"config asks {model.backbone_name!r}")
        load_weights(model, ckpt["model"], runtime.checkpoint_dir / "last.pt")
    model.to(runtime.device)
    if ckpt is not None:
        restore_rng_state(ckpt["rng"])  # the RNG states right after the checkpointed iteration (rank 0's)
    return model


DATA_FILE = "data.json"


def _check_data(work_dir: Path, root: Path, cfg: TrainConfig, ids: List[str], resuming: bool,
                write: bool) -> None:
    """Record the data a run trains on (``work_dir/data.json``: VOC root, split, the ids' count and
    hash); a resumed run must train on the same data (split and ids), else ``ValueError``. The root may
    move (a new Colab runtime's cache, a copied dataset): it is recorded and named in the error only."""
    record = {"voc_root": str(Path(root).resolve()), "train_split": cfg.train_split, "num_ids": len(ids),
              "ids_sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest()}
    path = work_dir / DATA_FILE
    if resuming and path.is_file():
        stored = json.loads(path.read_text())
        diff = [k for k in record if stored.get(k) != record[k]]
        if any(k != "voc_root" for k in diff):
            detail = ", ".join(f"{k}: {stored.get(k)!r} -> {record[k]!r}" for k in diff if k != "ids_sha1")
            detail = detail or "the same number of ids, but other ids"
            raise ValueError(f"cannot resume {work_dir}: it was trained on other data ({detail}); pass "
                             f"--voc-root {stored.get('voc_root')} with the split list it had, or use another "
                             f"--work-dir")
    if write:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _train(cfg: TrainConfig, voc_root, runtime: Runtime, resume: bool) -> Dict[str, Any]:
    from sgwsss.data import VOCSegmentation, resolve_root
    from sgwsss.pipeline import PseudoLabelPipeline

    work_dir = Path(runtime.work_dir)
    ckpt = _open_run(cfg, runtime, resume)
    progress = dict(ckpt["progress"]) if ckpt is not None else None
    if ckpt is not None and (work_dir / "final.pt").exists() and _step_done(progress, cfg.rounds, 2):
        return _summary(work_dir, cfg, progress)

    root = resolve_root(voc_root)
    ids = training_ids(root, cfg)
    _check_data(work_dir, root, cfg, ids, resuming=ckpt is not None, write=runtime.is_main)
    transform = train_transform(cfg)
    pipeline = PseudoLabelPipeline.from_config(cfg)
    model = _network(cfg, runtime, ckpt)
    writer = MetricsWriter(runtime.metrics_path if runtime.is_main else None)

    def resume_from(r: int, step: int):  # the checkpoint, when it lies inside (round r, step)
        return ckpt if progress is not None and (progress["round"], progress["step"]) == (r, step) else None

    for r in range(1, cfg.rounds + 1):
        if not _step_done(progress, r, 1):  # step 1: L_cls + lam * L_aff
            ds1 = VOCSegmentation(root, split=cfg.train_split, transform=transform, ids=ids)
            train_step1(model, ds1, cfg, runtime, round=r, resume=resume_from(r, 1))
        pseudo_dir = work_dir / f"round{r}" / "pseudo"
        if not (progress is not None and (progress["round"], progress["step"]) >= (r, 2)):
            # pseudo labels with the step-1 network (skipped once step 2 of this round has started)
            t0 = time.perf_counter()
            full = VOCSegmentation(root, split=cfg.train_split, ids=ids)
            with _rng_preserved():
                written = generate_pseudo_labels(model, full, pseudo_dir, pipeline, progress=runtime.progress)
            writer.pseudo(round=r, stage=pipeline.stage, written=written, images=len(ids),
                          seconds=time.perf_counter() - t0)
        if not _step_done(progress, r, 2):  # step 2: L_seg on the pseudo labels, same network
            ds2 = VOCSegmentation(root, split=cfg.train_split, transform=transform, mask_dir=pseudo_dir, ids=ids)
            train_step2(model, ds2, cfg, runtime, round=r, resume=resume_from(r, 2))

    if runtime.is_main:
        atomic_save(make_checkpoint(model, cfg, {"round": cfg.rounds, "step": 2, "iteration": cfg.step2_iters,
                                                 "iters": cfg.step2_iters}, kind="final", with_rng=False),
                    work_dir / "final.pt")
    runtime.barrier()
    return _summary(work_dir, cfg, progress)
