"""Guided filter with a colour (or grey) guide (Sec. 3.3 and Eqs. 6-10 of Ke & Hsu; He et al.'s filter).

The self-guided refinement filters every localization map ``p`` with the image
``I`` as guide. In each ``(2r+1) x (2r+1)`` window ``w_k`` the output is a linear
function of the guide colour, ``q_i = a_k^T I_i + b_k`` (Eq. 6, ``G_p = alpha_p I_p +
beta_p``). He et al.'s closed form of the coefficients, which Eqs. 7-8 express as a
kernel (``G_p = sum_q K_pq(I) B_q``), is

* ``a_k = (Sigma_k + eps U)^-1 (mean_k(I p) - mu_k mean_k(p))``,
* ``b_k = mean_k(p) - a_k^T mu_k``,

where ``mu_k`` and ``Sigma_k`` are the mean and the full 3 x 3 covariance of the
guide in ``w_k`` and ``U`` the identity. Every pixel lies in many windows, so the
coefficients are averaged: ``q_i = mean_{k in w_i}(a_k)^T I_i + mean_{k in w_i}(b_k)``.
:func:`sgwsss.refine.guided_filter_reference.reference_guided_filter` is the same
in plain float64 numpy, for tests and benchmarks.

API: :func:`guided_filter` is the operator; :class:`GuidedFilter` is the cache
around it (the guide statistics, computed once per image by :func:`guide_statistics`,
reused by every map and iteration).

Border handling: windows are clipped to the image and every mean divides by the
number of pixels actually inside the clipped window (He's reference code). OpenCV's
``cv2.ximgproc.guidedFilter`` instead reflects the image at the border, so the two
agree only in the interior (``radius`` pixels or more from the border).

Inputs must be finite: a NaN or infinite value in ``guide`` or ``src`` (it would turn
every output pixel within ``2 r`` of it into NaN, and most maps into NaN through the
running sums) raises ``ValueError`` naming the argument, as does ``eps`` that is not a
finite positive number, or so small that a window's regularised covariance cannot be
inverted. The checks are folded into passes that read the values anyway.

Numerics. At ``eps = 1e-6`` the 3 x 3 solve has condition numbers up to ~1e5 and the
covariances are differences of numbers ~1e6 times larger than themselves, so a naive
float32 implementation (box sums as differences of running sums, as in OpenCV's
float32 filter) is off by up to ~1.1 on real photographs. Here

* the guide statistics (``mu_k``, ``(Sigma_k + eps U)^-1``) are computed once per image
  in float64;
* every box sum keeps its rounding relative to the window sum, not to a whole row's
  sum (torch path: cumulative sums of ``x_j - x_{j-2r-1}``, on CPU accumulated in double,
  on other devices the per-map path runs in float64; numba path: differences of
  float64 prefix sums of one row, float64 column sums);
* the per-map path stays in float32 on CPU, and all maps of an image are filtered
  with the same guide statistics.

Speed. On the CPU, when numba is installed, the guide statistics, the four passes per
map, the ``skip_constant`` bounding box and Otsu's histograms run as fused kernels
(:mod:`sgwsss.refine._cpu_kernels`); ``backend="torch"`` forces the torch path, which
gives the same result to ~1e-6 and is the one used on GPUs. The cost does not depend
on the radius. ``benchmarks/guided_filter.py`` measures speed and accuracy against a
float64 reference and OpenCV.

The filter is linear in ``p`` (Eqs. 9-10 back-propagate through it: ``dq_i / dp_j`` is
the filter weight ``W_ij``). With clipped windows ``W = diag(1 / n) C`` with ``C``
symmetric, so the gradient ``W^T g`` is computed by the same filter: ``n * filter(g / n)``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from sgwsss.refine import _cpu_kernels

__all__ = [
    "window_counts",
    "box_sum",
    "GuideStatistics",
    "guide_statistics",
    "GuidedFilter",
    "guided_filter",
    "BACKENDS",
]

#: ``backend=...``: ``"auto"`` uses the fused numba kernels for colour guides on the CPU when numba
#: is installed and the torch path otherwise; ``"torch"`` / ``"numba"`` force one.
BACKENDS = ("auto", "torch", "numba")

# Packed upper triangle of a symmetric 3 x 3 matrix: (00, 01, 02, 11, 12, 22).
_SYM3 = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
# Row c of the full matrix as indices into the packed vector.
_SYM3_ROWS = ((0, 1, 2), (1, 3, 4), (2, 4, 5))

_local = threading.local()  # per-thread scratch buffers (reused across calls: no page faults per call)


def _workspaces():
    if not hasattr(_local, "torch"):
        _local.torch = _Workspace()
        _local.numba = _cpu_kernels.Workspace()
    return _local.torch, _local.numba


def _check_radius(radius) -> int:
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    return int(radius)


def _check_eps(eps) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return value


def _not_finite(name: str, what: str = "") -> ValueError:
    return ValueError(f"{name} must be finite: it holds NaN or infinite values{what}")


def _singular(eps: float, windows: int) -> ValueError:
    return ValueError(f"eps={eps!r} is too small for this guide: the regularised covariance of {windows} windows "
                      "is not positive definite in floating point (use the paper's 1e-6 or larger)")


def window_counts(
    height: int, width: int, radius: int, *, dtype: torch.dtype = torch.float64, device=None
) -> torch.Tensor:
    """Number of pixels in each clipped ``(2r+1) x (2r+1)`` window: (H, W)."""
    radius = _check_radius(radius)
    i = torch.arange(height, device=device)
    j = torch.arange(width, device=device)
    nh = (i + radius).clamp(max=height - 1) - (i - radius).clamp(min=0) + 1
    nw = (j + radius).clamp(max=width - 1) - (j - radius).clamp(min=0) + 1
    return (nh[:, None] * nw[None, :]).to(dtype)


def _use_kernel(backend: str, guide: torch.Tensor) -> bool:
    """Whether the numba kernels run for this guide (see :data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ok = guide.device.type == "cpu" and guide.shape[1] == 3
    if backend == "numba" and not (ok and _cpu_kernels.available()):
        why = "numba is not installed" if not _cpu_kernels.available() else "it needs a colour guide on the CPU"
        raise RuntimeError(f"backend='numba' is unavailable: {why}; use backend='torch' or 'auto'")
    return backend != "torch" and ok and _cpu_kernels.available()


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    # torch's CPU cumsum accumulates float32 in double; CUDA/MPS accumulate in float32.
    if x.device.type == "cpu" or x.dtype == torch.float64:
        return x.dtype
    return torch.float64


def _box_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    w = 2 * radius + 1
    pad = [0, 0] * (x.ndim - (dim % x.ndim) - 1) + [w, radius]
    xp = torch.nn.functional.pad(x, pad)
    diff = xp.narrow(dim, w, length + radius) - xp.narrow(dim, 0, length + radius)
    acc = _accumulate_dtype(x)
    c = diff.cumsum(dim, dtype=acc) if acc != x.dtype else diff.cumsum(dim)
    return c.narrow(dim, radius, length).to(x.dtype)


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sums over clipped ``(2r+1) x (2r+1)`` windows of the last two dims: (..., H, W) -> (..., H, W).

    Windows are clipped to the image (zero padding). The sums are cumulative sums of
    ``x_j - x_{j-2r-1}``, so rounding errors are relative to the window sums; the
    cost is independent of ``radius``. Functional (differentiable) version of the
    buffered sums inside :func:`guided_filter`'s torch path.
    """
    radius = _check_radius(radius)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    return _box_1d(_box_1d(x, radius, -1), radius, -2)


@dataclass(frozen=True)
class GuideStatistics:
    """Per-window guide statistics (float64), computed once per image by :func:`guide_statistics`.

    ``mean``: (B, C, H, W) window means ``mu_k``; ``inverse``: (B, P, H, W) the
    inverse of ``Sigma_k + eps U`` (C = 3: packed upper triangle 00, 01, 02, 11, 12,
    22; C = 1: ``1 / (var_k + eps)``); ``counts``: (H, W) clipped window sizes;
    ``guide``: the float64 guide. ``cache`` holds forms derived from them (per compute
    dtype) for the filter's two paths.
    """

    radius: int
    eps: float
    guide: torch.Tensor
    mean: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def _inverse_sym3(s):
    """Inverses and determinants of symmetric 3 x 3 matrices given as the packed (00, 01, 02, 11, 12, 22) list."""
    *adjugate, det = _cpu_kernels.adjugate_sym3(*s)
    return torch.stack(adjugate, 1) / det[:, None], det


def _check_guide(guide: torch.Tensor, name: str = "guide") -> None:
    if not isinstance(guide, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(guide).__name__}")
    if guide.ndim != 4 or guide.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(guide.shape)}")
    if not guide.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor (values in [0, 1]), got {guide.dtype}")


def _statistics_numba(g: torch.Tensor, radius: int, eps: float):
    """The kernel path of :func:`guide_statistics`: float64 mean / inverse, and the float32 forms of the filter."""
    b, _, h, w = g.shape
    inv_nh, inv_nw = _cpu_kernels.window_lengths(h, radius), _cpu_kernels.window_lengths(w, radius)
    guide32 = g.float().contiguous()
    means, inverses, compact = [], [], []
    for i in range(b):
        mu, icn, mean, inverse, (bad, singular) = _cpu_kernels.guide_stats(
            g[i].numpy(), radius, eps, inv_nh, inv_nw, np.float32, want64=True)
        if bad:
            raise _not_finite("guide", f" ({bad} rows of image {i})")
        if singular:
            raise _singular(eps, singular)
        means.append(mean)
        inverses.append(inverse)
        compact.append((guide32[i].numpy(), mu, icn))
    mean, inverse = torch.from_numpy(np.stack(means)), torch.from_numpy(np.stack(inverses))
    return mean, inverse, {("numba", torch.float32): (compact, inv_nh, inv_nw)}


def guide_statistics(guide: torch.Tensor, radius: int = 17, eps: float = 1e-6, backend: str = "auto") -> GuideStatistics:
    """Window means and inverse regularised covariances of the guide, in float64.

    ``guide``: (B, C, H, W) with C = 3 (colour, full covariance) or C = 1 (grey),
    finite values (typically in [0, 1]). These are the guide-only parts of He et al.'s
    closed form (``mu_k``, ``(Sigma_k + eps U)^-1``), shared by all maps of the image
    and all refinement iterations. ``backend`` as in :func:`guided_filter`.
    """
    _check_guide(guide)
    radius, eps = _check_radius(radius), _check_eps(eps)
    g = guide.detach().to(torch.float64)
    b, c, h, w = g.shape
    counts = window_counts(h, w, radius, device=g.device)
    if _use_kernel(backend, g):
        g = g.contiguous()
        mean, inverse, cache = _statistics_numba(g, radius, eps)
        return GuideStatistics(radius, eps, g, mean, inverse, counts, cache)
    if not bool(torch.isfinite(g).all()):
        raise _not_finite("guide")
    inv_n = 1.0 / counts
    mean = box_sum(g, radius) * inv_n
    if c == 1:
        det = box_sum(g * g, radius) * inv_n - mean * mean + eps
        inverse = 1.0 / det
    else:
        prods = torch.stack([g[:, i] * g[:, j] for i, j in _SYM3], 1)
        second = box_sum(prods, radius) * inv_n
        cov = [
            second[:, t] - mean[:, i] * mean[:, j] + (eps if i == j else 0.0)
            for t, (i, j) in enumerate(_SYM3)
        ]
        inverse, det = _inverse_sym3(cov)
    invertible = (det > 0) & torch.isfinite(inverse).all(1, keepdim=c == 1)
    if not bool(invertible.all()):  # as the kernel: a determinant that is not positive, or an overflow
        raise _singular(eps, int((~invertible).sum()))
    return GuideStatistics(radius, eps, g, mean, inverse, counts)


def guided_filter(
    guide: torch.Tensor,
    src: torch.Tensor,
    radius: int = 17,
    eps: float = 1e-6,
    *,
    statistics: GuideStatistics | None = None,
    skip_constant: bool = False,
    backend: str = "auto",
    max_maps: int = 8,
) -> torch.Tensor:
    """Guided filter of the maps ``src`` with ``guide`` (Eq. 6 of Ke & Hsu, He et al.'s closed form).

    Args:
        guide: (B, 3, H, W) colour guide (full 3 x 3 covariances) or (B, 1, H, W) grey
            guide, finite values (typically an image in [0, 1]).
        src: (B, K, H, W) maps, filtered independently (K may be 1); float, or bool
            (binary masks, filtered as 0/1 maps: float32 result, no autograd). Finite values.
        radius: window radius ``r`` (window ``2r + 1``; the paper's 35 is ``r = 17``).
        eps: regulariser, a finite number > 0 (the paper's ``1e-6`` for guides in [0, 1]).
        statistics: :func:`guide_statistics` of ``guide`` with this radius and eps,
            to reuse across calls (what :class:`GuidedFilter` does); computed if None.
        skip_constant: return ``src`` unchanged, without computing, where the map is
            constant over the ``(4r+1) x (4r+1)`` neighbourhood (there ``a_k = 0`` and
            ``b_k = p``, so the exact output equals the input): only the bounding box of
            the non-constant part (plus margins) is filtered, which saves work on binary maps.
        backend: one of :data:`BACKENDS`.
        max_maps: how many maps the torch path filters at once (scratch memory).

    Returns:
        (B, K, H, W) in ``src``'s dtype (float32 for bool ``src``). Differentiable with
        respect to ``src`` (not the guide). On CPU the per-map path runs in float32
        (float64 for float64 ``src``); on other devices in float64.

    Raises:
        ValueError: non-finite ``guide`` or ``src``, ``eps`` not finite or > 0, shapes.
    """
    if statistics is None:
        statistics = guide_statistics(guide, radius, eps, backend)
    elif (statistics.radius, statistics.eps) != (_check_radius(radius), _check_eps(eps)):
        raise ValueError(f"statistics were computed with radius={statistics.radius}, eps={statistics.eps}, "
                         f"not radius={radius}, eps={eps}")
    kernel = _use_kernel(backend, statistics.guide)
    _check_src(src, statistics)
    opts = (bool(skip_constant), kernel, max(int(max_maps), 1))
    if src.dtype == torch.bool:  # binary masks: filtered as 0/1 maps, float32 result
        with torch.no_grad():
            return _filter(src, statistics, *opts)
    return _GuidedFilterFunction.apply(src, statistics, opts)


class GuidedFilter:
    """The cache around :func:`guided_filter`: the guide statistics of one image, for many maps and iterations.

    ``GuidedFilter(guide, radius, eps)`` computes :func:`guide_statistics` once;
    ``gf(src, skip_constant=False)`` is ``guided_filter(guide, src, radius, eps,
    statistics=gf.stats, ...)``: ``src`` (B, K, H, W) -> (B, K, H, W). ``backend`` and
    ``max_maps`` as in :func:`guided_filter`; ``backend`` here reports the path that runs
    (``"numba"`` or ``"torch"``).
    """

    def __init__(self, guide: torch.Tensor, radius: int = 17, eps: float = 1e-6, max_maps: int = 8,
                 backend: str = "auto"):
        self.stats = guide_statistics(guide, radius, eps, backend)
        self.radius = self.stats.radius
        self.eps = self.stats.eps
        self.max_maps = max(int(max_maps), 1)
        self.backend = "numba" if _use_kernel(backend, self.stats.guide) else "torch"

    @property
    def shape(self):
        return tuple(self.stats.guide.shape)

    def __call__(self, src: torch.Tensor, skip_constant: bool = False) -> torch.Tensor:
        return guided_filter(self.stats.guide, src, self.radius, self.eps, statistics=self.stats,
                             skip_constant=skip_constant, backend=self.backend, max_maps=self.max_maps)


# ---------------------------------------------------------------------- internals
def _check_src(src, stats: GuideStatistics) -> None:
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"src must be a torch.Tensor, got {type(src).__name__}")
    b, _, h, w = stats.guide.shape
    if src.ndim != 4 or src.shape[0] != b or tuple(src.shape[-2:]) != (h, w):
        raise ValueError(f"src must have shape ({b}, K, {h}, {w}) to match the guide, got {tuple(src.shape)}")
    if not (src.is_floating_point() or src.dtype == torch.bool):
        raise TypeError(f"src must be a floating point (or bool) tensor, got {src.dtype}")
    if src.device != stats.guide.device:
        raise ValueError(f"src is on {src.device} but the guide is on {stats.guide.device}")


class _GuidedFilterFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, stats, opts):
        ctx.stats, ctx.opts = stats, opts
        return _filter(src, stats, *opts)

    @staticmethod
    def backward(ctx, grad):
        # W = diag(1/n) C with C symmetric  =>  W^T g = n * W (g / n)   (Eqs. 9-10)
        n = ctx.stats.counts.to(device=grad.device, dtype=grad.dtype)
        _, kernel, max_maps = ctx.opts
        return _GuidedFilterFunction.apply(grad / n, ctx.stats, (False, kernel, max_maps)) * n, None, None


def _compute_dtype(src: torch.Tensor) -> torch.dtype:
    if src.dtype == torch.float64 or src.device.type != "cpu":
        return torch.float64
    return torch.float32


def _filter(src: torch.Tensor, stats: GuideStatistics, skip_constant: bool, kernel: bool, max_maps: int):
    r = stats.radius
    b, k, h, w = src.shape
    dtype = _compute_dtype(src)
    out_dtype = torch.float32 if src.dtype == torch.bool else src.dtype
    src = src.detach()
    box = None
    if skip_constant:
        box = _active_region(src, r)
        if box is None:
            if src.is_floating_point() and not bool(torch.isfinite(src).all()):
                raise _not_finite("src")
            return src.to(out_dtype, copy=True)
        if box[1] == (0, h, 0, w):
            box = None
        elif src.is_floating_point() and not bool(torch.isfinite(src).all()):
            raise _not_finite("src")  # values outside the box are not read by the filter
    if kernel:
        return _filter_kernel(src, stats, box, dtype).to(out_dtype)
    if src.is_floating_point() and box is None and not bool(torch.isfinite(src).all()):
        raise _not_finite("src")
    return _filter_torch(src, stats, box, dtype, max_maps).to(out_dtype)


# ---------------------------------------------------------------------- numba path
def _kernel_stats(stats: GuideStatistics, dtype: torch.dtype):
    """Per-image (guide, mu, icn = inverse / n) numpy arrays in the compute dtype, and the inverse window lengths."""
    key = ("numba", dtype)
    if key not in stats.cache:
        h, w = stats.counts.shape
        icn = (stats.inverse / stats.counts).to(dtype)
        compact = [(stats.guide[i].to(dtype).contiguous().numpy(), stats.mean[i].to(dtype).contiguous().numpy(),
                    icn[i].contiguous().numpy()) for i in range(stats.guide.shape[0])]
        lengths = (_cpu_kernels.window_lengths(h, stats.radius), _cpu_kernels.window_lengths(w, stats.radius))
        stats.cache[key] = (compact, *lengths)
    return stats.cache[key]


def _filter_kernel(src: torch.Tensor, stats: GuideStatistics, box, dtype) -> torch.Tensor:
    """The numba path of :func:`guided_filter`: each image's maps through the fused passes."""
    compact, inv_nh, inv_nw = _kernel_stats(stats, dtype)
    _cpu_kernels.prepare_threads(torch.get_num_threads())
    out = torch.empty(src.shape, dtype=dtype) if box is None else src.to(dtype, copy=True)
    crop_and_output = None if box is None else (box[1], box[0])
    ws = _workspaces()[1]
    for i in range(src.shape[0]):
        p = src[i]
        p = p.view(torch.uint8) if p.dtype == torch.bool else p if p.dtype in (torch.float32, torch.float64) \
            else p.float()
        bad = _cpu_kernels.filter_maps(p.contiguous().numpy(), *compact[i], inv_nh, inv_nw, stats.radius,
                                       out[i].numpy(), crop_and_output, ws)
        if bad:
            raise _not_finite("src", f" (map {(i, bad - 1)})")
    return out


# ---------------------------------------------------------------------- torch path
class _Workspace:
    """Flat scratch tensors reused across calls (no page faults per iteration).

    ``get`` also reports whether the buffer's view changed since its last use, so
    zero padding is rewritten only when needed.
    """

    def __init__(self):
        self._flat: dict[str, torch.Tensor] = {}
        self._last: dict[str, tuple] = {}

    def get(self, name: str, shape, dtype, device, changed: bool = False):
        numel = 1
        for s in shape:
            numel *= s
        buf = self._flat.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._flat[name] = buf
            self._last.pop(name, None)
        view = buf[:numel].view(shape)
        if not changed:
            return view
        key = tuple(shape)
        fresh = self._last.get(name) != key
        self._last[name] = key
        return view, fresh


def _torch_tensors(stats: GuideStatistics, dtype):
    """Guide-derived tensors in the compute dtype: mu, inverse / n, 1 / n, [1, I], [I, 1] / n."""
    key = ("torch", dtype)
    if key not in stats.cache:
        inv_n = 1.0 / stats.counts
        ones = torch.ones_like(stats.guide[:, :1])
        stats.cache[key] = (
            stats.mean.to(dtype),
            (stats.inverse * inv_n).to(dtype),
            inv_n.to(dtype),
            torch.cat([ones, stats.guide], 1).to(dtype),
            (torch.cat([stats.guide, ones], 1) * inv_n).to(dtype),
        )
    return stats.cache[key]


def _filter_torch(src, stats: GuideStatistics, box, dtype, max_maps: int) -> torch.Tensor:
    b, k, h, w = src.shape
    (ay0, ay1, ax0, ax1), (cy0, cy1, cx0, cx1) = box if box is not None else ((0, h, 0, w), (0, h, 0, w))
    tensors = [t[..., cy0:cy1, cx0:cx1] for t in _torch_tensors(stats, dtype)]
    ws = _workspaces()[0]
    chunk = max(max_maps // max(b, 1), 1)
    if box is None and chunk >= k:  # one block over the whole image
        return _filter_block(src, stats.radius, ws, *tensors)
    out = src.to(dtype, copy=True)
    for k0 in range(0, k, chunk):
        q = _filter_block(src[:, k0 : k0 + chunk, cy0:cy1, cx0:cx1], stats.radius, ws, *tensors)
        out[:, k0 : k0 + chunk, ay0:ay1, ax0:ax1] = q[..., ay0 - cy0 : ay1 - cy0, ax0 - cx0 : ax1 - cx0]
    return out


def _box(ws: _Workspace, r: int, m: int, h: int, w: int, dtype, device) -> torch.Tensor:
    """Window sums of the scratch input ``xw`` (see :func:`_input`): (m, h, w) view."""
    d = 2 * r + 1
    xw = ws.get("xw", (m, h, w + d + r), dtype, device)
    aw = ws.get("aw", (m, h, w + r), dtype, device)
    yh, fresh = ws.get("yh", (m, h + d + r, w + r), dtype, device, changed=True)
    ah = ws.get("ah", (m, h + r, w), dtype, device)
    s = ws.get("s", (m, h + r, w), dtype, device)
    if fresh:  # zero rows above and below the row sums
        yh[:, :d].zero_()
        yh[:, d + h :].zero_()
    # along W: cumsum of x_j - x_{j-d} (x zero-padded) runs through the window sums
    torch.sub(xw[..., d : d + w + r], xw[..., : w + r], out=aw)
    torch.cumsum(aw, -1, out=yh[:, d : d + h])
    # along H, on the row sums (columns r .. r + w of yh)
    torch.sub(yh[:, d : d + h + r, r : r + w], yh[:, : h + r, r : r + w], out=ah)
    torch.cumsum(ah, -2, out=s)
    return s[:, r : r + h]


def _input(ws: _Workspace, r: int, m: int, h: int, w: int, dtype, device) -> torch.Tensor:
    """Zero-padded scratch input of :func:`_box`; returns its (m, h, w) interior."""
    d = 2 * r + 1
    xw, fresh = ws.get("xw", (m, h, w + d + r), dtype, device, changed=True)
    if fresh:
        xw[..., :d].zero_()
        xw[..., d + w :].zero_()
    return xw[..., d : d + w]


def _filter_block(p, r, ws, mu, inv_n_cov, inv_n, ones_guide, guide_ones) -> torch.Tensor:
    b, k, h, w = p.shape
    c = mu.shape[1]
    m = b * k * (c + 1)
    dtype, device = mu.dtype, mu.device
    x = _input(ws, r, m, h, w, dtype, device).view(b, k, c + 1, h, w)
    torch.mul(p[:, :, None], ones_guide[:, None], out=x)  # [p, I p]
    sums = _box(ws, r, m, h, w, dtype, device).view(b, k, c + 1, h, w)
    # the coefficients overwrite the (no longer needed) box input
    _coefficients(sums, mu, inv_n_cov, inv_n, out=x, scratch=ws)
    sums = _box(ws, r, m, h, w, dtype, device).view(b, k, c + 1, h, w)
    return _average_and_apply(sums, guide_ones)


def _coefficients(sums, mu, inv_n_cov, inv_n, out, scratch) -> torch.Tensor:
    """He et al.'s closed form (which Eqs. 7-8 of Ke & Hsu express as a kernel): ``a_k`` (C channels), ``b_k``.

    ``sums``: (B, K, 1+C, H, W) window sums of ``[p, I p]``; ``mu``: (B, C, H, W)
    guide means; ``inv_n_cov``: (B, P, H, W) packed ``(Sigma_k + eps U)^-1 / n_k``;
    ``inv_n``: (H, W) ``1 / n_k``. Writes ``[a_k, b_k]`` into ``out`` (B, K, C+1, H, W).
    ``n_k cov_k(I, p) = sum(I p) - mu_k sum(p)`` is formed first (the cancellation
    happens once, on window sums accurate to their own size), then
    ``a_k = (Sigma_k + eps U)^-1 cov_k`` and ``b_k = mean_k(p) - a_k^T mu_k``.
    """
    b, k, c1, h, w = sums.shape
    c = c1 - 1
    s0 = sums[:, :, 0]
    mu_b = mu[:, None]
    g = inv_n_cov[:, None]
    d = scratch.get("d", (b, k, c, h, w), sums.dtype, sums.device)
    torch.addcmul(sums[:, :, 1:], mu_b, sums[:, :, :1], value=-1, out=d)  # n_k cov_k(I, p)
    if c == 1:
        torch.mul(g[:, :, 0], d[:, :, 0], out=out[:, :, 0])
    else:
        for i, row in enumerate(_SYM3_ROWS):
            a = out[:, :, i]
            torch.mul(g[:, :, row[0]], d[:, :, 0], out=a)
            a.addcmul_(g[:, :, row[1]], d[:, :, 1])
            a.addcmul_(g[:, :, row[2]], d[:, :, 2])
    bk = out[:, :, c]
    torch.mul(s0, inv_n, out=bk)
    for i in range(c):
        bk.addcmul_(out[:, :, i], mu_b[:, :, i], value=-1)
    return out


def _average_and_apply(sums, guide_ones) -> torch.Tensor:
    """Eq. 6 of Ke & Hsu with the coefficients averaged over windows: ``q_i = mean(a)^T I_i + mean(b)``.

    ``sums``: (B, K, C+1, H, W) window sums of ``[a_k, b_k]``; ``guide_ones``:
    (B, C+1, H, W) ``[I_i, 1] / n_i``. Returns a new (B, K, H, W) tensor.
    """
    c = sums.shape[2] - 1
    gq = guide_ones[:, None]
    q = sums[:, :, c] * gq[:, :, c]
    for i in range(c):
        q.addcmul_(sums[:, :, i], gq[:, :, i])
    return q


# ---------------------------------------------------------------------- skip_constant
def _changes(p: torch.Tensor):
    """Torch path of :func:`_active_region`: rows (H,) and columns (W,) where some map changes."""
    h, w = p.shape[-2:]
    rows = torch.zeros(h, dtype=torch.bool, device=p.device)
    cols = torch.zeros(w, dtype=torch.bool, device=p.device)
    if w > 1:
        ew = (p[..., :, 1:] != p[..., :, :-1]).flatten(0, 1).any(0)  # (H, W-1)
        rows |= ew.any(1)
        cw = ew.any(0)
        cols[:-1] |= cw
        cols[1:] |= cw
    if h > 1:
        eh = (p[..., 1:, :] != p[..., :-1, :]).flatten(0, 1).any(0)  # (H-1, W)
        ch = eh.any(1)
        rows[:-1] |= ch
        rows[1:] |= ch
        cols |= eh.any(0)
    return rows, cols


def _active_region(p: torch.Tensor, radius: int):
    """Bounding boxes where the filter can change ``p`` (see ``skip_constant``).

    Returns None when every map is constant, else ``(active, crop)`` as
    ``(y0, y1, x0, x1)`` boxes: outside ``active`` every (4r+1)-neighbourhood is
    constant (output = input); ``crop`` adds the 2r margin the computation needs.
    """
    h, w = p.shape[-2:]
    if p.device.type == "cpu" and _cpu_kernels.available():
        q = p.flatten(0, 1)
        q = q.view(torch.uint8) if q.dtype == torch.bool else q
        rows, cols = (torch.from_numpy(a) for a in _cpu_kernels.active_rows_cols(q.contiguous().numpy()))
    else:
        rows, cols = _changes(p)
    ys = torch.nonzero(rows).flatten()
    if ys.numel() == 0:
        return None
    xs = torch.nonzero(cols).flatten()
    y0, y1 = int(ys[0]), int(ys[-1]) + 1
    x0, x1 = int(xs[0]), int(xs[-1]) + 1

    def grow(a0, a1, m, size):
        return max(a0 - m, 0), min(a1 + m, size)

    a = (*grow(y0, y1, 2 * radius, h), *grow(x0, x1, 2 * radius, w))
    c = (*grow(y0, y1, 4 * radius, h), *grow(x0, x1, 4 * radius, w))
    return a, c
