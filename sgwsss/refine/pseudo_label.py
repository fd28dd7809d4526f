"""Pseudo pixel labels from refined localization maps (Eq. 11 of Ke & Hsu)."""

from __future__ import annotations

import torch

from sgwsss.refine.otsu import otsu_threshold

__all__ = ["pseudo_label", "TIE_TOLERANCE"]

#: Firing classes whose refined values lie within this of the largest one are tied in Eq. 11 and the
#: first of them (lowest channel) wins. Inside two overlapping binary masks the guided filter returns
#: 1 for both classes in exact arithmetic, so without it float32 rounding (about 2e-6 here: the fused
#: CPU kernels, torch and the browser round differently) picked the winner: the package's own numba and
#: torch paths agreed on only 94-99% of a demo image's labels. 1e-4 also covers the float32 walk's
#: noise (4e-5 against float64) on stage R's maps.
TIE_TOLERANCE = 1e-4


def _check_labels(labels: torch.Tensor, b: int, c: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != (b, c):
        raise ValueError(f"labels must have shape ({b}, {c}) to match the maps, got {tuple(labels.shape)}")
    return labels != 0


def pseudo_label(refined: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 11 of Ke & Hsu: per-pixel labels from refined maps: (B, C, H, W), (B, C) -> (B, H, W) int64.

    For each present class ``c`` (``labels[b, c] != 0``) a pixel *fires* when
    ``refined^c > otsu(refined^c)`` (:func:`~sgwsss.refine.otsu.otsu_threshold`).
    Where at least one present class fires the label is ``1 + c`` for the firing
    class with the largest refined value; classes within :data:`TIE_TOLERANCE` of that
    value are tied and the first (lowest channel) wins, so the label does not depend on
    float32 rounding (which kernel ran, CPU or GPU, the book's browser code); elsewhere it is the
    background 0. Absent classes never appear, and an image without present
    classes is all background. Class ``c`` (0-based channel) is label ``c + 1``
    (VOC: channel 0 = aeroplane = 1).

    Eq. 11 has a single foreground/background threshold ``tau`` "determined by Otsu's
    method" without saying of which values; one Otsu threshold per present class's map
    (as Sec. 3.3 binarises each ``R^c``) is this package's reading, an interpretation.
    """
    if not isinstance(refined, torch.Tensor):
        raise TypeError(f"refined must be a torch.Tensor, got {type(refined).__name__}")
    if refined.ndim != 4:
        raise ValueError(f"refined must have shape (B, C, H, W), got {tuple(refined.shape)}")
    if not refined.is_floating_point():
        raise TypeError(f"refined must be a floating point tensor, got {refined.dtype}")
    b, c = refined.shape[:2]
    present = _check_labels(labels, b, c).to(refined.device)
    refined = refined.detach()
    out = torch.zeros((b, *refined.shape[2:]), dtype=torch.int64, device=refined.device)
    for i in range(b):  # only the present classes' maps are read (absent classes never fire)
        idx = torch.nonzero(present[i]).flatten()
        if idx.numel() == 0:
            continue
        maps = refined[i, idx]
        fire = maps > otsu_threshold(maps[None])[0][:, None, None]
        values = maps.masked_fill(~fire, float("-inf"))
        near = values >= values.amax(dim=0) - TIE_TOLERANCE  # the largest firing value's ties
        best = near.to(torch.uint8).argmax(dim=0)  # the first of them (torch returns the first maximum)
        out[i] = torch.where(fire.any(dim=0), idx[best] + 1, 0)
    return out
