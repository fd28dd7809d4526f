"""Pseudo labels (step 1 -> step 2 of Algorithm 1) and predictions, written as ``<id>.png``.

:func:`generate_pseudo_labels` runs a :class:`~sgwsss.pipeline.PseudoLabelPipeline` (the
network, the affinity of Eqs. 2-3, a Table 1 stage, Eq. 11 and optionally a dense CRF) on
full-size images and writes palette-index PNGs (:func:`sgwsss.data.save_mask`).
:func:`predict` writes the segmentation branch's arg-max masks the same way.

Both are resumable (existing PNGs are skipped; each PNG is written to a temp
file and renamed, so a killed run leaves no partial file, and its temp files are
removed by the next run), refuse a network whose outputs are NaN or inf
(:class:`NonFiniteOutputError`, naming the image) and split their ids
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

from sgwsss.data import save_mask
from sgwsss.files import remove_stale_temps
from sgwsss.pipeline import PseudoLabelPipeline

__all__ = ["generate_pseudo_labels", "predict", "predict_probs", "mask_from_probs", "NonFiniteOutputError"]


class NonFiniteOutputError(ValueError):
    """The network gave NaN or inf on an image (``image_id``): its labels would be silently wrong."""

    def __init__(self, image_ids: Sequence[str]):
        self.image_ids = list(image_ids)
        super().__init__(f"the network gives non-finite (NaN or inf) outputs on image {self.image_ids[0]!r}")


def _finite_outputs_hook(module, inputs, output):
    """Forward hook: raise :class:`NonFiniteOutputError` when any output tensor holds NaN or inf."""
    tensors = [output] if torch.is_tensor(output) else [t for t in output if torch.is_tensor(t)] \
        if isinstance(output, tuple) else []
    if any(not torch.isfinite(t).all() for t in tensors):
        raise NonFiniteOutputError(["?"])


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


def _run(model, dataset, out_dir, per_batch, *, batch_size: int, skip_existing: bool, rank, world_size,
         progress: bool, desc: str) -> int:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir}: expected a folder, but it is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # .<id>.png.tmp<pid> of a killed run
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
    hook = model.register_forward_hook(_finite_outputs_hook)
    try:
        with torch.no_grad():
            for batch in _batches(dataset, todo, batch_size):
                try:
                    masks = per_batch(batch)
                except NonFiniteOutputError:
                    raise NonFiniteOutputError([it["id"] for it in batch]) from None
                for item, mask in zip(batch, masks):
                    save_mask(out_dir / f"{item['id']}.png", mask)
                written += len(batch)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        hook.remove()
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
                           pipeline: Optional[PseudoLabelPipeline] = None, batch_size: int = 1, *,
                           skip_existing: bool = True, rank: Optional[int] = None, world_size: Optional[int] = None,
                           progress: bool = True) -> int:
    """Write the pseudo label of every image of ``dataset`` as ``out_dir/<id>.png``.

    Args:
        model: an :class:`~sgwsss.model.SGNet` (run in eval mode, on its own device).
        dataset: full-size items with ``image`` (3,H,W) in [0,1], ``label`` (20,), ``id``.
        pipeline: what the labels are (stage, affinity, guided filter, test-time augmentation,
            CRF); a run's is ``PseudoLabelPipeline.from_config(cfg)``. ``None``: the paper's
            defaults (``G-iter15``, no CRF).
        batch_size: images per forward pass; only consecutive images of equal size share a batch.
        skip_existing: skip ids whose PNG exists (resume).
        rank, world_size: id split; default from ``torch.distributed`` when initialised.

    Returns:
        The number of PNGs written by this call (summed over ranks).
    """
    pipeline = PseudoLabelPipeline() if pipeline is None else pipeline
    if not isinstance(pipeline, PseudoLabelPipeline):
        raise TypeError(f"pipeline must be a PseudoLabelPipeline, got {type(pipeline).__name__}")
    device = next(model.parameters()).device

    def per_batch(batch):
        return pipeline(model, *_to_device_batch(batch, device))

    return _run(model, dataset, out_dir, per_batch, batch_size=batch_size, skip_existing=skip_existing, rank=rank,
                world_size=world_size, progress=progress,
                desc=f"pseudo labels {pipeline.stage}" + (" + CRF" if pipeline.crf else ""))


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
    from sgwsss.crf import CRFParams

    params = (CRFParams() if crf_params is None else crf_params) if crf else None
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
