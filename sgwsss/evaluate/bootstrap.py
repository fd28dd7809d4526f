"""Paired bootstrap over images for the difference in mIoU between two methods.

A claim such as "the self-guided stage beats the affinity stage" (the paper's Table 1) is a statement
about ``mIoU(A) - mIoU(B)`` on a split. Both methods are scored on the same ``N`` images, so the
images are resampled *together*: each resample draws ``N`` image ids with replacement, sums each
method's per-image confusion matrices over the drawn ids and recomputes both mIoUs exactly as
:func:`sgwsss.evaluate.metrics.mean_iou` does on a whole split (IoU accumulated over the images, mean
over the classes whose union is non-zero). The percentile interval of the resampled differences then
says whether the split resolves the claim's sign.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> conf = rng.integers(0, 50, size=(20, 3, 3))
>>> r = paired_bootstrap(conf, conf, n_resamples=200, seed=0)
>>> (r.delta, r.low, r.high, r.verdict("greater"))
(0.0, 0.0, 0.0, 'not resolved')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np

from sgwsss.evaluate.metrics import _to_numpy

__all__ = ["miou_batch", "paired_bootstrap", "BootstrapResult", "verdict"]

Claim = Literal["greater", "less"]
SUPPORTED, CONTRADICTED, NOT_RESOLVED = "supported", "contradicted", "not resolved"
_CHUNK = 1024  # resamples per matrix product


def miou_batch(conf: np.ndarray) -> np.ndarray:
    """mIoU of each of a stack of confusion matrices, vectorised.

    The same number as :func:`~sgwsss.evaluate.metrics.mean_iou` for each matrix: per-class
    ``TP / (TP + FP + FN)``, averaged over the classes whose union is non-zero.

    Args:
        conf: ``(..., C, C)`` counts (rows ground truth, columns prediction).

    Returns:
        ``(...)`` float64 mIoU; NaN where no class has a non-zero union.
    """
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(axis=-1) + c.sum(axis=-2) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    n = present.sum(axis=-1)
    return np.divide(iou.sum(axis=-1), n, out=np.full(n.shape, np.nan), where=n > 0)


def verdict(low: float, high: float, claim: Claim) -> str:
    """What an interval for ``mIoU(A) - mIoU(B)`` says about a claim.

    Args:
        low, high: the interval's ends.
        claim: ``"greater"`` (A's mIoU is above B's) or ``"less"`` (below).

    Returns:
        ``"supported"`` if the whole interval lies on the claimed side of 0, ``"contradicted"`` if it
        lies wholly on the other side, else ``"not resolved"`` (an interval touching 0 resolves nothing).
    """
    if claim not in ("greater", "less"):
        raise ValueError(f"claim must be 'greater' or 'less', got {claim!r}")
    sign = 1.0 if claim == "greater" else -1.0
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return CONTRADICTED
    return NOT_RESOLVED


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of ``mIoU(A) - mIoU(B)`` (in [-1, 1], not percent).

    Attributes:
        delta: the point estimate, on all ``n_images`` images.
        low, high: the percentile interval of the resampled differences.
        confidence: its level (0.95 for a 95% interval).
        n_images, n_resamples: the sample and the number of resamples.
    """

    delta: float
    low: float
    high: float
    confidence: float
    n_images: int
    n_resamples: int

    def verdict(self, claim: Claim) -> str:
        """``"supported"``, ``"contradicted"`` or ``"not resolved"`` for the claim that A's mIoU is
        ``"greater"`` (or ``"less"``) than B's: see :func:`verdict`."""
        return verdict(self.low, self.high, claim)


def _check_confusions(conf_a, conf_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _to_numpy(conf_a, "conf_a"), _to_numpy(conf_b, "conf_b")
    for name, x in (("conf_a", a), ("conf_b", b)):
        if x.ndim != 3 or x.shape[1] != x.shape[2]:
            raise ValueError(f"{name} must hold per-image (N, C, C) confusion matrices, got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} holds no image")
        if not np.all(np.isfinite(x)) or (x < 0).any():
            raise ValueError(f"{name} must hold non-negative finite counts")
        if not x.any():
            raise ValueError(f"{name} counts no pixel")
    if a.shape != b.shape:
        raise ValueError(f"conf_a {a.shape} and conf_b {b.shape} must cover the same images and classes")
    return a, b


def paired_bootstrap(conf_a, conf_b, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: Union[int, np.random.Generator, None] = 0) -> BootstrapResult:
    """Paired bootstrap over images of ``mIoU(A) - mIoU(B)``.

    Each resample draws image ids with replacement, the same ids for both methods (one row of
    ``rng.integers(0, N, size=(n_resamples, N))``), sums the drawn images' confusion matrices (an
    image drawn twice counts twice) and takes the difference of the two mIoUs (:func:`miou_batch`).
    All resamples at once: a ``(n_resamples, N)`` matrix of draw counts times the stacked
    ``(N, 2 C^2)`` matrices.

    Args:
        conf_a, conf_b: ``(N, C, C)`` per-image confusion matrices of methods A and B on the same
            ``N`` images, in the same order (e.g. two Table 1 stages).
        n_resamples: number of bootstrap resamples.
        confidence: level of the percentile interval, in (0, 1).
        seed: an int or a ``numpy.random.Generator`` (used as is): the resamples' source.

    Returns:
        :class:`BootstrapResult`: the difference on all images and its percentile interval.
    """
    a, b = _check_confusions(conf_a, conf_b)
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    n, c, r = a.shape[0], a.shape[1], int(n_resamples)
    ids = np.random.default_rng(seed).integers(0, n, size=(r, n))
    stacked = np.concatenate([a.reshape(n, -1), b.reshape(n, -1)], axis=1).astype(np.float64)
    deltas = np.empty(r)
    for start in range(0, r, _CHUNK):  # bounded memory: (_CHUNK, N) draw counts at a time
        block = ids[start:start + _CHUNK]
        flat = block + n * np.arange(len(block))[:, None]
        counts = np.bincount(flat.ravel(), minlength=len(block) * n).reshape(len(block), n)
        sums = (counts.astype(np.float64) @ stacked).reshape(-1, 2, c, c)
        deltas[start:start + len(block)] = miou_batch(sums[:, 0]) - miou_batch(sums[:, 1])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    delta = float(miou_batch(a.sum(axis=0)) - miou_batch(b.sum(axis=0)))
    return BootstrapResult(delta=delta, low=float(low), high=float(high), confidence=float(confidence),
                           n_images=n, n_resamples=int(n_resamples))
