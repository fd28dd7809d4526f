"""Pseudo labels (step 1 -> step 2 of Algorithm 1) and predictions, written as ``<id>.png``.

:func:`generate_pseudo_labels` runs the network on full-size images, builds the
random-walk transition matrix ``T`` from the network's low-level features
(Eqs. 2-3 of Ke & Hsu) when the Table 1 stage uses it, turns the localization
maps into pseudo labels (:func:`sgwsss.refine.stages.stage_pseudo_labels`,
Eq. 11), optionally refines them with a dense CRF and writes palette-index PNGs.
:func:`predict` writes the segmentation branch's arg-max masks the same way.

Both are resumable (existing PNGs are skipped; each PNG is written to a temp
file and renamed, so a killed run leaves no partial file) and split their ids
across DDP ranks (rank ``r`` of ``W`` takes ids ``r, r+W, ...``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from sgwsss.constants import AFFINITY_STAGES, STAGES
from sgwsss.data import PALETTE
from sgwsss.train.config import TrainConfig, as_config

__all__ = ["write_index_png", "generate_pseudo_labels", "predict", "predict_probs", "mask_from_probs"]

NUM_CLASSES = 21


def write_index_png(mask, path: Union[str, os.PathLike]) -> Path:
    """Write an ``(H, W)`` index mask (values 0..255) as a VOC palette PNG, atomically (temp file + rename).

    Like :func:`sgwsss.data.save_mask`, but a killed run never leaves a partial PNG
    (which a resumed run would otherwise skip). Read back with :func:`sgwsss.data.read_mask`.
    """
    arr = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {tuple(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"mask values must be in 0..255, got [{arr.min()}, {arr.max()}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))  # mode "L"
    img.putpalette(PALETTE.reshape(-1).tolist())  # -> mode "P": indices + the VOC colours
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def _rank_world(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dataset_ids(dataset) -> List[str]:
    ids = getattr(dataset, "ids", None)
    if ids is None:
        return [dataset[i]["id"] for i in range(len(dataset))]
    return list(ids)


def _batches(dataset, indices: Sequence[int], batch_size: int) -> Iterator[List[dict]]:
    """Consecutive items of equal size, at most ``batch_size`` per batch (no padding: exact results)."""
    batch: List[dict] = []
    for i in indices:
        item = dataset[i]
        if batch and (len(batch) == batch_size or batch[0]["image"].shape != item["image"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch




def _stage_kwargs(stage: str, cfg: TrainConfig) -> dict:
    """Keyword arguments of ``stage_pseudo_labels``: the grid, and the guided filter's radius and eps
    (Eqs. 6-10) for the self-guided stages."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    kwargs = {"grid": cfg.grid}
    if stage.startswith("G"):
        kwargs.update(radius=cfg.radius, eps=cfg.eps)
    return kwargs


def _run(model, dataset, out_dir, per_batch, *, batch_size: int, skip_existing: bool, rank, world_size,
         progress: bool, desc: str) -> int:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = _rank_world(rank, world_size)
    ids = _dataset_ids(dataset)
    todo = [i for i in range(rank, len(ids), world_size)
            if not (skip_existing and (out_dir / f"{ids[i]}.png").exists())]
    was_training = model.training
    model.eval()
    written = 0
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=desc, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for batch in _batches(dataset, todo, batch_size):
                masks = per_batch(batch)
                for item, mask in zip(batch, masks):
                    write_index_png(mask, out_dir / f"{item['id']}.png")
                written += len(batch)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dev = next(model.parameters()).device
        count = torch.tensor([written], dtype=torch.int64, device=dev if dev.type == "cuda" else "cpu")
        dist.all_reduce(count)
        written = int(count.item())
        dist.barrier()
    return written


def _to_device_batch(batch: List[dict], device) -> Tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([it["image"] for it in batch]).to(device)
    labels = torch.stack([torch.as_tensor(it["label"]) for it in batch]).to(device)
    return images, labels


def generate_pseudo_labels(model: torch.nn.Module, dataset, out_dir: Union[str, os.PathLike],
                           stage: str = "G-iter15", cfg: Union[TrainConfig, dict, str, None] = None,
                           crf: bool = False, batch_size: int = 1, *, crf_params=None, skip_existing: bool = True,
                           rank: Optional[int] = None, world_size: Optional[int] = None,
                           progress: bool = True) -> int:
    """Write the Table 1 ``stage`` pseudo label of every image of ``dataset`` as ``out_dir/<id>.png``.

    Args:
        model: an :class:`~sgwsss.model.SGNet` (run in eval mode, on its own device).
        dataset: full-size items with ``image`` (3,H,W) in [0,1], ``label`` (20,), ``id``.
        stage: a Table 1 stage name (``A``, ``R``, ``G-w/o-aff``, ``G``, ``G-iter15-w/o-aff``, ``G-iter15``).
        cfg: a :class:`TrainConfig` (or preset name / dict) for ``grid``, ``beta``, ``radius``, ``eps``
            and the test-time augmentation ``infer_scales`` / ``infer_flip`` of the localization maps
            (:meth:`~sgwsss.model.SGNet.infer`); ``None``: the defaults (the paper's values, one scale).
        crf: refine each pseudo label with a dense CRF (:func:`sgwsss.crf.labels_to_probs` + ``crf_labels``).
        batch_size: images per forward pass; only consecutive images of equal size share a batch.
        skip_existing: skip ids whose PNG exists (resume).
        rank, world_size: id split; default from ``torch.distributed`` when initialised.

    Returns:
        The number of PNGs written by this call (summed over ranks).
    """
    from sgwsss.refine.affinity import affinity_matrix, transition_matrix
    from sgwsss.refine.stages import stage_pseudo_labels

    cfg = TrainConfig() if cfg is None else as_config(cfg)
    kwargs = _stage_kwargs(stage, cfg)
    needs_t = stage in AFFINITY_STAGES
    params = _crf_params(crf_params) if crf else None
    device = next(model.parameters()).device

    def per_batch(batch):
        images, labels = _to_device_batch(batch, device)
        out = model.infer(images, cfg.infer_scales, cfg.infer_flip)
        transition = transition_matrix(affinity_matrix(out.feat, grid=cfg.grid), beta=cfg.beta) if needs_t else None
        masks = stage_pseudo_labels(stage, images, out.cam, labels, transition=transition, **kwargs)
        masks = masks.cpu().numpy()
        if crf:
            masks = np.stack([_crf_refine_labels(it["image"], m, params) for it, m in zip(batch, masks)])
        return masks

    return _run(model, dataset, out_dir, per_batch, batch_size=batch_size, skip_existing=skip_existing, rank=rank,
                world_size=world_size, progress=progress, desc=f"pseudo labels {stage}")


def _crf_params(params):
    from sgwsss.crf import CRFParams

    return CRFParams() if params is None else params


def _crf_refine_labels(image: torch.Tensor, mask: np.ndarray, params) -> np.ndarray:
    from sgwsss.crf import crf_labels, labels_to_probs

    valid = mask != 255
    if not valid.any():
        return mask
    probs = labels_to_probs(mask.astype(np.int64), NUM_CLASSES)
    return crf_labels(image.cpu().numpy(), probs, params)


def predict(model: torch.nn.Module, dataset, out_dir: Union[str, os.PathLike], crf: bool = False,
            batch_size: int = 1, *, scales: Sequence[float] = (1.0,), flip: bool = False, crf_params=None,
            skip_existing: bool = False, rank: Optional[int] = None, world_size: Optional[int] = None,
            progress: bool = True) -> int:
    """Write the segmentation branch's prediction of every image of ``dataset`` as ``out_dir/<id>.png``.

    The ``(B, 21, h, w)`` logits (averaged over ``scales`` and, with ``flip``, mirrored
    inputs: :meth:`~sgwsss.model.SGNet.infer`) are upsampled bilinearly to the image size;
    the mask is their arg-max, or with ``crf=True`` the dense CRF's arg-max on their
    softmax probabilities. Other arguments as in :func:`generate_pseudo_labels`.

    Returns:
        The number of PNGs written by this call (summed over ranks).
    """
    params = _crf_params(crf_params) if crf else None
    device = next(model.parameters()).device

    def per_batch(batch):
        images, _ = _to_device_batch(batch, device)
        probs = predict_probs(model, images, scales, flip)
        return np.stack([mask_from_probs(it["image"], p, params) for it, p in zip(batch, probs)])

    return _run(model, dataset, out_dir, per_batch, batch_size=batch_size, skip_existing=skip_existing, rank=rank,
                world_size=world_size, progress=progress, desc="predict")


def predict_probs(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """The segmentation branch's class probabilities at the image size: (B, 3, H, W) -> (B, 21, H, W).

    Softmax of the logits of :meth:`~sgwsss.model.SGNet.infer` (averaged over ``scales``
    and, with ``flip``, mirrored inputs), bilinearly upsampled; no gradient, float32.
    """
    with torch.no_grad():
        seg = model.infer(images, tuple(scales), flip).seg
        seg = F.interpolate(seg.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(seg, dim=1)


def mask_from_probs(image: torch.Tensor, probs: torch.Tensor, crf_params=None) -> np.ndarray:
    """(H, W) int64 mask from (21, H, W) probabilities: their arg-max, or with ``crf_params``
    (a :class:`sgwsss.crf.CRFParams`) the dense CRF's arg-max guided by ``image`` (3, H, W) in [0, 1]."""
    if crf_params is None:
        return probs.argmax(0).cpu().numpy()
    from sgwsss.crf import crf_labels

    return crf_labels(image.cpu().numpy(), probs.cpu().numpy(), crf_params)
