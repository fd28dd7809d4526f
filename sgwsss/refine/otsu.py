"""Otsu thresholds of many maps at once, identical to ``skimage.filters.threshold_otsu``.

The self-guided refinement binarises every localization map with its Otsu
threshold (Ke & Hsu, Sec. 3.3 and Eq. 11). :func:`otsu_threshold` reproduces
scikit-image's float path bit for bit: 256 equal bins spanning ``[min, max]`` of
each map, with numpy's bin edges (``linspace`` in the map's dtype) and numpy's
edge-exact bin assignment, the bin centres as thresholds, and the between-class
variance evaluated with the same float32 running sums. The per-pixel work (range,
bin index, histogram) is batched on the maps' device; the 256-bin search runs on
the (n_maps, 256) histograms with numpy.

Constant maps (including all-zero maps of absent classes): the threshold is the
constant value itself, as in scikit-image (never NaN), so ``map > threshold`` is
empty. Maps must be finite: a NaN or infinite value raises ``ValueError`` (one +Inf
pixel would otherwise make the threshold NaN and the class vanish); the check is
folded into the pass that finds each map's range.
"""

from __future__ import annotations

import numpy as np
import torch

from sgwsss.refine import _cpu_kernels

__all__ = ["otsu_threshold", "binarize"]


def _histograms(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, nbins: int):
    """x (M, N) non-constant rows with their min/max -> counts (M, nbins) int64, edges (M, nbins+1).

    The bins are numpy's: edges ``linspace(lo, hi, nbins + 1)`` in x's dtype, pixel ``v``
    in bin ``i`` iff ``edges[i] <= v < edges[i+1]`` (the last bin includes ``hi``).
    """
    m = x.shape[0]
    span = hi - lo
    # numpy.linspace(lo, hi, nbins + 1, dtype=x.dtype): i * (span / nbins) + lo, last = hi
    step = span / nbins
    edges0 = torch.arange(nbins + 1, device=x.device, dtype=x.dtype)[None, :] * step[:, None]
    edges = edges0 + lo[:, None]
    edges[:, -1] = hi
    if x.device.type == "cpu" and _cpu_kernels.available():  # the same bins (edges i * step + lo) in one pass
        counts = _cpu_kernels.histograms(x.contiguous().numpy(), lo.numpy(), (nbins / span).numpy(), step.numpy(),
                                         nbins)
        return torch.from_numpy(counts), edges
    # A bin estimate t within +-1 of the true bin, then numpy's fix-up against the edges.
    # The edges are recomputed exactly as linspace does (fl(fl(t * step) + lo)), so no gathers.
    t = torch.sub(x, lo[:, None]).mul_((nbins / span)[:, None]).trunc_().clamp_(0, nbins - 1)
    e = torch.mul(t, step[:, None]).add_(lo[:, None])  # edges[t]
    flag = torch.lt(x, e, out=torch.empty_like(x))
    t.sub_(flag)
    torch.add(t, 1, out=e).mul_(step[:, None]).add_(lo[:, None])  # edges[t + 1] (t < nbins - 1)
    t.add_(torch.ge(x, e, out=flag)).clamp_(max=nbins - 1)  # the last bin includes hi
    del e, flag
    idx = t.to(torch.int64)
    idx += torch.arange(m, device=x.device)[:, None] * nbins
    counts = torch.bincount(idx.flatten(), minlength=m * nbins).view(m, nbins)
    return counts, edges


def _otsu_from_histograms(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """scikit-image's Otsu search, row-wise: counts (M, nbins), edges (M, nbins+1) -> (M,)."""
    counts = counts.astype(np.float32)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2.0
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # empty leading/trailing bins: 0/0, as in skimage
        mean1 = np.cumsum(counts * centers, axis=1) / weight1
        mean2 = (np.cumsum((counts * centers)[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
    variance12 = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    idx = np.argmax(variance12, axis=1)
    return centers[np.arange(len(idx)), idx]


def otsu_threshold(maps: torch.Tensor, nbins: int = 256) -> torch.Tensor:
    """Otsu threshold of each map: (B, K, H, W) or (B, K, N) -> (B, K).

    Equals ``skimage.filters.threshold_otsu(maps[b, k], nbins=nbins)`` for every map
    (same dtype; float16/bfloat16 maps are processed as float32). A constant map's
    threshold is its value. Raises ``ValueError`` if a map holds NaN or +-Inf.
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim not in (3, 4):
        raise ValueError(f"maps must have shape (B, K, H, W) or (B, K, N), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a floating point tensor, got {maps.dtype}")
    if int(nbins) != nbins or nbins < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    b, k = maps.shape[:2]
    x = maps.detach().reshape(b * k, -1)
    if x.shape[1] == 0:
        raise ValueError(f"maps must have at least one pixel, got shape {tuple(maps.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.device.type == "cpu" and _cpu_kernels.available():  # one parallel pass, also for a single map
        lo, hi, finite = (torch.from_numpy(v) for v in _cpu_kernels.minmax(x.contiguous().numpy(), with_finite=True))
    else:
        lo, hi = torch.aminmax(x, dim=1)  # NaN propagates: a row with NaN or +-Inf has a non-finite end
        finite = torch.isfinite(lo) & torch.isfinite(hi)
    if not bool(finite.all()):
        first = int(torch.nonzero(~finite.cpu())[0])
        raise ValueError(f"maps must be finite: map {divmod(first, k)} (of shape (B, K) = {(b, k)}) holds NaN "
                         "or infinite values")
    thresholds = lo.clone()  # constant maps: the value itself
    rows = torch.nonzero(lo != hi).flatten()
    if rows.numel() > 0:
        if rows.numel() == x.shape[0]:
            counts, edges = _histograms(x, lo, hi, int(nbins))
        else:
            counts, edges = _histograms(x[rows], lo[rows], hi[rows], int(nbins))
        t = _otsu_from_histograms(counts.cpu().numpy(), edges.cpu().numpy())
        thresholds[rows] = torch.from_numpy(t).to(device=x.device, dtype=x.dtype)
    return thresholds.view(b, k)


def binarize(maps: torch.Tensor, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """``maps > threshold`` per map as ``maps``' dtype (0/1): (B, K, H, W) -> (B, K, H, W).

    ``thresholds`` (B, K) defaults to :func:`otsu_threshold` of ``maps``.
    """
    if thresholds is None:
        thresholds = otsu_threshold(maps)
    if maps.ndim != 4 or thresholds.shape != maps.shape[:2]:
        raise ValueError(
            f"maps must be (B, K, H, W) and thresholds (B, K), got {tuple(maps.shape)} and {tuple(thresholds.shape)}"
        )
    return (maps > thresholds[:, :, None, None].to(maps.dtype)).to(maps.dtype)
