"""Self-guided refinement: Otsu binarisation + guided filter with the image as guide.

Sec. 3.3 of Ke & Hsu: each present class map of the random walk's output ``R^c`` is
binarised with its Otsu threshold, ``B^c = [R^c > otsu(R^c)]`` (the map ``A^c`` itself in
Table 1's w/o-aff stages), and filtered by the guided filter
(:mod:`sgwsss.refine.guided_filter`, Eqs. 6-8) with the training image as
guide, which moves the map's edges onto the image's edges. Table 1 also iterates
this step (``G-iter15``).

Two paths give the same result (to ~1e-6; the thresholds are Otsu's of the path's
own maps): on the CPU with numba, float32 maps and a colour image, the whole
refinement of an image runs in :func:`sgwsss.refine._cpu_kernels.refine_maps`
(guide statistics once, Otsu's range taken from the filter's last pass, the mask
binarised inside the filter's first pass, preallocated buffers, maps spread over
the threads); otherwise :class:`~sgwsss.refine.guided_filter.GuidedFilter` and
:func:`~sgwsss.refine.otsu.otsu_threshold` run iteration by iteration (torch,
e.g. on a GPU).
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np
import torch

from sgwsss.refine import _cpu_kernels
from sgwsss.refine.guided_filter import GuidedFilter, _check_eps, _check_radius, _workspaces
from sgwsss.refine.otsu import otsu_threshold

__all__ = ["self_guided_refine", "FEEDBACK_MODES", "TIMING_PARTS"]

FEEDBACK_MODES = ("binary", "filtered")

#: keys of ``self_guided_refine(..., timings=dict)``: seconds spent on the guide statistics, on Otsu's
#: thresholds (range, histogram, search), in the guided filtering, and on everything else
TIMING_PARTS = ("statistics", "otsu", "filter", "other")


def self_guided_refine(
    image: torch.Tensor,
    maps: torch.Tensor,
    iterations: int = 1,
    radius: int = 17,
    eps: float = 1e-6,
    labels: torch.Tensor | None = None,
    feedback: str = "binary",
    skip_constant: bool = True,
    threshold: float | None = None,
    timings: dict | None = None,
) -> torch.Tensor:
    """Self-guided refinement of the present class maps: (B, C, H, W) -> (B, C, H, W).

    ``image``: (B, 3, H, W) in [0, 1] (a (B, 1, H, W) grey guide also works);
    ``maps``: (B, C, H, W) localization maps at the image size (e.g. C = 20 VOC
    classes); ``labels``: (B, C) image-level labels (non-zero = present; ``None``:
    every class is present). Absent classes come out as zeros. ``radius = 17``
    (window 35) and ``eps = 1e-6`` are the paper's settings.

    With ``Q^0 = A`` (the input map) and ``GF`` the guided filter guided by the image,
    iteration ``t = 1 .. iterations`` computes:

    * ``feedback="binary"`` (default, the paper's procedure read as "binarise, then
      filter", repeated): ``Q^t = GF([Q^{t-1} > otsu(Q^{t-1})])``, i.e. every
      iteration re-binarises the previous output with its own Otsu threshold;
    * ``feedback="filtered"``: ``Q^1`` as above, then ``Q^t = GF(Q^{t-1})`` (the
      filtered map itself is filtered again, no re-binarisation).

    ``threshold=None`` binarises with each map's Otsu threshold (the paper); a number
    uses that fixed threshold instead, for every map and iteration (for exploring).

    The result is ``Q^iterations`` (continuous values, typically in [0, 1]); one
    iteration is the ``G`` row of Table 1, 15 the ``G-iter15`` row. The guide
    statistics are computed once per image. ``skip_constant`` skips pixels whose
    neighbourhood is constant in the filter's binary input (exact; see
    :func:`~sgwsss.refine.guided_filter.guided_filter`).

    The image and the present maps must be finite and ``eps`` a finite number > 0:
    otherwise ``ValueError`` names the argument. ``timings``: a dict to which the
    seconds of :data:`TIMING_PARTS` are added (for benchmarks).
    """
    present = _check_arguments(image, maps, iterations, radius, eps, labels, feedback, threshold)
    start = time.perf_counter()
    parts = dict.fromkeys(TIMING_PARTS, 0.0)
    fused = (_cpu_kernels.available() and image.device.type == "cpu" and image.shape[1] == 3
             and maps.dtype == torch.float32)
    out = _zeros_like(maps)
    refine = _refine_fused if fused else _refine_torch
    with torch.no_grad():
        for i in range(maps.shape[0]):
            idx = torch.nonzero(present[i]).flatten()
            if idx.numel():
                refine(image[i : i + 1], maps[i : i + 1], out[i : i + 1], idx, int(iterations), int(radius),
                       float(eps), feedback == "filtered", bool(skip_constant), threshold, parts, i)
    if timings is not None:
        parts["other"] = time.perf_counter() - start - sum(parts[k] for k in TIMING_PARTS[:3])
        for k in TIMING_PARTS:
            timings[k] = timings.get(k, 0.0) + parts[k]
    return out


def _zeros_like(maps: torch.Tensor) -> torch.Tensor:
    """A C-contiguous zero tensor like ``maps``. On the CPU from calloc (numpy): fresh zero pages, so the
    channels of absent classes, never written, cost no page faults (torch.zeros writes all of them:
    ~7 ms for a (1, 20, 500, 375) float32 tensor)."""
    if maps.device.type == "cpu" and maps.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.zeros(tuple(maps.shape), dtype=np.float32 if maps.dtype == torch.float32
                                         else np.float64))
    return torch.zeros(maps.shape, dtype=maps.dtype, device=maps.device)


def _check_arguments(image, maps, iterations, radius, eps, labels, feedback, threshold) -> torch.Tensor:
    """Validates the arguments of :func:`self_guided_refine`; returns the (B, C) bool mask of present classes."""
    if not isinstance(image, torch.Tensor) or not isinstance(maps, torch.Tensor):
        raise TypeError("image and maps must be torch.Tensors")
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating point tensor (values in [0, 1]), got {image.dtype}")
    if maps.ndim != 4 or maps.shape[0] != image.shape[0] or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"maps must have shape (B, C, H, W) = ({image.shape[0]}, C, {image.shape[2]}, {image.shape[3]}) "
            f"to match image {tuple(image.shape)}, got {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a floating point tensor, got {maps.dtype}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    _check_radius(radius)
    _check_eps(eps)
    if feedback not in FEEDBACK_MODES:
        raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not math.isfinite(threshold)):
        raise ValueError(f"threshold must be None (Otsu) or a finite number, got {threshold!r}")
    b, c = maps.shape[:2]
    if labels is None:
        return torch.ones(b, c, dtype=torch.bool, device=maps.device)
    if not isinstance(labels, torch.Tensor) or labels.shape != (b, c):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({b}, {c}) tensor, got {got}")
    return (labels != 0).to(maps.device)


def _refine_fused(image, maps, out, idx, iterations, radius, eps, filtered, skip, threshold, parts, b) -> None:
    """Image ``b`` through the fused CPU kernels; writes ``out[0, idx]``."""
    index = idx.tolist()
    dst = out[0].numpy()
    src = maps[0].detach().contiguous().numpy()
    for c in index:  # numpy copies: torch's out[0, idx] = maps[0, idx] took ~14 ms per map
        dst[c] = src[c]
    _cpu_kernels.prepare_threads(torch.get_num_threads())
    guide = image[0].detach().to(torch.float32).contiguous().numpy()
    times = np.zeros(4)
    status = _cpu_kernels.refine_maps(dst, index, guide, radius, eps, iterations, threshold, filtered, skip,
                                      _workspaces()[1], times)
    for k, v in zip(TIMING_PARTS, times):
        parts[k] += float(v)
    if status is not None:
        what, n = status
        if what == "image":
            raise ValueError(f"image must be finite: image {b} holds NaN or infinite values ({n} rows)")
        if what == "eps":
            raise ValueError(f"eps={eps!r} is too small for this image: the regularised covariance of {n} windows "
                             "cannot be inverted")
        raise ValueError(f"maps must be finite: map (b, c) = {(b, n)} holds NaN or infinite values")


def _refine_torch(image, maps, out, idx, iterations, radius, eps, filtered, skip, threshold, parts, b) -> None:
    """Image ``b`` through :class:`GuidedFilter` and :func:`otsu_threshold`, iteration by iteration."""
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"image must be finite: image {b} holds NaN or infinite values")
    q = maps[:, idx]
    if not bool(torch.isfinite(q).all()):
        bad = idx[~torch.isfinite(q[0]).flatten(1).all(1)][0]
        raise ValueError(f"maps must be finite: map (b, c) = {(b, int(bad))} holds NaN or infinite values")
    t0 = time.perf_counter()
    gf = GuidedFilter(image, radius, eps)
    parts["statistics"] += time.perf_counter() - t0
    for t in range(iterations):
        t0 = time.perf_counter()
        binary = t == 0 or not filtered
        if binary:  # float32 maps: the mask goes to the filter as a bool tensor
            p = q > (otsu_threshold(q)[:, :, None, None] if threshold is None else float(threshold))
            p = p if maps.dtype == torch.float32 else p.to(maps.dtype)
        else:
            p = q
        t1 = time.perf_counter()
        q = gf(p, skip_constant=skip and binary).to(maps.dtype)
        parts["otsu"] += t1 - t0
        parts["filter"] += time.perf_counter() - t1
    out[0, idx] = q[0]
