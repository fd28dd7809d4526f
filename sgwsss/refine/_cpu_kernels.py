"""Fused CPU kernels of the guided filter, Otsu's threshold and the self-guided refinement (numba).

:mod:`sgwsss.refine.guided_filter`, :mod:`sgwsss.refine.otsu` and
:mod:`sgwsss.refine.self_guided` use them on the CPU when numba is installed
(``available()``); otherwise, and on other devices, the torch paths run and give
the same results.

Guided filter (He et al.'s closed form, which Eqs. 7-8 of Ke & Hsu express as a
kernel; output Eq. 6 averaged over the windows), :func:`_filter_stream`: one sweep
down the image, for each map ``p`` (binarised on the fly, ``p = [q > t]``, so no mask
is materialised):

1. float64 column sums of ``[p, I_r p, I_g p, I_b p]`` over the window, updated as rows
   enter and leave (the leaving rows kept in a small ring);
2. their clipped row windows (differences of float64 prefix sums), from which
   ``a_k = (Sigma_k + eps U)^-1 (sum(I p) - mu_k sum(p)) / n_k`` and
   ``b_k = sum(p) / n_k - a_k^T mu_k`` of the row follow, kept in a ring of 2r + 2 rows;
3. r rows later, column and row window sums of ``[a, b]`` give the output
   ``q_i = (sum(a)^T I_i + sum(b)) / n_i``; every row's and column's minimum and maximum
   are recorded, from which the refinement takes Otsu's range and the bounding box of
   the next binary mask.

The working set (a few rows) stays in the caches. Windows are clipped to the image
(zero padding; ``n`` counts the pixels inside). The guide statistics ``mu_k`` and
``(Sigma_k + eps U)^-1 / n_k`` are computed once per image the same way
(:func:`guide_stats`, float64 arithmetic, stored in the compute dtype).

:func:`refine_maps` runs the whole self-guided refinement of one image's maps (per
iteration: Otsu's histogram and threshold, the box, the filter) in compiled code, in
one parallel region per image (one map per thread). :func:`filter_maps` splits the
rows of a map into one band per thread (each band computed from its crop with a 2r
halo, exactly). ``prepare_threads`` matches torch's thread count. numba runs on TBB
when the ``tbb`` package is installed (:func:`_load_pip_tbb`).

Loops index views from 0 (no negative-index checks, so LLVM vectorises them).
Non-finite values are found inside passes that read the values anyway (the guide in
its statistics, maps in their range or in the filter's first sums): a row's float64
total is NaN or infinite as soon as one value is, and :func:`_nonfinite` tests it,
compiled without fast-math (the kernels' ``fastmath`` flags leave out ``nnan``/``ninf``;
the helpers that return the test are not ``inline="always"``, which loses it in numba
0.68). The Otsu code runs without fast-math: it reproduces scikit-image's float32
arithmetic bit for bit.
"""
from __future__ import annotations

import os
import time

import numpy as np

def _load_pip_tbb() -> None:
    """Let numba find a pip-installed TBB, so that it runs its parallel loops on TBB.

    numba takes TBB as its threading layer when it can load ``libtbb.so.12``; the ``tbb``
    wheel puts it in ``<prefix>/lib``, which the loader does not search, so numba falls
    back to OpenMP. OpenMP's workers busy-wait between parallel loops (and numba shares
    torch's libgomp): when other processes use the cores, each parallel loop can then wait
    ~20 ms for a worker (measured on a loaded 2-core machine: a trivial two-thread loop
    took 16-24 ms with OpenMP, 0.005 ms with TBB). Loading the library from the prefix
    changes nothing when numba was told another layer (``NUMBA_THREADING_LAYER``).
    """
    if os.environ.get("NUMBA_THREADING_LAYER", "default") not in ("default", "safe", "tbb"):
        return
    import ctypes
    import sys

    for name in ("libtbb.so.12", "libtbb.12.dylib"):
        path = os.path.join(sys.prefix, "lib", name)
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:  # pragma: no cover - a broken install: numba picks another layer
                pass
            return


try:  # numba is an optional accelerator: without it the torch path runs
    _load_pip_tbb()
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = ["available", "prepare_threads", "window_lengths", "Workspace", "guide_stats", "filter_maps",
           "active_rows_cols", "histograms", "minmax", "otsu_search", "refine_maps", "PHASES"]

#: phases of :func:`refine_maps`'s time breakdown (``times`` argument)
PHASES = ("otsu", "filter", "other")

# fast-math without "nnan"/"ninf": reassociation and contraction, but NaN/Inf tests stay
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
_INF = np.inf


def available() -> bool:
    """True when numba is importable (the fused CPU kernels can run)."""
    return numba is not None


def prepare_threads(n: int) -> int:
    """Use ``n`` numba threads (clipped to numba's pool), to match ``torch.get_num_threads()``; returns it."""
    if numba is None:
        return 1
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def window_lengths(length: int, radius: int) -> np.ndarray:
    """``1 / (number of positions in each clipped 1-D window)``: (length,) float64."""
    i = np.arange(length)
    return 1.0 / (np.minimum(i + radius, length - 1) - np.maximum(i - radius, 0) + 1)


def adjugate_sym3(s00, s01, s02, s11, s12, s22):
    """Adjugate (packed 00, 01, 02, 11, 12, 22) and determinant of a symmetric 3 x 3 matrix.

    Works on numbers (compiled into the guide-statistics kernel) and on tensors (the torch path).
    """
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    return c00, c01, c02, c11, c12, c22, s00 * c00 + s01 * c01 + s02 * c02


class Workspace:
    """Flat scratch arrays reused across calls (fresh large arrays cost page faults every time).

    ``get(name, size, dtype)`` returns a flat array of at least ``size`` elements. One
    workspace per thread (see :func:`sgwsss.refine.guided_filter` callers); not thread-safe.
    """

    def __init__(self):
        self._arrays: dict = {}

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        a = self._arrays.get(key)
        if a is None or a.size < size:
            a = np.empty(max(int(size), 1), dtype=dtype)
            self._arrays[key] = a
        return a[:size]


if numba is not None:
    _OPTS = dict(cache=True, fastmath=_FM, error_model="numpy")

    @intrinsic
    def _cycles(typingctx):
        # the CPU's cycle counter (0 where LLVM has none): the time breakdown of the compiled refinement
        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                                "llvm.readcyclecounter")
            return builder.call(fn, [])
        return types.uint64(), codegen

    # ------------------------------------------------------------------ shared pieces
    @njit(cache=True)
    def _nonfinite(v):
        # True for NaN and +-Inf (compiled without fast-math: LLVM keeps the test). Kernels apply it to a
        # row's total, which is non-finite as soon as one summand is.
        return not (v - v == 0.0)

    @njit(inline="always", **_OPTS)
    def _window(P, o, r, w):
        # o[x] = P[min(x + r + 1, w)] - P[max(x - r, 0)]: clipped window sums from prefix sums P (w + 1,)
        for x in range(min(r + 1, w)):
            o[x] = P[min(x + r + 1, w)] - P[0]
        n = w - 2 * r - 1
        if n > 0:
            hi = P[2 * r + 2:]
            lo = P[1:]
            oo = o[r + 1:]
            for j in range(n):
                oo[j] = hi[j] - lo[j]
        for x in range(max(r + 1, w - r), w):
            o[x] = P[w] - P[x - r]

    @njit(inline="always", **_OPTS)
    def _scan_window4(v0, v1, v2, v3, P, o0, o1, o2, o3, r):
        # o_c = clipped row-window sums of v_c (c = 0..3, length w), from float64 prefix sums in P (4, w + 1)
        w = v0.shape[0]
        P0, P1, P2, P3 = P[0], P[1], P[2], P[3]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for x in range(w):
            s0 += v0[x]
            s1 += v1[x]
            s2 += v2[x]
            s3 += v3[x]
            P0[x + 1] = s0
            P1[x + 1] = s1
            P2[x + 1] = s2
            P3[x + 1] = s3
        _window(P0, o0, r, w)
        _window(P1, o1, r, w)
        _window(P2, o2, r, w)
        _window(P3, o3, r, w)

    @njit(inline="always", **_OPTS)
    def _coefficients_row(s0a, s1a, s2a, s3a, mu, icn, gy, g, kh, nw, o0, o1, o2, o3):
        # He et al.'s closed form on one row: window sums [sum p, sum I p] (s*a) -> [a_k (3), b_k] (o*)
        m0, m1, m2 = mu[0, gy, g], mu[1, gy, g], mu[2, gy, g]
        g0, g1, g2, g3, g4, g5 = icn[0, gy, g], icn[1, gy, g], icn[2, gy, g], icn[3, gy, g], icn[4, gy, g], \
            icn[5, gy, g]
        for j in range(o0.shape[0]):
            s0 = s0a[j]
            d0 = s1a[j] - m0[j] * s0  # n_k cov_k(I, p)
            d1 = s2a[j] - m1[j] * s0
            d2 = s3a[j] - m2[j] * s0
            a0 = g0[j] * d0 + g1[j] * d1 + g2[j] * d2  # a_k
            a1 = g1[j] * d0 + g3[j] * d1 + g4[j] * d2
            a2 = g2[j] * d0 + g4[j] * d1 + g5[j] * d2
            o0[j] = a0
            o1[j] = a1
            o2[j] = a2
            o3[j] = s0 * kh * nw[j] - a0 * m0[j] - a1 * m1[j] - a2 * m2[j]  # b_k

    @njit(inline="always", **_OPTS)
    def _output_row(s0a, s1a, s2a, s3a, guide, gy, g, kh, nw, out, cmn, cmx):
        # Eq. 6 averaged over the windows on one row: window sums [sum a, sum b] -> out = (sum(a)^T I + sum(b)) / n;
        # updates the columns' min / max (cmn, cmx) and returns the row's (min, max)
        i0, i1, i2 = guide[0, gy, g], guide[1, gy, g], guide[2, gy, g]
        n = out.shape[0]
        for j in range(n):
            out[j] = (s0a[j] * i0[j] + s1a[j] * i1[j] + s2a[j] * i2[j] + s3a[j]) * (kh * nw[j])
        lo = out[0]
        hi = out[0]
        for j in range(n):
            v = out[j]
            lo = min(lo, v)
            hi = max(hi, v)
            cmn[j] = min(cmn[j], v)
            cmx[j] = max(cmx[j], v)
        return lo, hi

    @njit(inline="always", **_OPTS)
    def _chunks(n, nt):
        # (parts, chunk): n rows split over nt threads. The parallel kernels take nt from Python:
        # numba.get_num_threads() inside a kernel would make it uncacheable.
        parts = max(1, min(nt, n))
        return parts, -(-n // parts)

    # ------------------------------------------------------------------ guide statistics
    _adjugate = njit(inline="always", **_OPTS)(adjugate_sym3)

    @njit(**_OPTS)  # not inline="always": numba's inliner loses the non-finite test (numba 0.68)
    def _slide_products(acc, a0, a1, a2, s0, s1, s2, wa, ws, n):
        # acc[0..8] += wa f(a) - ws f(s), f = (I_0, I_1, I_2, I_0 I_0, I_0 I_1, I_0 I_2, I_1 I_1, I_1 I_2,
        # I_2 I_2) of guide rows a = (a0, a1, a2), s; wa, ws in {0, 1}. True if a holds NaN or +-Inf (wa = 1).
        c0, c1, c2, c3, c4, c5, c6, c7, c8 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7], acc[8]
        total = 0.0
        for x in range(n):
            u0 = wa * a0[x]
            u1 = wa * a1[x]
            u2 = wa * a2[x]
            v0 = ws * s0[x]
            v1 = ws * s1[x]
            v2 = ws * s2[x]
            total += u0 + u1 + u2
            c0[x] += u0 - v0
            c1[x] += u1 - v1
            c2[x] += u2 - v2
            c3[x] += u0 * a0[x] - v0 * s0[x]
            c4[x] += u0 * a1[x] - v0 * s1[x]
            c5[x] += u0 * a2[x] - v0 * s2[x]
            c6[x] += u1 * a1[x] - v1 * s1[x]
            c7[x] += u1 * a2[x] - v1 * s2[x]
            c8[x] += u2 * a2[x] - v2 * s2[x]
        return _nonfinite(total)

    @njit(inline="always", **_OPTS)
    def _stats_row(S, eps, kh, nw, T, n):
        # T = (mu_k (3), packed (Sigma_k + eps U)^-1 (00 01 02 11 12 22)) of one row from its 9 window
        # sums S; returns how many windows have a non-positive or non-finite determinant
        S0, S1, S2, S3, S4, S5, S6, S7, S8 = S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7], S[8]
        T0, T1, T2, T3, T4, T5, T6, T7, T8 = T[0], T[1], T[2], T[3], T[4], T[5], T[6], T[7], T[8]
        singular = 0
        for x in range(n):
            k = kh * nw[x]
            m0 = S0[x] * k
            m1 = S1[x] * k
            m2 = S2[x] * k
            s00 = S3[x] * k - m0 * m0 + eps
            s01 = S4[x] * k - m0 * m1
            s02 = S5[x] * k - m0 * m2
            s11 = S6[x] * k - m1 * m1 + eps
            s12 = S7[x] * k - m1 * m2
            s22 = S8[x] * k - m2 * m2 + eps
            c00, c01, c02, c11, c12, c22, det = _adjugate(s00, s01, s02, s11, s12, s22)
            singular += not (det > 0.0 and det < _INF)
            f = 1.0 / det
            T0[x] = m0
            T1[x] = m1
            T2[x] = m2
            T3[x] = c00 * f
            T4[x] = c01 * f
            T5[x] = c02 * f
            T6[x] = c11 * f
            T7[x] = c12 * f
            T8[x] = c22 * f
        return singular

    @njit(inline="always", **_OPTS)
    def _store_stats(T, kh, nw, mu, icn, mean64, inv64, want64, y):
        # row y of mu, icn = inverse / n (their dtype) and, if want64, of the float64 mean64 / inv64
        for c in range(3):
            mu[c, y] = T[c]
        for c in range(6):
            o = icn[c, y]
            t = T[3 + c]
            for x in range(o.shape[0]):
                o[x] = t[x] * (kh * nw[x])
        if want64:
            for c in range(3):
                mean64[c, y] = T[c]
            for c in range(6):
                inv64[c, y] = T[3 + c]

    @njit(**_OPTS)
    def _stats_part(guide, r, eps, inv_nh, inv_nw, mu, icn, mean64, inv64, want64, y0, y1):
        # Guide statistics of rows y0..y1: vertical window sums of the 9 guide channels (float64; rows enter
        # and leave the window), window sums along x from prefix sums, then mu_k and the inverse.
        # Returns (rows holding NaN / +-Inf, windows without a finite positive determinant).
        _, h, w = guide.shape
        acc = np.zeros((9, w))
        P = np.zeros((9, w + 1))
        S = np.empty((9, w))
        T = np.empty((9, w))
        zero = np.zeros(w, guide.dtype)
        bad = 0
        singular = 0
        for yy in range(max(y0 - r, 0), min(y0 + r, h - 1) + 1):
            bad += _slide_products(acc, guide[0, yy], guide[1, yy], guide[2, yy], zero, zero, zero, 1.0, 0.0, w)
        for y in range(y0, y1):
            for c in range(9):
                a = acc[c]
                Pc = P[c]
                s = 0.0
                for x in range(w):
                    s += a[x]
                    Pc[x + 1] = s
                _window(Pc, S[c], r, w)
            singular += _stats_row(S, eps, inv_nh[y], inv_nw, T, w)
            _store_stats(T, inv_nh[y], inv_nw, mu, icn, mean64, inv64, want64, y)
            ya = y + r + 1
            ys = y - r
            if y + 1 < y1 and (ya < h or ys >= 0):
                a = min(ya, h - 1)  # weight 0 when out of range
                s = max(ys, 0)
                bad += _slide_products(acc, guide[0, a], guide[1, a], guide[2, a], guide[0, s], guide[1, s],
                                       guide[2, s], 1.0 if ya < h else 0.0, 1.0 if ys >= 0 else 0.0, w)
        return bad, singular

    @njit(parallel=True, **_OPTS)
    def _guide_stats(guide, r, eps, inv_nh, inv_nw, mu, icn, mean64, inv64, want64, flags, nt):
        # _stats_part over row chunks; flags = (rows with NaN / +-Inf, singular windows)
        h = guide.shape[1]
        parts, chunk = _chunks(h, nt)
        out = np.zeros((parts, 2), np.int64)
        for ci in prange(parts):
            out[ci] = _stats_part(guide, r, eps, inv_nh, inv_nw, mu, icn, mean64, inv64, want64, ci * chunk,
                                  min(h, (ci + 1) * chunk))
        flags[0] = out[:, 0].sum()
        flags[1] = out[:, 1].sum()

    # ------------------------------------------------------------------ the guided filter
    @njit(**_OPTS)  # not inline="always": it returns the non-finite test (see the module docstring)
    def _slide_inputs(acc, pa, a0, a1, a2, wa, ps, s0, s1, s2, ws, t, binarise):
        # acc[c] += wa f(pa) - ws f(ps), f = [p, p I_0, p I_1, p I_2] of rows p (src values, binarised as p > t
        # if binarise) with guide rows a / s; wa, ws in {0, 1}. True if the entering row holds NaN / +-Inf.
        c0, c1, c2, c3 = acc[0], acc[1], acc[2], acc[3]
        total = 0.0
        for x in range(pa.shape[0]):
            u = wa * ((1.0 if pa[x] > t else 0.0) if binarise else float(pa[x]))
            v = ws * ((1.0 if ps[x] > t else 0.0) if binarise else float(ps[x]))
            total += u
            c0[x] += u - v
            c1[x] += u * a0[x] - v * s0[x]
            c2[x] += u * a1[x] - v * s1[x]
            c3[x] += u * a2[x] - v * s2[x]
        return _nonfinite(total)

    @njit(**_OPTS)
    def _filter_stream(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, ring_p, ring_ab,
                       rmin, rmax, cmin, cmax):
        # _filter_serial in one sweep down the crop box[0:4] (output box box[4:8]; dst may be src): column
        # window sums first (float64 running sums of [p, I p] as rows enter and leave, the leaving ones kept in
        # ring_p (>= 2r + 2 rows of src's dtype)), then the row windows of those sums, the coefficients of the
        # row, kept in ring_ab (>= 2r + 2 rows of 4 x width), whose column sums and row windows give the output
        # r rows later. The working set stays in the caches. Returns the rows holding non-finite values.
        y0, y1, x0, x1 = box[0], box[1], box[2], box[3]
        hc = y1 - y0
        wc = x1 - x0
        nring = ring_ab.shape[0]
        cols = slice(x0, x1)
        ocols = slice(box[6] - x0, box[7] - x0)  # output columns in the crop
        acc1 = np.zeros((4, wc))
        acc2 = np.zeros((4, wc))
        P = np.zeros((4, wc + 1))
        S = np.empty((4, wc))
        zero_p = np.zeros(wc, src.dtype)
        zero_ab = np.zeros(wc, ring_ab.dtype)
        bad = 0
        for yy in range(min(r, hc)):  # the column windows of coefficient row 0 without its last row
            ring_p[yy % nring] = src[y0 + yy, cols]
            gy = y0 + yy
            bad += _slide_inputs(acc1, ring_p[yy % nring], guide[0, gy, cols], guide[1, gy, cols], guide[2, gy, cols],
                                 1.0, zero_p, zero_p, zero_p, zero_p, 0.0, t, binarise)
        for s in range(hc + r):
            if s < hc:  # coefficient row s: column windows [s - r, s + r]
                ya = s + r
                ys = s - r - 1
                if ya < hc:
                    ring_p[ya % nring] = src[y0 + ya, cols]
                ga = y0 + min(ya, hc - 1)  # weight 0 when out of range
                gs = y0 + max(ys, 0)
                bad += _slide_inputs(acc1, ring_p[ya % nring] if ya < hc else zero_p, guide[0, ga, cols],
                                     guide[1, ga, cols], guide[2, ga, cols], 1.0 if ya < hc else 0.0,
                                     ring_p[ys % nring] if ys >= 0 else zero_p, guide[0, gs, cols], guide[1, gs, cols],
                                     guide[2, gs, cols], 1.0 if ys >= 0 else 0.0, t, binarise)
                _scan_window4(acc1[0], acc1[1], acc1[2], acc1[3], P, S[0], S[1], S[2], S[3], r)
                ab = ring_ab[s % nring]
                _coefficients_row(S[0], S[1], S[2], S[3], mu, icn, y0 + s, cols, inv_nh[y0 + s], inv_nw[cols],
                                  ab[0], ab[1], ab[2], ab[3])
            out_y = s - r  # output row: column windows [s - 2r, s] of the coefficients
            for c in range(4):
                add = ring_ab[s % nring, c] if s < hc else zero_ab
                sub = ring_ab[(s - 2 * r - 1) % nring, c] if s - 2 * r - 1 >= 0 else zero_ab
                a = acc2[c]
                for j in range(wc):
                    a[j] += add[j] - sub[j]
            gy = y0 + out_y
            if out_y >= 0 and box[4] <= gy < box[5]:
                _scan_window4(acc2[0], acc2[1], acc2[2], acc2[3], P, S[0], S[1], S[2], S[3], r)
                g = slice(box[6], box[7])
                lo, hi = _output_row(S[0, ocols], S[1, ocols], S[2, ocols], S[3, ocols], guide, gy, g, inv_nh[gy],
                                     inv_nw[g], dst[gy, g], cmin[g], cmax[g])
                rmin[gy] = min(rmin[gy], lo)
                rmax[gy] = max(rmax[gy], hi)
        return bad

    @njit(inline="always", **_OPTS)
    def _ring_size(r, hc):
        # rows kept by _filter_stream's rings: 2r + 2 (a row leaves 2r + 1 rows after it entered), at most hc
        return min(2 * r + 2, hc)

    @njit(**_OPTS)
    def _filter_serial(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, ring, rmin, rmax, cmin, cmax):
        # one guided filtering of src (H, W) on the crop box[0:4], written into dst on the output box box[4:8]
        # (dst may be src), on one thread: _filter_stream, its coefficient rows in the flat ring (at least
        # (2r + 2) * 4 * width elements); returns the rows holding non-finite values (binarise=False only)
        hc = box[1] - box[0]
        wc = box[3] - box[2]
        nring = _ring_size(r, hc)
        ring_p = np.empty((nring, wc), src.dtype)  # small (< 128 kB for VOC): no page faults
        ring_ab = ring[:nring * 4 * wc].reshape((nring, 4, wc))
        return _filter_stream(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, ring_p, ring_ab,
                              rmin, rmax, cmin, cmax)

    @njit(parallel=True, **_OPTS)
    def _filter_bands(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, rings, rmin, rmax, cmin, cmax,
                      nt):
        # _filter_serial with the output rows split into one band per thread, each computed from its own crop
        # (the band plus 2r rows of halo: exact). dst must not be src (a band's halo is another's output).
        # rings: (nt, ring size); rmin / rmax (parts, H), cmin / cmax (parts, W): per band. Returns the rows
        # holding non-finite values.
        oy0, oy1 = box[4], box[5]
        parts, chunk = _chunks(oy1 - oy0, nt)
        bad = np.zeros(parts, np.int64)
        for b in prange(parts):
            b0 = oy0 + b * chunk
            b1 = min(oy1, b0 + chunk)
            band = box.copy()
            band[0] = max(box[0], b0 - 2 * r)
            band[1] = min(box[1], b1 + 2 * r)
            band[4] = b0
            band[5] = b1
            bad[b] = _filter_serial(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, band, r, rings[b], rmin[b],
                                    rmax[b], cmin[b], cmax[b])
        return bad.sum()

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

    # ------------------------------------------------------------------ Otsu's threshold
    @njit(cache=True)  # not inline="always": numba's inliner loses the non-finite test (numba 0.68)
    def _seg_range(seg):
        # (min, max, holds NaN or +-Inf) of a non-empty 1-D array
        lo = seg[0]
        hi = seg[0]
        total = 0.0
        for j in range(seg.shape[0]):
            v = seg[j]
            total += v * 0.0  # NaN for NaN and +-Inf (this code is compiled without fast-math)
            lo = min(lo, v)
            hi = max(hi, v)
        return lo, hi, _nonfinite(total)

    @njit(parallel=True, cache=True)
    def _minmax(x, nchunks, lo, hi, bad):
        # per-chunk minimum / maximum of the rows of x (M, N) -> lo, hi (M * nchunks,); bad: NaN / +-Inf seen
        m, n = x.shape
        size = (n + nchunks - 1) // nchunks
        for task in prange(m * nchunks):
            row = x[task // nchunks]
            j0 = min((task % nchunks) * size, n - 1)
            lo[task], hi[task], bad[task] = _seg_range(row[j0:min(n, j0 + size)])

    @njit(inline="always", cache=True)
    def _bin(v, lo, scale, step, one, top):
        # numpy.histogram's bin of v (as a float): the estimate trunc((v - lo) * scale), fixed up against the
        # edges i * step + lo (the bins of sgwsss.refine.otsu, recomputed exactly as they were built, so no
        # lookups: the loops vectorise); one = 1, top = nbins - 1 in v's dtype
        t = min(max(np.floor((v - lo) * scale), one - one), top)  # (v - lo) * scale >= 0: floor = trunc
        t = t - one if v < t * step + lo else t
        return t + one if (t < top) and (v >= (t + one) * step + lo) else t

    @njit(inline="always", cache=True)
    def _bins(row, lo, scale, step, one, top, idx):
        # idx[x] = _bin(row[x]) for a whole row (counting is a separate loop)
        for x in range(row.shape[0]):
            idx[x] = np.int32(_bin(row[x], lo, scale, step, one, top))

    @njit(parallel=True, cache=True)
    def _histograms(x, lo, scale, step, top, nchunks, counts):
        # bins of the rows of x (M, N) (see _bin; lo, scale, step (M,), top = nbins - 1 in x's dtype); each row
        # in nchunks pieces so that one map also spreads over the threads; counts (M * nchunks, nbins)
        m, n = x.shape
        size = (n + nchunks - 1) // nchunks
        for task in prange(m * nchunks):
            i = task // nchunks
            j0 = (task % nchunks) * size
            seg = x[i, j0:min(n, j0 + size)]
            idx = np.empty(seg.shape[0], np.int32)
            _bins(seg, lo[i], scale[i], step[i], scale[i] / scale[i], top, idx)
            cnt = counts[task]
            for j in range(idx.shape[0]):
                cnt[np.uint64(idx[j])] += 1

    @njit(cache=True)
    def otsu_search(counts, edges):
        """scikit-image's ``threshold_otsu`` on a histogram: counts (nbins,), edges (nbins + 1,) -> the threshold.

        Counts as float32, bin centres and class means in the edges' dtype, the same
        sequential running sums and the first maximum, so the result is bit-identical.
        """
        nbins = counts.shape[0]
        c = counts.astype(np.float32)
        centers = ((edges[:-1] + edges[1:]) / 2.0).astype(edges.dtype)  # exact: halving
        w1 = np.empty(nbins, np.float32)
        w2 = np.empty(nbins, np.float32)
        m1 = np.empty(nbins, edges.dtype)
        m2 = np.empty(nbins, edges.dtype)
        for forward in (True, False):
            s = np.float32(0)
            sm = edges[0] - edges[0]
            for j in range(nbins):
                i = j if forward else nbins - 1 - j
                s += c[i]
                sm += c[i] * centers[i]
                mean = sm / s if s > 0 else sm * np.nan  # empty end bins: NaN, as numpy's 0/0 (numba would raise)
                if forward:
                    w1[i] = s
                    m1[i] = mean
                else:
                    w2[i] = s
                    m2[i] = mean
        best = 0
        top = -_INF
        for i in range(nbins - 1):
            d = m1[i] - m2[i + 1]
            v = w1[i] * w2[i + 1] * (d * d)
            if v != v:  # NaN (an empty end bin of a map whose range is below float32's resolution): as
                best = i  # numpy.argmax, the first NaN wins
                break
            if v > top:  # first maximum, as numpy.argmax
                top = v
                best = i
        return centers[best]

    # ------------------------------------------------------------------ refinement pieces (row parts)
    @njit(cache=True)
    def _range_part(q, rmin, rmax, cmin, cmax, ya, yb):
        # rows ya..yb of q: each row's min / max (rmin / rmax (H,)) and the columns' (cmin / cmax (W,), min / max
        # with what they hold); returns the rows holding NaN or +-Inf
        bad = 0
        for y in range(ya, yb):
            row = q[y]
            rmin[y], rmax[y], nonfinite = _seg_range(row)
            bad += nonfinite
            for x in range(row.shape[0]):
                cmin[x] = min(cmin[x], row[x])
                cmax[x] = max(cmax[x], row[x])
        return bad

    @njit(cache=True)
    def _histogram_part(q, box, lo, scale, step, cnt, ya, yb):
        # cnt[(x & 3) * nbins + bin] += 1 for the float32 q on rows ya..yb, columns box[2]..box[3] (cnt: 4 nbins):
        # four interleaved histograms (fewer store-to-load stalls on runs of equal bins)
        nbins = cnt.shape[0] // 4
        idx = np.empty(box[3] - box[2], np.int32)
        for y in range(ya, yb):
            _bins(q[y, box[2]:box[3]], lo, scale, step, np.float32(1), np.float32(nbins - 1), idx)
            for x in range(idx.shape[0]):
                cnt[np.uint64(idx[x] + (x & 3) * nbins)] += 1

    @njit(cache=True)
    def _outside_part(src, q, t, box, rmin, rmax, cmin, cmax, ya, yb):
        # q = [src > t] (0/1) on rows ya..yb outside box (y0, y1, x0, x1) (q may be src), with row / column
        # minima and maxima; returns the numbers of zeros and ones written
        w = q.shape[1]
        n1 = 0
        nt = 0
        for y in range(ya, yb):
            row = q[y]
            srow = src[y]
            inside = box[0] <= y < box[1]
            lo = np.float32(_INF)
            hi = np.float32(-_INF)
            for seg in range(2 if inside else 1):
                a = box[3] if (inside and seg == 1) else 0
                b = box[2] if (inside and seg == 0) else w
                for x in range(a, b):
                    v = np.float32(1) if srow[x] > t else np.float32(0)
                    row[x] = v
                    n1 += v > 0
                    lo = min(lo, v)
                    hi = max(hi, v)
                    cmin[x] = min(cmin[x], v)
                    cmax[x] = max(cmax[x], v)
                nt += max(b - a, 0)
            rmin[y] = min(rmin[y], lo)
            rmax[y] = max(rmax[y], hi)
        return nt - n1, n1

    @njit(parallel=True, cache=True)
    def _range(q, rmin, rmax, cmin, cmax, nt):
        h = q.shape[0]
        parts, chunk = _chunks(h, nt)
        bad = np.zeros(parts, np.int64)
        for ci in prange(parts):
            bad[ci] = _range_part(q, rmin[ci], rmax[ci], cmin[ci], cmax[ci], ci * chunk, min(h, (ci + 1) * chunk))
        return bad.sum()

    @njit(parallel=True, cache=True)
    def _histogram_box(q, box, lo, scale, step, counts, nt):
        parts, chunk = _chunks(box[1] - box[0], nt)
        for ci in prange(parts):
            _histogram_part(q, box, lo, scale, step, counts[ci], box[0] + ci * chunk,
                            min(box[1], box[0] + (ci + 1) * chunk))

    @njit(parallel=True, cache=True)
    def _binarise_outside(src, q, t, box, rmin, rmax, cmin, cmax, nt):
        h = q.shape[0]
        parts, chunk = _chunks(h, nt)
        out = np.zeros((parts, 2), np.int64)
        for ci in prange(parts):
            out[ci] = _outside_part(src, q, t, box, rmin[ci], rmax[ci], cmin[ci], cmax[ci], ci * chunk,
                                    min(h, (ci + 1) * chunk))
        return out[:, 0].sum(), out[:, 1].sum()

    # ------------------------------------------------------------------ refinement bookkeeping
    @njit(cache=True)
    def _reduce(parts, h, w, stats):
        # per-part minima / maxima (parts (4, P, L)) -> stats = (row min (H,), row max, column min (W,), column
        # max) and the map's (min, max); resets the parts for the next pass
        for y in range(h):
            stats[0, y] = parts[0, :, y].min()
            stats[1, y] = parts[1, :, y].max()
        for x in range(w):
            stats[2, x] = parts[2, :, x].min()
            stats[3, x] = parts[3, :, x].max()
        parts[0] = _INF
        parts[1] = -_INF
        parts[2] = _INF
        parts[3] = -_INF
        return stats[0, :h].min(), stats[1, :h].max()

    @njit(cache=True)
    def _edges(lo, hi, e):
        # numpy's bins for a float32 map (as sgwsss.refine.otsu): e[i] = i * step + lo with step = (hi - lo) / nbins
        # in float32, the last edge hi; returns (the estimate's scale nbins / (hi - lo), step)
        nbins = e.shape[0] - 1
        span = hi - lo
        step = np.float32(span / np.float64(nbins))  # the float32 quotient (double rounding is exact here)
        for i in range(nbins):
            e[i] = np.float32(i) * step + lo
        e[nbins] = hi
        return np.float32(nbins / np.float64(span)), step

    @njit(inline="always", cache=True)
    def _span(values, t, above):
        # first and one-past-last index where values > t (above) or values <= t; (0, 0) if none
        n = values.shape[0]
        a = 0
        while a < n and (values[a] > t) != above:
            a += 1
        if a == n:
            return 0, 0
        b = n
        while (values[b - 1] > t) != above:
            b -= 1
        return a, b

    @njit(cache=True)
    def _set_box(box, y0, y1, x0, x1, oy0, oy1, ox0, ox1):
        box[0] = y0
        box[1] = y1
        box[2] = x0
        box[3] = x1
        box[4] = oy0
        box[5] = oy1
        box[6] = ox0
        box[7] = ox1

    @njit(cache=True)
    def _boxes(t, stats, r, h, w, skip, box):
        # Crop (box[0:4]) and output box (box[4:8]) of the next filtering of [q > t] from the rows' and
        # columns' minima / maxima (stats). Returns 0: no pixel above t; 1: all above t and skip (a constant
        # map, returned by the filter); 2: filter. Pixels that differ from a 4-neighbour lie within 1 px of
        # both a one and a zero; 2r from them the output is the input, and 4r of margin make the crop exact.
        ry = _span(stats[1, :h], t, True)
        if ry[1] == 0:
            return 0
        zy = _span(stats[0, :h], t, False)
        if zy[1] == 0 and skip:
            return 1
        if not skip:
            _set_box(box, 0, h, 0, w, 0, h, 0, w)
            return 2
        rx = _span(stats[3, :w], t, True)
        zx = _span(stats[2, :w], t, False)
        ay0 = max(ry[0], zy[0]) - 1
        ay1 = min(ry[1], zy[1]) + 1
        ax0 = max(rx[0], zx[0]) - 1
        ax1 = min(rx[1], zx[1]) + 1
        _set_box(box, max(ay0 - 4 * r, 0), min(ay1 + 4 * r, h), max(ax0 - 4 * r, 0), min(ax1 + 4 * r, w),
                 max(ay0 - 2 * r, 0), min(ay1 + 2 * r, h), max(ax0 - 2 * r, 0), min(ax1 + 2 * r, w))
        return 2

    @njit(cache=True)
    def _decide(counts, edges, lo, hi, scale, step, n0, n1, threshold, binary, stats, r, h, w, skip, box):
        # The threshold of this iteration and what to do (0: output 0, 1: output 1, 2: filter the box).
        # counts: the histogram parts of the pixels in the last output box (Otsu only, then reset); n0 / n1
        # zeros and ones outside it; edges: from _edges; threshold: NaN for Otsu's.
        if not binary:
            _set_box(box, 0, h, 0, w, 0, h, 0, w)
            return lo, 2
        t = lo  # a constant map's Otsu threshold is its value
        if threshold == threshold:
            t = np.float32(threshold)
        elif hi > lo:
            nbins = edges.shape[0] - 1
            hist = counts.sum(axis=0).reshape((4, nbins)).sum(axis=0)
            one, top = np.float32(1), np.float32(nbins - 1)
            if n0:
                hist[np.int64(_bin(np.float32(0), lo, scale, step, one, top))] += n0
            if n1:
                hist[np.int64(_bin(np.float32(1), lo, scale, step, one, top))] += n1
            counts[:] = 0
            t = otsu_search(hist, edges)
        return t, _boxes(t, stats, r, h, w, skip, box)

    @njit(cache=True)
    def _constant(q, value, parts, hbox):
        # q = value (0 or 1) everywhere, recorded as the row / column minima and maxima
        q[:] = value
        parts[:, 0] = value
        hbox[:] = 0

    @njit(cache=True)
    def _refine_serial(q, guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold, filtered, skip, ring, parts, stats,
                       counts, edges, box, cycles):
        # Sec. 3.3 of Ke & Hsu on one float32 map q (H, W), in place, on one thread (refine_maps); False if q is
        # not finite. cycles (3,): cycle counts of PHASES.
        h, w = q.shape
        c0 = _cycles()
        parts[0] = _INF
        parts[1] = -_INF
        parts[2] = _INF
        parts[3] = -_INF
        counts[:] = 0
        if _range_part(q, parts[0, 0], parts[1, 0], parts[2, 0], parts[3, 0], 0, h):
            return False
        hbox = np.array([0, h, 0, w], np.int64)  # where q is not a known 0/1 mask
        n0 = n1 = 0
        for it in range(iterations):
            lo, hi = _reduce(parts, h, w, stats)
            binary = it == 0 or not filtered
            scale = step = np.float32(1)
            if binary and threshold != threshold and hi > lo:
                scale, step = _edges(lo, hi, edges)
                _histogram_part(q, hbox, lo, scale, step, counts[0], hbox[0], hbox[1])
            t, kind = _decide(counts, edges, lo, hi, scale, step, n0, n1, threshold, binary, stats, r, h, w, skip, box)
            c1 = _cycles()
            cycles[0] += c1 - c0
            if kind < 2:  # constant: 0 stays 0; 1 becomes 0 at the next Otsu threshold (its own value)
                _constant(q, np.float32(kind), parts, hbox)
                n0, n1 = (0, h * w) if kind else (h * w, 0)
                c0 = _cycles()
                cycles[2] += c0 - c1
                continue
            _filter_serial(q, q, t, binary, guide, mu, icn, inv_nh, inv_nw, box, r, ring, parts[0, 0], parts[1, 0],
                           parts[2, 0], parts[3, 0])
            c0 = _cycles()
            cycles[1] += c0 - c1
            hbox[:] = box[4:8]
            n0 = n1 = 0
            if box[4] > 0 or box[5] < h or box[6] > 0 or box[7] < w:
                n0, n1 = _outside_part(q, q, t, hbox, parts[0, 0], parts[1, 0], parts[2, 0], parts[3, 0], 0, h)
            c1 = _cycles()
            cycles[2] += c1 - c0
            c0 = c1
        return True

    @njit(parallel=True, cache=True)
    def _refine_parallel(maps, index, guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold, filtered, skip, rings,
                         ok, cycles):
        # _refine_serial on the maps maps[index[k]], one map per thread (rings: one row per map)
        h, w = maps.shape[1], maps.shape[2]
        for k in prange(index.shape[0]):
            parts = np.empty((4, 1, max(h, w)), np.float32)
            stats = np.empty((4, max(h, w)), np.float32)
            counts = np.zeros((1, 1024), np.int64)
            edges = np.empty(257, np.float32)
            box = np.zeros(8, np.int64)
            ok[k] = _refine_serial(maps[index[k]], guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold, filtered,
                                   skip, rings[k], parts, stats, counts, edges, box, cycles[k])



# ---------------------------------------------------------------------- Python entry points
def _need():
    if numba is None:
        raise RuntimeError("the fused CPU kernels need numba (pip install numba)")


def _parts(ws: Workspace, h: int, w: int) -> np.ndarray:
    """Per-thread row / column minima and maxima: (4, threads, max(H, W)) float32."""
    n = numba.config.NUMBA_NUM_THREADS
    return ws.get("parts", 4 * n * max(h, w), np.float32).reshape(4, n, max(h, w))


def guide_stats(guide: np.ndarray, radius: int, eps: float, inv_nh: np.ndarray, inv_nw: np.ndarray,
                dtype=np.float32, want64: bool = False, workspace: Workspace | None = None):
    """Guide statistics of one (3, H, W) guide (float32 or float64 values, float64 arithmetic).

    Returns ``(mu, icn, mean64, inv64, flags)``: ``mu`` (3, H, W) window means and ``icn``
    (6, H, W) packed ``(Sigma_k + eps U)^-1 / n_k`` in ``dtype`` (in ``workspace`` when
    given, else new); ``mean64`` / ``inv64`` the float64 means and packed inverses if
    ``want64`` (else None); ``flags = (rows with NaN / Inf, windows not invertible)``.
    """
    _need()
    _, h, w = guide.shape
    if workspace is None:
        mu, icn = np.empty((3, h, w), dtype), np.empty((6, h, w), dtype)
    else:
        mu = workspace.get("mu", 3 * h * w, dtype).reshape(3, h, w)
        icn = workspace.get("icn", 6 * h * w, dtype).reshape(6, h, w)
    mean64 = np.empty((3, h, w) if want64 else (3, 1, 1))
    inv64 = np.empty((6, h, w) if want64 else (6, 1, 1))
    flags = np.zeros(2, np.int64)
    _guide_stats(guide, int(radius), float(eps), inv_nh, inv_nw, mu, icn, mean64, inv64, bool(want64), flags,
                 numba.get_num_threads())
    return mu, icn, (mean64 if want64 else None), (inv64 if want64 else None), (int(flags[0]), int(flags[1]))


def _ring_elements(radius: int, width: int) -> int:
    """Elements of one coefficient ring of :func:`_filter_stream` (2r + 2 rows of 4 x width)."""
    return (2 * radius + 2) * 4 * width


def _filter_threads(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, ws, parts) -> int:
    """One guided filtering of ``src`` (H, W) on the crop ``box[0:4] = (y0, y1, x0, x1)``, written into ``dst``
    (not ``src``) on the output box ``box[4:8]``, in one band of rows per thread; returns the rows of ``src``
    holding NaN / Inf (``binarise=False`` only)."""
    nt = numba.get_num_threads()
    h, w = src.shape
    size = _ring_elements(r, w)
    rings = ws.get("rings", nt * size, guide.dtype).reshape(nt, size)
    return int(_filter_bands(src, dst, t, binarise, guide, mu, icn, inv_nh, inv_nw, box, r, rings, parts[0][:, :h],
                             parts[1][:, :h], parts[2][:, :w], parts[3][:, :w], nt))


def filter_maps(src: np.ndarray, guide: np.ndarray, mu: np.ndarray, icn: np.ndarray, inv_nh: np.ndarray,
                inv_nw: np.ndarray, radius: int, out: np.ndarray, box=None, workspace: Workspace | None = None) -> int:
    """Guided-filter the maps of one image with a colour guide into ``out``; returns 1 + k of a non-finite map k, else 0.

    ``src``: (K, H, W) float32/float64 maps or uint8 0/1 masks; ``guide`` (3, H, W), ``mu``
    (3, H, W), ``icn`` (6, H, W) as from :func:`guide_stats`, all in the compute dtype;
    ``out`` (K, H, W) in that dtype. ``box``: ``(crop, output box)`` as two
    ``(y0, y1, x0, x1)`` (default: the whole image); only the output box of ``out`` is written.
    """
    _need()
    k, h, w = src.shape
    crop, obox = box if box is not None else ((0, h, 0, w), (0, h, 0, w))
    b = np.array([*crop, *obox], np.int64)
    ws = workspace if workspace is not None else Workspace()
    parts = _parts(ws, h, w)
    for i in range(k):
        if _filter_threads(src[i], out[i], 0, src.dtype == np.uint8, guide, mu, icn, inv_nh, inv_nw, b, int(radius),
                           ws, parts):
            return i + 1
    return 0


def active_rows_cols(p: np.ndarray):
    """Rows (H,) and columns (W,) holding a pixel that differs from a 4-neighbour in any map of ``p`` (K, H, W)."""
    _need()
    _, h, w = p.shape
    rows = np.zeros(h, dtype=np.bool_)
    cols = np.zeros(w, dtype=np.bool_)
    _active(p, rows, cols)
    return rows, cols


def _pieces(m: int, n: int) -> int:
    """Pieces per row so that ``m`` rows of ``n`` values keep every thread busy (pieces >= 32k values)."""
    return max(1, min(-(-numba.get_num_threads() // max(m, 1)), n // 32768))


def histograms(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, step: np.ndarray, nbins: int) -> np.ndarray:
    """Bin counts (M, nbins) of the rows of ``x`` (M, N), exactly as :func:`sgwsss.refine.otsu._histograms` bins
    them: ``t = trunc((v - lo) * scale)`` fixed up against the edges ``i * step + lo`` (all in x's dtype)."""
    _need()
    m, n = x.shape
    k = _pieces(m, n)
    counts = np.zeros((m * k, nbins), dtype=np.int64)
    _histograms(x, lo, scale, step, x.dtype.type(nbins - 1), k, counts)
    return counts.reshape(m, k, nbins).sum(axis=1) if k > 1 else counts


def minmax(x: np.ndarray, with_finite: bool = False):
    """Row-wise minimum and maximum of ``x`` (M, N), N >= 1 -> two (M,) arrays of x's dtype.

    ``with_finite=True`` also returns a (M,) bool array: the row holds no NaN or +-Inf
    (the minimum and maximum of a row with NaN mean nothing).
    """
    _need()
    m, n = x.shape
    k = _pieces(m, n)
    lo = np.empty(m * k, dtype=x.dtype)
    hi = np.empty(m * k, dtype=x.dtype)
    bad = np.empty(m * k, dtype=np.bool_)
    _minmax(x, k, lo, hi, bad)
    out = lo.reshape(m, k).min(axis=1), hi.reshape(m, k).max(axis=1)
    return (*out, ~bad.reshape(m, k).any(axis=1)) if with_finite else out


def _refine_threads(q, guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold, filtered, skip, ws, times) -> bool:
    """:func:`_refine_serial` with each filtering split into bands of rows over the threads (one map, several
    threads): two buffers, the filter reads one and writes the other."""
    h, w = q.shape
    nt = numba.get_num_threads()
    parts = _parts(ws, h, w)
    stats = ws.get("stats", 4 * max(h, w), np.float32).reshape(4, max(h, w))
    counts = ws.get("counts", parts.shape[1] * 1024, np.int64).reshape(parts.shape[1], 1024)
    edges = ws.get("edges", 257, np.float32)
    box = ws.get("box", 8, np.int64)
    spare = ws.get("spare", h * w, np.float32).reshape(h, w)
    cur, nxt = q, spare
    clock = time.perf_counter()

    def tick(phase):
        nonlocal clock
        now = time.perf_counter()
        times[phase] += now - clock
        clock = now

    parts[:] = np.array([_INF, -_INF, _INF, -_INF], np.float32)[:, None, None]
    counts[:] = 0
    if _range(q, parts[0][:, :h], parts[1][:, :h], parts[2][:, :w], parts[3][:, :w], nt):
        return False
    hbox = np.array([0, h, 0, w], np.int64)  # where the map is not a known 0/1 mask
    n0 = n1 = 0
    for it in range(iterations):
        lo, hi = (np.float32(v) for v in _reduce(parts, h, w, stats))  # numba returns Python floats
        binary = it == 0 or not filtered
        scale = step = np.float32(1)
        if binary and threshold != threshold and hi > lo:
            scale, step = (np.float32(v) for v in _edges(lo, hi, edges))
            if hbox[1] > hbox[0]:
                _histogram_box(cur, hbox, lo, scale, step, counts, nt)
        t, kind = _decide(counts, edges, lo, hi, scale, step, n0, n1, threshold, binary, stats, r, h, w, skip, box)
        t = np.float32(t)
        tick(0)
        if kind < 2:  # constant (see _refine_serial)
            _constant(cur, np.float32(kind), parts, hbox)
            n0, n1 = (0, h * w) if kind else (h * w, 0)
            tick(2)
            continue
        _filter_threads(cur, nxt, t, binary, guide, mu, icn, inv_nh, inv_nw, box, r, ws, parts)
        tick(1)
        hbox[:] = box[4:8]
        n0 = n1 = 0
        if box[4] > 0 or box[5] < h or box[6] > 0 or box[7] < w:
            n0, n1 = _binarise_outside(cur, nxt, t, hbox, parts[0][:, :h], parts[1][:, :h], parts[2][:, :w],
                                       parts[3][:, :w], nt)
        cur, nxt = nxt, cur
        tick(2)
    if cur is not q:
        q[:] = cur
    return True


def split_maps() -> bool:
    """Whether a map left over by the one-map-per-thread schedule is split over the threads (``SGWSSS_SPLIT_MAPS=1``)."""
    return os.environ.get("SGWSSS_SPLIT_MAPS", "0") == "1"


def _refine_waves(maps, index, guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold, filtered, skip, ws,
                  times):
    """The maps ``index`` one per thread (:func:`_refine_parallel`); returns the first non-finite channel or None.
    ``times[:3]`` gets the call's wall time split by the threads' cycle counts."""
    k = len(index)
    size = _ring_elements(r, maps.shape[2])
    rings = ws.get("rings_maps", k * size, np.float32).reshape(k, size)
    ok = np.zeros(k, np.bool_)
    cycles = np.zeros((k, 3))
    t0 = time.perf_counter()
    _refine_parallel(maps, np.asarray(index, np.int64), guide, mu, icn, inv_nh, inv_nw, r, iterations, threshold,
                     filtered, skip, rings, ok, cycles)
    total = cycles.sum(axis=0)
    share = total / total.sum() if total.sum() > 0 else np.array([0.0, 1.0, 0.0])  # no cycle counter: "filter"
    times += (time.perf_counter() - t0) * share
    bad = [c for c, fine in zip(index, ok) if not fine]
    return int(bad[0]) if bad else None


def refine_maps(maps: np.ndarray, index, guide: np.ndarray, radius: int, eps: float, iterations: int,
                threshold: float | None, filtered: bool, skip_constant: bool, workspace: Workspace,
                times: np.ndarray | None = None):
    """Self-guided refinement (Sec. 3.3 of Ke & Hsu) of the maps ``maps[index]`` of one image, in place.

    ``maps``: (C, H, W) float32 (C-contiguous); ``index``: the channels to refine;
    ``guide``: (3, H, W) float32 (C-contiguous). Each iteration binarises the map with its
    Otsu threshold (``threshold=None``: exactly :func:`sgwsss.refine.otsu.otsu_threshold`,
    256 bins) or the fixed ``threshold``, and guided-filters the mask (``filtered``: after
    the first iteration the filtered map itself is filtered). ``skip_constant``: only the
    bounding box of the mask's edges (plus margins) is filtered; elsewhere the output is
    the mask (exact).

    Scheduling: one parallel region per image, the maps spread over the threads, each map
    on one thread. With :func:`split_maps` (``SGWSSS_SPLIT_MAPS=1``) groups of T maps run
    so and each map left over runs with every filtering split into bands of rows over
    the T threads: faster on a quiet machine, but 3 parallel regions per iteration, which
    busy-waiting OpenMP threads (torch's libgomp, which numba shares) can slow down
    tenfold when the cores are shared with other processes.

    Returns None, or ``(argument, count)`` for what is wrong: ``("image", rows)`` non-finite
    guide values, ``("eps", windows)`` regularised covariances that are not invertible,
    ``("maps", channel)`` a non-finite map (some maps may be refined already). ``times``
    (4,) float64 accumulates seconds of ``("statistics", *PHASES)``.
    """
    _need()
    _, h, w = maps.shape
    times = np.zeros(4) if times is None else times
    t0 = time.perf_counter()
    inv_nh, inv_nw = window_lengths(h, radius), window_lengths(w, radius)
    mu, icn, _, _, flags = guide_stats(guide, radius, eps, inv_nh, inv_nw, np.float32, workspace=workspace)
    times[0] += time.perf_counter() - t0
    if flags[0] or flags[1]:
        return ("image", flags[0]) if flags[0] else ("eps", flags[1])
    fixed = np.nan if threshold is None else float(threshold)
    args = (guide, mu, icn, inv_nh, inv_nw, int(radius), int(iterations), fixed, bool(filtered), bool(skip_constant))
    index = [int(c) for c in index]
    nt = numba.get_num_threads()
    waves = len(index) - len(index) % nt if split_maps() and nt > 1 else len(index)
    if waves:
        bad = _refine_waves(maps, index[:waves], *args, workspace, times[1:])
        if bad is not None:
            return "maps", bad
    for c in index[waves:]:
        if not _refine_threads(maps[c], *args, workspace, times[1:]):
            return "maps", c
    return None
