"""The localization-map stages compared in Table 1 of Ke & Hsu.

* ``A``: the network's localization maps (each present class min-max scaled to
  [0, 1], see :func:`normalize_maps`; bilinearly upsampled to the image);
* ``R``: ``A`` after the affinity random walk (Eq. 5) on a ``grid x grid`` grid;
* ``G-w/o-aff`` / ``G``: self-guided refinement (one iteration) of ``A`` / ``R``;
* ``G-iter15-w/o-aff`` / ``G-iter15``: the same with 15 iterations.

:func:`stage_pseudo_labels` turns any stage into pseudo labels (Eq. 11). Absent
classes (label 0) are zero in every stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgwsss.constants import AFFINITY_STAGES, STAGES
from sgwsss.refine.affinity import resize_to_grid
from sgwsss.refine.pseudo_label import pseudo_label
from sgwsss.refine.random_walk import random_walk
from sgwsss.refine.self_guided import self_guided_refine

__all__ = ["STAGES", "check_stage", "normalize_maps", "base_maps", "refine_maps", "refine_stage",
           "stage_pseudo_labels"]


_ITERATIONS = {"G-w/o-aff": 1, "G": 1, "G-iter15-w/o-aff": 15, "G-iter15": 15}


def normalize_maps(cam: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class min-max scaling: (B, C, h, w) -> (B, C, h, w) in [0, 1].

    ``(A^c - min A^c) / (max A^c - min A^c)`` for every class, 0 for constant maps and
    for absent classes (``labels == 0``; ``labels=None``: every class is present).

    Why not ReLU and division by the maximum (the usual CAM normalisation): the
    classification branch has a bias, and for classes that are rare in the training
    set it learns to keep the whole map negative. On the VOC sample, 32 of 146 present
    classes of 100 ``train`` images had a map with no positive value after the ``cpu``
    training, so ReLU-max gave them an all-zero map and Eq. 11 could never label them;
    min-max keeps their relative evidence (stage ``A``: 16.3 -> 22.4 mIoU there). The
    image-level label already says the class is present, so its strongest location is 1.
    """
    lo = cam.amin(dim=(2, 3), keepdim=True)
    span = cam.amax(dim=(2, 3), keepdim=True) - lo
    a = torch.where(span > 0, (cam - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    if labels is not None:
        a = a * (labels != 0).to(a.dtype)[:, :, None, None]
    return a


def _check_inputs(image, cam, labels):
    for name, t in (("image", image), ("cam", cam), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
    if cam.ndim != 4 or cam.shape[0] != image.shape[0]:
        raise ValueError(f"cam must have shape ({image.shape[0]}, C, h, w), got {tuple(cam.shape)}")
    if not cam.is_floating_point():
        raise TypeError(f"cam must be a floating point tensor, got {cam.dtype}")
    if labels.shape != cam.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(cam.shape[:2])}, got {tuple(labels.shape)}")


def check_stage(stage: str) -> None:
    """Raise a ``ValueError`` naming the valid stages unless ``stage`` is one of :data:`STAGES`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")


def base_maps(stage: str, image: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor,
              transition: torch.Tensor | None = None, grid: int = 50) -> torch.Tensor:
    """The maps a stage starts from, at the image size: ``A`` or ``R`` (B, C, H, W).

    ``A`` (stages ``A``, ``G-w/o-aff``, ``G-iter15-w/o-aff``): :func:`normalize_maps` of
    ``cam`` at the network's resolution, then bilinear upsampling to the image. ``R``
    (stages ``R``, ``G``, ``G-iter15``): the same normalised maps resampled to the
    ``grid x grid`` grid, one random-walk step ``T A`` (Eq. 5), then bilinear upsampling.
    Arguments as in :func:`refine_stage`.
    """
    check_stage(stage)
    _check_inputs(image, cam, labels)
    size = tuple(image.shape[-2:])
    a = normalize_maps(cam, labels)
    if stage not in AFFINITY_STAGES:
        return F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    n = int(grid) ** 2
    if transition is None:
        raise ValueError(
            f"stage {stage!r} needs the affinity transition matrix: pass transition of shape "
            f"({cam.shape[0]}, {n}, {n}) (N = grid * grid = {grid}**2)"
        )
    if not isinstance(transition, torch.Tensor) or transition.shape != (cam.shape[0], n, n):
        got = tuple(transition.shape) if isinstance(transition, torch.Tensor) else type(transition).__name__
        raise ValueError(f"transition must have shape ({cam.shape[0]}, {n}, {n}) for grid={grid}, got {got}")
    r = random_walk(transition, resize_to_grid(a, grid))
    return F.interpolate(r.to(a.dtype), size=size, mode="bilinear", align_corners=False)


def refine_maps(stage: str, image: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    """The stage's refinement of its :func:`base_maps`: none for ``A`` and ``R``; the self-guided
    refinement (:func:`self_guided_refine`, 1 or 15 iterations) for the ``G`` stages. (B, C, H, W)."""
    check_stage(stage)
    if "iterations" in kw:
        raise TypeError("the stage name sets the number of iterations; do not pass iterations")
    if stage in ("A", "R"):
        return maps
    return self_guided_refine(image, maps, iterations=_ITERATIONS[stage], labels=labels, **kw)


def refine_stage(stage: str, image: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor,
                 transition: torch.Tensor | None = None, grid: int = 50, **kw) -> torch.Tensor:
    """Class maps of one Table 1 stage at the image size: (B, C, H, W).

    ``image``: (B, 3, H, W) in [0, 1]; ``cam``: (B, C, h, w) raw localization maps
    (any h, w); ``labels``: (B, C) image-level labels; ``transition``: (B, N, N)
    with ``N = grid * grid`` (from :func:`sgwsss.refine.affinity.transition_matrix`),
    required by ``R``, ``G`` and ``G-iter15``. Extra keywords (``radius``, ``eps``,
    ``feedback``, ``skip_constant``) go to :func:`self_guided_refine`.
    :func:`refine_maps` of :func:`base_maps`.
    """
    return refine_maps(stage, image, base_maps(stage, image, cam, labels, transition, grid), labels, **kw)


def stage_pseudo_labels(stage: str, image: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor, *args,
                        **kw) -> torch.Tensor:
    """Pseudo labels (Eq. 11) of one Table 1 stage: (B, H, W) int64, 0 = background (arguments as in
    :func:`refine_stage`)."""
    return pseudo_label(refine_stage(stage, image, cam, labels, *args, **kw), labels)
