"""Guided filter with a colour (or grey) guide: Eqs. 6-10 of Ke & Hsu (He et al.'s filter).

The self-guided refinement filters every localization map ``p`` with the image
``I`` as guide. In each ``(2r+1) x (2r+1)`` window ``w_k`` the output is a linear
function of the guide colour (Eq. 6), ``q_i = a_k^T I_i + b_k``, with

* ``a_k = (Sigma_k + eps U)^-1 (mean_k(I p) - mu_k mean_k(p))`` (Eq. 7),
* ``b_k = mean_k(p) - a_k^T mu_k`` (Eq. 8),

where ``mu_k`` and ``Sigma_k`` are the mean and the full 3 x 3 covariance of the
guide in ``w_k`` and ``U`` the identity. Every pixel lies in many windows, so
the coefficients are averaged: ``q_i = mean_{k in w_i}(a_k)^T I_i + mean_{k in w_i}(b_k)``.

Border handling: windows are clipped to the image and every mean divides by the
number of pixels actually inside the clipped window (He's reference code). OpenCV's
``cv2.ximgproc.guidedFilter`` instead reflects the image at the border, so the two
agree only in the interior (``radius`` pixels or more from the border).

Numerics. At ``eps = 1e-6`` the 3 x 3 solve has condition numbers up to ~1e5 and the
covariances are differences of numbers ~1e6 times larger than themselves, so a naive
float32 implementation (box sums as differences of running sums, as in OpenCV's
float32 filter) is off by up to ~0.5 on real photographs. Here

* the guide statistics (``mu_k``, ``(Sigma_k + eps U)^-1``) are computed once per image
  in float64;
* every box sum is a *cumulative sum of differences*: ``cumsum(x_j - x_{j-2r-1})``
  runs through the window sums themselves, so its rounding error is relative to the
  window sum, not to the sum of a whole image row (on CPU, torch accumulates a float32
  ``cumsum`` in double; on other devices the per-map path runs in float64);
* the per-map path (``[p, I p]`` -> box -> Eqs. 7-8 -> box -> Eq. 6) stays in float32
  on CPU and reuses preallocated buffers, and all maps of an image are filtered
  together, so the guide statistics are shared across the maps and across iterations.

Speed. On the CPU, when numba is installed, the per-map path, the guide statistics,
the ``skip_constant`` bounding box and Otsu's histograms run as fused kernels
(:mod:`sgwsss.refine._cpu_kernels`: four passes per map with float64 running sums
stored in the compute dtype); ``GuidedFilter(backend="torch")`` forces the torch
path, which gives the same result to ~1e-6 and is the one used on GPUs.

On 50 VOC photographs at ``eps = 1e-6`` the result is within 3.2e-5 (median 1.5e-6) of a
float64 reference, against up to ~1.1 for OpenCV's float32 filter (the tests check 1e-4;
``benchmarks/guided_filter.py`` measures it). The cost does not depend on the radius.

The filter is linear in ``p`` (Eqs. 9-10: ``dq_i / dp_j`` is the filter weight
``W_ij``). With clipped windows ``W = diag(1 / n) C`` with ``C`` symmetric, so the
gradient ``W^T g`` is computed by the same filter: ``n * filter(g / n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

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

#: ``GuidedFilter(backend=...)``: ``"auto"`` uses the fused numba kernel for colour guides on
#: the CPU when numba is installed and the torch path otherwise; ``"torch"`` / ``"numba"`` force one.
BACKENDS = ("auto", "torch", "numba")

# Packed upper triangle of a symmetric 3 x 3 matrix: (00, 01, 02, 11, 12, 22).
_SYM3 = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
# Row c of the full matrix as indices into the packed vector.
_SYM3_ROWS = ((0, 1, 2), (1, 3, 4), (2, 4, 5))


def _check_radius(radius) -> int:
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    return int(radius)


def _check_eps(eps) -> float:
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return eps


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


def _window_lengths(length: int, radius: int) -> np.ndarray:
    """``1 / (number of positions in each clipped 1-D window)``: (length,) float64."""
    i = np.arange(length)
    return 1.0 / (np.minimum(i + radius, length - 1) - np.maximum(i - radius, 0) + 1)


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
    buffered sums used inside :class:`GuidedFilter`.
    """
    radius = _check_radius(radius)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    return _box_1d(_box_1d(x, radius, -1), radius, -2)


@dataclass(frozen=True)
class GuideStatistics:
    """Per-window guide statistics (float64), computed once per image.

    ``mean``: (B, C, H, W) window means ``mu_k``; ``inverse``: (B, P, H, W) the
    inverse of ``Sigma_k + eps U`` (C = 3: packed upper triangle 00, 01, 02, 11, 12,
    22; C = 1: ``1 / (var_k + eps)``); ``counts``: (H, W) clipped window sizes.
    """

    radius: int
    eps: float
    guide: torch.Tensor
    mean: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor


def _inverse_sym3(s):
    """Inverse of symmetric 3 x 3 matrices given as the packed (00, 01, 02, 11, 12, 22) list."""
    s00, s01, s02, s11, s12, s22 = s
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    return torch.stack([c00, c01, c02, c11, c12, c22], 1) / det[:, None]


def _check_guide(guide: torch.Tensor) -> None:
    if not isinstance(guide, torch.Tensor):
        raise TypeError(f"guide must be a torch.Tensor, got {type(guide).__name__}")
    if guide.ndim != 4 or guide.shape[1] not in (1, 3):
        raise ValueError(f"guide must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(guide.shape)}")
    if not guide.is_floating_point():
        raise TypeError(f"guide must be a floating point tensor (values in [0, 1]), got {guide.dtype}")


def guide_statistics(guide: torch.Tensor, radius: int = 17, eps: float = 1e-6, backend: str = "auto") -> GuideStatistics:
    """Window means and inverse regularised covariances of the guide, in float64.

    ``guide``: (B, C, H, W) with C = 3 (colour, full covariance) or C = 1 (grey).
    These are the guide-only parts of Eq. 7; they are shared by all maps of the
    image and all refinement iterations. ``backend`` as in :class:`GuidedFilter`.
    """
    _check_guide(guide)
    radius, eps = _check_radius(radius), _check_eps(eps)
    g = guide.detach().to(torch.float64)
    b, c, h, w = g.shape
    counts = window_counts(h, w, radius, device=g.device)
    if _use_kernel(backend, g):
        g = g.contiguous()
        inv_nh, inv_nw = _window_lengths(h, radius), _window_lengths(w, radius)
        stats = [_cpu_kernels.guide_stats(g[i].numpy(), radius, eps, inv_nh, inv_nw) for i in range(b)]
        mean = torch.from_numpy(np.stack([m for m, _ in stats]))
        inverse = torch.from_numpy(np.stack([v for _, v in stats]))
        return GuideStatistics(radius, eps, g, mean, inverse, counts)
    inv_n = 1.0 / counts
    mean = box_sum(g, radius) * inv_n
    if c == 1:
        var = box_sum(g * g, radius) * inv_n - mean * mean
        inverse = 1.0 / (var + eps)
    else:
        prods = torch.stack([g[:, i] * g[:, j] for i, j in _SYM3], 1)
        second = box_sum(prods, radius) * inv_n
        cov = [
            second[:, t] - mean[:, i] * mean[:, j] + (eps if i == j else 0.0)
            for t, (i, j) in enumerate(_SYM3)
        ]
        inverse = _inverse_sym3(cov)
    return GuideStatistics(radius, eps, g, mean, inverse, counts)


class _Workspace:
    """Flat scratch buffers reused across calls (no page faults per iteration).

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


class _GuidedFilterFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, gf, skip_constant):
        ctx.gf = gf
        return gf._filter(src, skip_constant)

    @staticmethod
    def backward(ctx, grad):
        return ctx.gf._adjoint(grad), None, None


class GuidedFilter:
    """Guided filter with precomputed guide statistics (Eqs. 6-10 of Ke & Hsu).

    ``GuidedFilter(guide, radius, eps)`` computes the guide statistics once
    (:func:`guide_statistics`); calling it on ``src`` (B, K, H, W) filters the K maps
    of each image together and returns (B, K, H, W) in ``src``'s dtype. Reuse one
    object for all maps and iterations of an image. Calls are differentiable with
    respect to ``src`` (not the guide). ``radius = 17`` and ``eps = 1e-6`` are the
    paper's window 35 and regulariser (guide values in [0, 1]).

    ``src`` may also be a bool tensor (binary masks, filtered as 0/1 maps; float32
    result, no autograd). ``skip_constant=True`` returns ``src`` unchanged, without
    computing, where the map is constant over the ``(4r+1) x (4r+1)`` neighbourhood
    (there ``a_k = 0`` and ``b_k = p``, so the exact output equals the input): only the
    bounding box of the non-constant part (plus margins) is filtered, which saves work
    on binary maps. On CPU the per-map path runs in float32 (float64 for float64
    ``src``); on other devices in float64. ``max_maps`` bounds how many maps are
    filtered at once (scratch memory). Not thread-safe (scratch buffers are reused).

    ``backend`` (see :data:`BACKENDS`): on the CPU with a colour guide the default
    ``"auto"`` runs the fused numba kernel (:mod:`sgwsss.refine._cpu_kernels`: four
    passes per map, float64 running sums, as many threads as torch uses) when numba
    is installed, else the torch path; both give the same result to ~1e-6.
    """

    def __init__(self, guide: torch.Tensor, radius: int = 17, eps: float = 1e-6, max_maps: int = 8,
                 backend: str = "auto"):
        self.stats = guide_statistics(guide, radius, eps, backend)
        self.radius = self.stats.radius
        self.eps = self.stats.eps
        self.max_maps = max(int(max_maps), 1)
        self._derived: dict[tuple, tuple] = {}
        self._ws = _Workspace()
        self.backend = "numba" if _use_kernel(backend, self.stats.guide) else "torch"
        self._np_stats = None
        self._crops: dict[tuple, tuple] = {}

    @property
    def shape(self):
        return tuple(self.stats.guide.shape)

    def __call__(self, src: torch.Tensor, skip_constant: bool = False) -> torch.Tensor:
        self._check_src(src)
        if src.dtype == torch.bool:  # binary masks: filtered as 0/1 maps, float32 result
            with torch.no_grad():
                return self._filter(src, bool(skip_constant))
        return _GuidedFilterFunction.apply(src, self, bool(skip_constant))

    # ------------------------------------------------------------------ internals
    def _check_src(self, src) -> None:
        if not isinstance(src, torch.Tensor):
            raise TypeError(f"src must be a torch.Tensor, got {type(src).__name__}")
        b, _, h, w = self.shape
        if src.ndim != 4 or src.shape[0] != b or tuple(src.shape[-2:]) != (h, w):
            raise ValueError(f"src must have shape ({b}, K, {h}, {w}) to match the guide, got {tuple(src.shape)}")
        if not (src.is_floating_point() or src.dtype == torch.bool):
            raise TypeError(f"src must be a floating point (or bool) tensor, got {src.dtype}")
        if src.device != self.stats.guide.device:
            raise ValueError(f"src is on {src.device} but the guide is on {self.stats.guide.device}")

    def _compute_dtype(self, src: torch.Tensor) -> torch.dtype:
        if src.dtype == torch.float64 or src.device.type != "cpu":
            return torch.float64
        return torch.float32

    def _output_dtype(self, src: torch.Tensor) -> torch.dtype:
        return torch.float32 if src.dtype == torch.bool else src.dtype

    def _tensors(self, dtype):
        """Guide-derived tensors in the compute dtype: mu, inverse / n, 1 / n, [1, I], [I, 1] / n."""
        key = (dtype,)
        if key not in self._derived:
            st = self.stats
            inv_n = 1.0 / st.counts
            ones = torch.ones_like(st.guide[:, :1])
            self._derived[key] = (
                st.mean.to(dtype),
                (st.inverse * inv_n).to(dtype),
                inv_n.to(dtype),
                torch.cat([ones, st.guide], 1).to(dtype),
                (torch.cat([st.guide, ones], 1) * inv_n).to(dtype),
            )
        return self._derived[key]

    def _adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        # W = diag(1/n) C with C symmetric  =>  W^T g = n * W (g / n)   (Eqs. 9-10)
        n = self.stats.counts.to(device=grad.device, dtype=grad.dtype)
        return _GuidedFilterFunction.apply(grad / n, self, False) * n

    def _filter(self, src: torch.Tensor, skip_constant: bool) -> torch.Tensor:
        r = self.radius
        b, k, h, w = src.shape
        dtype = self._compute_dtype(src)
        out_dtype = self._output_dtype(src)
        src = src.detach()
        box = (0, h, 0, w), (0, h, 0, w)
        if skip_constant:
            box = _active_region(src, r)
            if box is None:
                return src.to(out_dtype, copy=True)
        (ay0, ay1, ax0, ax1), (cy0, cy1, cx0, cx1) = box
        if self.backend == "numba":
            return self._filter_kernel(src, box, dtype).to(out_dtype)
        tensors = [t[..., cy0:cy1, cx0:cx1] for t in self._tensors(dtype)]
        chunk = max(self.max_maps // max(b, 1), 1)
        if box[1] == (0, h, 0, w) and chunk >= k:  # one block over the whole image
            return self._filter_block(src, *tensors).to(out_dtype)
        out = src.to(dtype, copy=True)
        for k0 in range(0, k, chunk):
            q = self._filter_block(src[:, k0 : k0 + chunk, cy0:cy1, cx0:cx1], *tensors)
            out[:, k0 : k0 + chunk, ay0:ay1, ax0:ax1] = q[..., ay0 - cy0 : ay1 - cy0, ax0 - cx0 : ax1 - cx0]
        return out.to(out_dtype)

    def _filter_kernel(self, src: torch.Tensor, box, dtype) -> torch.Tensor:
        """The numba path of :meth:`_filter`: the crop ``box`` of each image through the fused kernel."""
        (ay0, ay1, ax0, ax1), (cy0, cy1, cx0, cx1) = box
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        if self._np_stats is None or self._np_stats[0].dtype != np_dtype:
            st = self.stats
            h, w = st.counts.shape
            self._np_stats = (st.guide.numpy().astype(np_dtype), st.mean.numpy().astype(np_dtype),
                              (st.inverse / st.counts).numpy().astype(np_dtype),
                              _window_lengths(h, self.radius), _window_lengths(w, self.radius))
        guide, mean, inv_n_cov, inv_nh, inv_nw = self._np_stats
        _cpu_kernels.prepare_threads(torch.get_num_threads())
        full = box[1] == (0, src.shape[2], 0, src.shape[3])
        out = torch.empty(src.shape, dtype=dtype) if full else src.to(dtype, copy=True)
        crop = np.s_[cy0:cy1, cx0:cx1]
        scratch = self._ws.get("kernel", (8 * (cy1 - cy0) * (cx1 - cx0),), dtype, torch.device("cpu")).numpy()
        for i in range(src.shape[0]):
            p = src[i, :, cy0:cy1, cx0:cx1]
            p = p.view(torch.uint8) if p.dtype == torch.bool else p if p.dtype in (torch.float32, torch.float64) \
                else p.float()
            q = np.empty(p.shape, dtype=np.float64 if dtype == torch.float64 else np.float32)
            # contiguous crops (the kernel's inner loops vectorise over unit-stride rows), cached:
            # the iterations of one map usually keep the same crop box
            key = (i, box[1], np_dtype)
            if key not in self._crops:
                if len(self._crops) >= 4:
                    self._crops.pop(next(iter(self._crops)))
                self._crops[key] = tuple(np.ascontiguousarray(a[i][(slice(None), *crop)])
                                         for a in (guide, mean, inv_n_cov))
            _cpu_kernels.filter_maps(np.ascontiguousarray(p.numpy()), *self._crops[key], inv_nh[cy0:cy1],
                                     inv_nw[cx0:cx1], self.radius, q, scratch)
            q = torch.from_numpy(q)
            if full:
                out[i] = q
            else:
                out[i, :, ay0:ay1, ax0:ax1] = q[:, ay0 - cy0 : ay1 - cy0, ax0 - cx0 : ax1 - cx0]
        return out

    def _box(self, m: int, h: int, w: int, dtype, device) -> torch.Tensor:
        """Window sums of the scratch input ``xw`` (see :meth:`_input`): (m, h, w) view."""
        r = self.radius
        d = 2 * r + 1
        ws = self._ws
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

    def _input(self, m: int, h: int, w: int, dtype, device) -> torch.Tensor:
        """Zero-padded scratch input of :meth:`_box`; returns its (m, h, w) interior."""
        r = self.radius
        d = 2 * r + 1
        xw, fresh = self._ws.get("xw", (m, h, w + d + r), dtype, device, changed=True)
        if fresh:
            xw[..., :d].zero_()
            xw[..., d + w :].zero_()
        return xw[..., d : d + w]

    def _filter_block(self, p, mu, inv_n_cov, inv_n, ones_guide, guide_ones) -> torch.Tensor:
        b, k, h, w = p.shape
        c = mu.shape[1]
        m = b * k * (c + 1)
        dtype, device = mu.dtype, mu.device
        x = self._input(m, h, w, dtype, device).view(b, k, c + 1, h, w)
        torch.mul(p[:, :, None], ones_guide[:, None], out=x)  # [p, I p]
        sums = self._box(m, h, w, dtype, device).view(b, k, c + 1, h, w)
        # the coefficients overwrite the (no longer needed) box input
        _coefficients(sums, mu, inv_n_cov, inv_n, out=x, scratch=self._ws)
        sums = self._box(m, h, w, dtype, device).view(b, k, c + 1, h, w)
        return _average_and_apply(sums, guide_ones)


def _coefficients(sums, mu, inv_n_cov, inv_n, out, scratch) -> torch.Tensor:
    """Eqs. 7-8 of Ke & Hsu: window coefficients ``a_k`` (C channels) and ``b_k``.

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
    """Eq. 6 of Ke & Hsu, averaged over windows: ``q_i = mean(a)^T I_i + mean(b)``.

    ``sums``: (B, K, C+1, H, W) window sums of ``[a_k, b_k]``; ``guide_ones``:
    (B, C+1, H, W) ``[I_i, 1] / n_i``. Returns a new (B, K, H, W) tensor.
    """
    c = sums.shape[2] - 1
    gq = guide_ones[:, None]
    q = sums[:, :, c] * gq[:, :, c]
    for i in range(c):
        q.addcmul_(sums[:, :, i], gq[:, :, i])
    return q


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

    def snap(a0, a1, size, step=16):  # enlarge to a 16-px grid: repeated crops reuse buffers
        return a0 - a0 % step, min(a1 + (-a1) % step, size)

    a = (*grow(y0, y1, 2 * radius, h), *grow(x0, x1, 2 * radius, w))
    c = (*snap(*grow(y0, y1, 4 * radius, h), h), *snap(*grow(x0, x1, 4 * radius, w), w))
    return a, c


def guided_filter(
    guide: torch.Tensor, src: torch.Tensor, radius: int = 17, eps: float = 1e-6
) -> torch.Tensor:
    """Guided filter of ``src`` (B, K, H, W) with ``guide`` (B, 3 or 1, H, W): (B, K, H, W).

    One-shot form of :class:`GuidedFilter` (Eqs. 6-8 of Ke & Hsu); differentiable
    with respect to ``src``.
    """
    return GuidedFilter(guide, radius, eps)(src)
