"""Fused CPU kernels of the self-guided refinement, compiled with numba.

* :func:`filter_maps`: the colour guided filter (Eqs. 6-8 of Ke & Hsu);
* :func:`guide_stats`: the guide's window means and inverse regularised covariances;
* :func:`active_rows_cols`: where a map is not locally constant (``skip_constant``);
* :func:`histograms`, :func:`minmax`: numpy-exact histograms and ranges for Otsu's threshold.

:mod:`sgwsss.refine.guided_filter` and :mod:`sgwsss.refine.otsu` use them on the
CPU when numba is installed (``available()``); otherwise, and on other devices,
the torch paths run and give the same results. The guided filter computes, for
each map ``p`` of one image,

1. row pass: running window sums along x of ``[p, I_r p, I_g p, I_b p]``;
2. column pass fused with Eqs. 7-8: running sums along y give the window sums,
   from which ``a_k = (Sigma_k + eps U)^-1 (sum(I p) - mu_k sum(p)) / n_k`` and
   ``b_k = sum(p) / n_k - a_k^T mu_k`` are formed at once;
3. row pass over ``[a, b]``;
4. column pass fused with Eq. 6: ``q_i = (sum(a)^T I_i + sum(b)) / n_i``.

Windows are clipped to the array (zero padding; ``n`` counts the pixels inside),
as in the torch path. Every running sum is accumulated in float64 and stored in the
compute dtype (float32 for float32 maps, as the torch path does; float64 for
float64 maps), so the result matches the float64 reference as closely as the torch
path does while moving half the memory. Rows (passes 1, 3) and column blocks (passes 2, 4)
are spread over numba's threads; ``prepare_threads`` matches torch's thread count.
"""
from __future__ import annotations

import numpy as np

try:  # numba is an optional accelerator: without it the torch path runs
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = ["available", "prepare_threads", "filter_maps", "guide_stats", "active_rows_cols", "histograms", "minmax"]

def available() -> bool:
    """True when numba is importable (the fused CPU kernel can run)."""
    return numba is not None


def prepare_threads(n: int) -> None:
    """Use ``n`` numba threads (clipped to numba's pool), to match ``torch.get_num_threads()``."""
    if numba is not None:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


if numba is not None:

    @njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
    def _rows_src(p, guide, out, r):
        # out[0..3, y, x] = sum over |x' - x| <= r (clipped) of [p, I_r p, I_g p, I_b p]
        h, w = p.shape
        for y in prange(h):
            pr, i0, i1, i2 = p[y], guide[0, y], guide[1, y], guide[2, y]
            o0, o1, o2, o3 = out[0, y], out[1, y], out[2, y], out[3, y]
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for x in range(min(r, w - 1) + 1):
                v = float(pr[x])
                s0 += v
                s1 += v * i0[x]
                s2 += v * i1[x]
                s3 += v * i2[x]
            for x in range(w):
                o0[x] = s0
                o1[x] = s1
                o2[x] = s2
                o3[x] = s3
                xa = min(x + r + 1, w - 1)  # clipped index, weight 0 past the end
                xs = max(x - r, 0)
                va = float(pr[xa]) if x + r + 1 < w else 0.0
                vs = float(pr[xs]) if x - r >= 0 else 0.0
                s0 += va - vs  # one dependent add per channel and pixel
                s1 += va * i0[xa] - vs * i0[xs]
                s2 += va * i1[xa] - vs * i1[xs]
                s3 += va * i2[xa] - vs * i2[xs]

    @njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
    def _rows4(src, out, r):
        # out[c, y, x] = sum over |x' - x| <= r (clipped) of src[c, y, x'] for c = 0..3
        _, h, w = src.shape
        for y in prange(h):
            a0, a1, a2, a3 = src[0, y], src[1, y], src[2, y], src[3, y]
            o0, o1, o2, o3 = out[0, y], out[1, y], out[2, y], out[3, y]
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for x in range(min(r, w - 1) + 1):
                s0 += a0[x]
                s1 += a1[x]
                s2 += a2[x]
                s3 += a3[x]
            for x in range(w):
                o0[x] = s0
                o1[x] = s1
                o2[x] = s2
                o3[x] = s3
                xa = min(x + r + 1, w - 1)
                xs = max(x - r, 0)
                fa = 1.0 if x + r + 1 < w else 0.0
                fs = 1.0 if x - r >= 0 else 0.0
                s0 += fa * a0[xa] - fs * a0[xs]
                s1 += fa * a1[xa] - fs * a1[xs]
                s2 += fa * a2[xa] - fs * a2[xs]
                s3 += fa * a3[xa] - fs * a3[xs]

    @njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
    def _columns_coefficients(rows, mu, inv, inv_nh, inv_nw, ab, r, block):
        # column window sums of ``rows`` -> [a_k (3), b_k] (Eqs. 7-8) in ``ab``
        _, h, w = rows.shape
        nblk = (w + block - 1) // block
        for bi in prange(nblk):
            x0 = bi * block
            x1 = min(x0 + block, w)
            n = x1 - x0
            acc0, acc1, acc2, acc3 = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
            for y in range(min(r, h - 1) + 1):  # the window of row 0
                _add_rows(acc0, acc1, acc2, acc3, rows, y, x0, x1, 1.0)
            nw = inv_nw[x0:x1]
            for y in range(h):
                m0, m1, m2 = mu[0, y, x0:x1], mu[1, y, x0:x1], mu[2, y, x0:x1]
                g0, g1, g2 = inv[0, y, x0:x1], inv[1, y, x0:x1], inv[2, y, x0:x1]
                g3, g4, g5 = inv[3, y, x0:x1], inv[4, y, x0:x1], inv[5, y, x0:x1]
                o0, o1, o2, o3 = ab[0, y, x0:x1], ab[1, y, x0:x1], ab[2, y, x0:x1], ab[3, y, x0:x1]
                kh = inv_nh[y]
                for j in range(n):
                    s0 = acc0[j]
                    d0 = acc1[j] - m0[j] * s0  # n_k cov_k(I, p)
                    d1 = acc2[j] - m1[j] * s0
                    d2 = acc3[j] - m2[j] * s0
                    a0 = g0[j] * d0 + g1[j] * d1 + g2[j] * d2  # Eq. 7
                    a1 = g1[j] * d0 + g3[j] * d1 + g4[j] * d2
                    a2 = g2[j] * d0 + g4[j] * d1 + g5[j] * d2
                    o0[j] = a0
                    o1[j] = a1
                    o2[j] = a2
                    o3[j] = s0 * kh * nw[j] - a0 * m0[j] - a1 * m1[j] - a2 * m2[j]  # Eq. 8
                _slide(acc0, acc1, acc2, acc3, rows, y, r, x0, x1)

    @njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
    def _columns_output(rows, guide, inv_nh, inv_nw, q, r, block):
        # column window sums of ``rows`` = [sum a, sum b] -> q = (sum(a)^T I + sum(b)) / n (Eq. 6)
        _, h, w = rows.shape
        nblk = (w + block - 1) // block
        for bi in prange(nblk):
            x0 = bi * block
            x1 = min(x0 + block, w)
            n = x1 - x0
            acc0, acc1, acc2, acc3 = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
            for y in range(min(r, h - 1) + 1):  # the window of row 0
                _add_rows(acc0, acc1, acc2, acc3, rows, y, x0, x1, 1.0)
            nw = inv_nw[x0:x1]
            for y in range(h):
                i0, i1, i2 = guide[0, y, x0:x1], guide[1, y, x0:x1], guide[2, y, x0:x1]
                out = q[y, x0:x1]
                kh = inv_nh[y]
                for j in range(n):
                    out[j] = (acc0[j] * i0[j] + acc1[j] * i1[j] + acc2[j] * i2[j] + acc3[j]) * (kh * nw[j])
                _slide(acc0, acc1, acc2, acc3, rows, y, r, x0, x1)

    @njit(inline="always", cache=True, fastmath=True)
    def _slide(acc0, acc1, acc2, acc3, rows, y, r, x0, x1):
        # move the column windows from row y to row y + 1
        if y + r + 1 < rows.shape[1]:
            _add_rows(acc0, acc1, acc2, acc3, rows, y + r + 1, x0, x1, 1.0)
        if y - r >= 0:
            _add_rows(acc0, acc1, acc2, acc3, rows, y - r, x0, x1, -1.0)

    @njit(inline="always", cache=True, fastmath=True)
    def _add_rows(acc0, acc1, acc2, acc3, rows, y, x0, x1, sign):
        r0, r1, r2, r3 = rows[0, y, x0:x1], rows[1, y, x0:x1], rows[2, y, x0:x1], rows[3, y, x0:x1]
        for j in range(x1 - x0):
            acc0[j] += sign * r0[j]
            acc1[j] += sign * r1[j]
            acc2[j] += sign * r2[j]
            acc3[j] += sign * r3[j]


    @njit(parallel=True, cache=True, error_model="numpy")
    def _rows_guide(guide, out, r):
        # out[0..8, y, x]: clipped row window sums of I_0, I_1, I_2 and the products I_i I_j (i <= j)
        _, h, w = guide.shape
        for y in prange(h):
            s = np.zeros(9)
            for x in range(min(r, w - 1) + 1):
                _add_products(s, guide, y, x, 1.0)
            for x in range(w):
                for c in range(9):
                    out[c, y, x] = s[c]
                if x + r + 1 < w:
                    _add_products(s, guide, y, x + r + 1, 1.0)
                if x - r >= 0:
                    _add_products(s, guide, y, x - r, -1.0)

    @njit(inline="always", cache=True)
    def _add_products(s, guide, y, x, sign):
        a = guide[0, y, x]
        b = guide[1, y, x]
        c = guide[2, y, x]
        s[0] += sign * a
        s[1] += sign * b
        s[2] += sign * c
        s[3] += sign * (a * a)
        s[4] += sign * (a * b)
        s[5] += sign * (a * c)
        s[6] += sign * (b * b)
        s[7] += sign * (b * c)
        s[8] += sign * (c * c)

    @njit(parallel=True, cache=True, error_model="numpy")
    def _columns_guide(rows, eps, r, inv_nh, inv_nw, mean, inverse, block):
        # column window sums of the 9 guide channels -> mu_k and (Sigma_k + eps U)^-1 (packed)
        _, h, w = rows.shape
        nblk = (w + block - 1) // block
        for bi in prange(nblk):
            x0 = bi * block
            x1 = min(x0 + block, w)
            acc = np.zeros((9, x1 - x0))
            for y in range(min(r, h - 1) + 1):
                for c in range(9):
                    for x in range(x0, x1):
                        acc[c, x - x0] += rows[c, y, x]
            for y in range(h):
                for x in range(x0, x1):
                    j = x - x0
                    k = inv_nh[y] * inv_nw[x]
                    m0 = acc[0, j] * k
                    m1 = acc[1, j] * k
                    m2 = acc[2, j] * k
                    s00 = acc[3, j] * k - m0 * m0 + eps
                    s01 = acc[4, j] * k - m0 * m1
                    s02 = acc[5, j] * k - m0 * m2
                    s11 = acc[6, j] * k - m1 * m1 + eps
                    s12 = acc[7, j] * k - m1 * m2
                    s22 = acc[8, j] * k - m2 * m2 + eps
                    c00 = s11 * s22 - s12 * s12
                    c01 = s02 * s12 - s01 * s22
                    c02 = s01 * s12 - s02 * s11
                    c11 = s00 * s22 - s02 * s02
                    c12 = s01 * s02 - s00 * s12
                    c22 = s00 * s11 - s01 * s01
                    det = s00 * c00 + s01 * c01 + s02 * c02
                    mean[0, y, x] = m0
                    mean[1, y, x] = m1
                    mean[2, y, x] = m2
                    inverse[0, y, x] = c00 / det
                    inverse[1, y, x] = c01 / det
                    inverse[2, y, x] = c02 / det
                    inverse[3, y, x] = c11 / det
                    inverse[4, y, x] = c12 / det
                    inverse[5, y, x] = c22 / det
                if y + r + 1 < h:
                    for c in range(9):
                        for x in range(x0, x1):
                            acc[c, x - x0] += rows[c, y + r + 1, x]
                if y - r >= 0:
                    for c in range(9):
                        for x in range(x0, x1):
                            acc[c, x - x0] -= rows[c, y - r, x]

    @njit(cache=True)
    def _active(p, rows, cols):
        # rows[y] / cols[x]: the pixel (y, x) differs from a 4-neighbour in some map
        k, h, w = p.shape
        for i in range(k):
            for y in range(h):
                for x in range(w):
                    v = p[i, y, x]
                    if x + 1 < w and p[i, y, x + 1] != v:
                        rows[y] = True
                        cols[x] = True
                        cols[x + 1] = True
                    if y + 1 < h and p[i, y + 1, x] != v:
                        rows[y] = True
                        rows[y + 1] = True
                        cols[x] = True

    @njit(parallel=True, cache=True)
    def _histograms(x, lo, scale, edges, nchunks, counts):
        # numpy.histogram's bins (see sgwsss.refine.otsu._histograms); each row split into
        # nchunks pieces so that one map also spreads over the threads; counts (M * nchunks, nbins)
        m, n = x.shape
        nbins = counts.shape[1]
        size = (n + nchunks - 1) // nchunks
        for task in prange(m * nchunks):
            i = task // nchunks
            e = edges[i]
            for j in range((task % nchunks) * size, min(n, (task % nchunks + 1) * size)):
                v = x[i, j]
                t = int(np.trunc((v - lo[i]) * scale[i]))
                t = min(max(t, 0), nbins - 1)
                if v < e[t]:
                    t -= 1
                if t < nbins - 1 and v >= e[t + 1]:
                    t += 1
                counts[task, t] += 1

    @njit(parallel=True, cache=True)
    def _minmax(x, nchunks, lo, hi):
        # per-chunk minimum / maximum of the rows of x (M, N) -> lo, hi (M * nchunks,)
        m, n = x.shape
        size = (n + nchunks - 1) // nchunks
        for task in prange(m * nchunks):
            i = task // nchunks
            j0 = min((task % nchunks) * size, n - 1)
            a = x[i, j0]
            b = a
            for j in range(j0, min(n, (task % nchunks + 1) * size)):
                v = x[i, j]
                if v < a:
                    a = v
                if v > b:
                    b = v
            lo[task] = a
            hi[task] = b


def _chunks(m: int, n: int) -> int:
    """Pieces per row so that ``m`` rows of ``n`` values keep every thread busy (pieces >= 32k values)."""
    threads = numba.get_num_threads()
    return max(1, min(-(-threads // max(m, 1)), n // 32768))


def guide_stats(guide: np.ndarray, radius: int, eps: float, inv_nh: np.ndarray, inv_nw: np.ndarray):
    """Window means (3, H, W) and packed inverse of ``Sigma_k + eps U`` (6, H, W) of a float64 (3, H, W) guide."""
    _, h, w = guide.shape
    rows = np.empty((9, h, w))
    mean = np.empty((3, h, w))
    inverse = np.empty((6, h, w))
    _rows_guide(guide, rows, radius)
    _columns_guide(rows, float(eps), radius, inv_nh, inv_nw, mean, inverse, _column_block(w))
    return mean, inverse


def active_rows_cols(p: np.ndarray):
    """Rows (H,) and columns (W,) holding a pixel that differs from a 4-neighbour in any map of ``p`` (K, H, W)."""
    _, h, w = p.shape
    rows = np.zeros(h, dtype=np.bool_)
    cols = np.zeros(w, dtype=np.bool_)
    _active(p, rows, cols)
    return rows, cols


def histograms(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, edges: np.ndarray, nbins: int) -> np.ndarray:
    """Bin counts (M, nbins) of the rows of ``x`` (M, N): ``t = trunc((v - lo) * scale)``, fixed up
    against ``edges`` (M, nbins + 1) exactly as :func:`sgwsss.refine.otsu._histograms` does (same dtype)."""
    m, n = x.shape
    k = _chunks(m, n)
    counts = np.zeros((m * k, nbins), dtype=np.int64)
    _histograms(x, lo, scale, edges, k, counts)
    return counts.reshape(m, k, nbins).sum(axis=1) if k > 1 else counts


def minmax(x: np.ndarray):
    """Row-wise minimum and maximum of ``x`` (M, N), N >= 1 -> two (M,) arrays of x's dtype (no NaN support)."""
    m, n = x.shape
    k = _chunks(m, n)
    lo = np.empty(m * k, dtype=x.dtype)
    hi = np.empty(m * k, dtype=x.dtype)
    _minmax(x, k, lo, hi)
    return lo.reshape(m, k).min(axis=1), hi.reshape(m, k).max(axis=1)


def _column_block(width: int) -> int:
    """Columns per thread in the column passes: the width split over numba's threads (16-aligned)."""
    threads = numba.get_num_threads() if numba is not None else 1
    per_thread = -(-width // threads)  # ceil
    return max(16, -(-per_thread // 16) * 16)


def filter_maps(p: np.ndarray, guide: np.ndarray, mu: np.ndarray, inv_n_cov: np.ndarray, inv_nh: np.ndarray,
                inv_nw: np.ndarray, radius: int, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """Guided-filter the maps of one image with a colour guide (Eqs. 6-8): writes and returns ``out``.

    ``p``: (K, H, W) maps (float32, float64 or uint8 0/1); ``guide``: (3, H, W);
    ``mu``: (3, H, W) window means of the guide; ``inv_n_cov``: (6, H, W) packed
    (00, 01, 02, 11, 12, 22) inverse of ``Sigma_k + eps U`` divided by ``n_k``;
    ``inv_nh`` (H,), ``inv_nw`` (W,): float64 inverse clipped window lengths
    (``n_k = nh_y * nw_x``); ``out``: (K, H, W). The stored arrays may be float32 or
    float64 (intermediate window sums are stored in ``guide``'s dtype, accumulated in float64).
    ``scratch``: an optional flat buffer of at least ``8 H W`` elements of ``guide``'s dtype,
    reused across calls (saves the page faults of fresh allocations).
    """
    if numba is None:
        raise RuntimeError("the fused guided-filter kernel needs numba (pip install numba)")
    k, h, w = p.shape
    if scratch is None or scratch.size < 8 * h * w or scratch.dtype != guide.dtype:
        scratch = np.empty(8 * h * w, dtype=guide.dtype)
    rows = scratch[: 4 * h * w].reshape(4, h, w)
    ab = scratch[4 * h * w : 8 * h * w].reshape(4, h, w)
    block = _column_block(w)
    for i in range(k):
        _rows_src(p[i], guide, rows, radius)
        _columns_coefficients(rows, mu, inv_n_cov, inv_nh, inv_nw, ab, radius, block)
        _rows4(ab, rows, radius)
        _columns_output(rows, guide, inv_nh, inv_nw, out[i], radius, block)
    return out
