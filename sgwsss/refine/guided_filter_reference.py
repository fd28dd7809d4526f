"""A short, readable float64 guided filter: the reference the fast one is tested and benchmarked against.

Eq. 6 of Ke & Hsu: in every window ``w_k`` of ``(2r+1) x (2r+1)`` pixels the output is
linear in the guide, ``G_i = a_k^T I_i + b_k``. He et al.'s closed form of ``a_k, b_k``
(which Eqs. 7-8 express as a kernel, ``G_p = sum_q K_pq(I) B_q``) is written out below
with window means; each pixel then averages the coefficients of the windows that
contain it. Windows are clipped to the image and every mean divides by the number of
pixels inside the clipped window, the border rule of
:func:`sgwsss.refine.guided_filter.guided_filter`. Plain numpy and scipy in float64:
slow, and meant to be obviously right.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_guided_filter"]


def reference_guided_filter(guide, src, radius: int, eps: float) -> np.ndarray:
    """Float64 guided filter of one map: guide (C, H, W) with C = 3 or 1, src (H, W) -> (H, W).

    ``radius`` is ``r`` (window ``2r + 1``), ``eps`` the regulariser of ``Sigma_k + eps U``.
    """
    from scipy.ndimage import uniform_filter

    guide = np.asarray(guide, dtype=np.float64)
    p = np.asarray(src, dtype=np.float64)
    c = guide.shape[0]
    size = 2 * radius + 1
    inside = uniform_filter(np.ones(p.shape), size, mode="constant")  # share of each window inside the image

    def mean(x):  # mean over each clipped window
        return uniform_filter(x, size, mode="constant") / inside

    mu = np.stack([mean(g) for g in guide])  # mu_k: (C, H, W)
    cov_ip = np.stack([mean(g * p) for g in guide]) - mu * mean(p)  # cov_k(I, p): (C, H, W)
    sigma = np.empty(p.shape + (c, c))  # Sigma_k: (H, W, C, C)
    for i in range(c):
        for j in range(c):
            sigma[..., i, j] = mean(guide[i] * guide[j]) - mu[i] * mu[j]
    a = np.linalg.solve(sigma + eps * np.eye(c), np.moveaxis(cov_ip, 0, -1)[..., None])[..., 0]
    a = np.moveaxis(a, -1, 0)  # a_k: (C, H, W)
    b = mean(p) - (a * mu).sum(0)  # b_k: (H, W)
    return (np.stack([mean(x) for x in a]) * guide).sum(0) + mean(b)  # Eq. 6, averaged over the windows
