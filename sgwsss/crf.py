"""Fully connected (dense) CRF post-processing.

Thin, validated wrapper around ``pydensecrf2`` (imported as ``pydensecrf``),
the Python binding of Krähenbühl & Koltun, "Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials" (NeurIPS 2011). The CRF is the
usual final step of DeepLab-v2 style segmentation on PASCAL VOC and is also
used to refine pseudo labels.

Energy (Potts compatibility, mean-field inference)::

    E(x) = sum_i  -log P_i(x_i)
         + sum_{i<j} [x_i != x_j] * ( w_g * exp(-|p_i - p_j|^2 / (2 sxy_g^2))
                                    + w_b * exp(-|p_i - p_j|^2 / (2 sxy_b^2)
                                                - |I_i - I_j|^2 / (2 srgb^2)) )

``pydensecrf`` is imported lazily so :mod:`sgwsss` imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

try:  # torch is a dependency of the package, but keep this module usable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

ArrayLike = Union[np.ndarray, "torch.Tensor"]

__all__ = ["CRFParams", "dense_crf", "crf_labels", "labels_to_probs"]


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF hyper-parameters.

    The defaults are the DeepLab-v2 (ResNet-101) settings for PASCAL VOC 2012
    (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional
    Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017), as
    reproduced by the widely used PyTorch port ``kazuto1011/deeplab-pytorch``,
    ``configs/voc12.yaml``: ``ITER_MAX: 10, POS_W: 3, POS_XY_STD: 1, BI_W: 4,
    BI_XY_STD: 67, BI_RGB_STD: 3``.

    :meth:`psa` gives the smoother settings of the WSSS code base of Ahn & Kwak
    (AffinityNet / PSA, CVPR 2018, ``jiwoon-ahn/psa``, ``tool/imutils.py``),
    often used to refine localization maps and pseudo labels.

    Attributes:
        iterations: mean-field iterations (DeepLab ``ITER_MAX``).
        gaussian_sxy: spatial std (pixels) of the smoothness kernel (``POS_XY_STD``).
        gaussian_compat: weight of the smoothness kernel (``POS_W``).
        bilateral_sxy: spatial std (pixels) of the appearance kernel (``BI_XY_STD``).
        bilateral_srgb: colour std (0..255 units) of the appearance kernel (``BI_RGB_STD``).
        bilateral_compat: weight of the appearance kernel (``BI_W``).
        prob_clip: probabilities are clipped to ``[prob_clip, 1]`` before
            ``-log``, so a zero probability gives a finite unary
            (``-log(1e-5) ~ 11.5``; same default as ``pydensecrf.utils.unary_from_softmax``).
    """

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    prob_clip: float = 1e-5

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer, got {self.iterations!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.prob_clip < 1:
            raise ValueError(f"prob_clip must be in (0, 1), got {self.prob_clip!r}")

    @classmethod
    def psa(cls) -> "CRFParams":
        """Settings of Ahn & Kwak's PSA code (``crf_inference``: t=10,
        Gaussian sxy=3 compat=3, bilateral sxy=80 srgb=13 compat=10)."""
        return cls(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0,
                   bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:  # pragma: no cover - exercised via monkeypatch in tests
        raise ImportError(
            "sgwsss.crf needs the dense CRF binding 'pydensecrf'; install it with "
            "`pip install pydensecrf2`"
        ) from exc
    return dcrf


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _image_to_uint8_hwc(image: ArrayLike) -> np.ndarray:
    """(H,W,3) uint8 RGB, or (3,H,W) float in [0,1] -> C-contiguous (H,W,3) uint8."""
    img = _to_numpy(image, "image")
    if img.dtype == np.uint8:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"uint8 image must have shape (H, W, 3), got {tuple(img.shape)}")
    elif np.issubdtype(img.dtype, np.floating):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"float image must have shape (3, H, W) with values in [0, 1], "
                             f"got shape {tuple(img.shape)}")
        if img.size and (np.nanmin(img) < -1e-3 or np.nanmax(img) > 1 + 1e-3 or not np.isfinite(img).all()):
            raise ValueError(f"float image must have values in [0, 1] (not mean/std-normalised), "
                             f"got range [{np.nanmin(img):.3g}, {np.nanmax(img):.3g}]")
        img = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
    else:
        raise TypeError(f"image must be uint8 (H, W, 3) or float (3, H, W), got dtype {img.dtype}")
    return np.ascontiguousarray(img)


def dense_crf(image: ArrayLike, probs: ArrayLike, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF.

    Unary potential ``U = -log(clip(probs, params.prob_clip, 1))``; Gaussian
    (smoothness) and bilateral (appearance) pairwise kernels with Potts
    compatibility; ``params.iterations`` mean-field steps.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image, or ``(3, H, W)`` float image
            (numpy or torch) with values in ``[0, 1]``.
        probs: ``(C, H, W)`` class probabilities (numpy or torch, e.g. a
            softmax output). They need not sum exactly to 1; negative or
            non-finite values are rejected.
        params: CRF hyper-parameters.

    Returns:
        ``(C, H, W)`` float32 numpy array of CRF marginals (sum to 1 over C).

    Raises:
        ValueError: wrong shapes, mismatching sizes, invalid values.
        TypeError: unsupported array types / dtypes.
        ImportError: ``pydensecrf`` (package ``pydensecrf2``) missing.
    """
    img = _image_to_uint8_hwc(image)
    p = _to_numpy(probs, "probs")
    if p.ndim != 3:
        raise ValueError(f"probs must have shape (C, H, W), got {tuple(p.shape)}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
            or p.dtype == np.bool_):
        raise TypeError(f"probs must be a real array, got dtype {p.dtype}")
    C, H, W = p.shape
    if C < 1 or H < 1 or W < 1:
        raise ValueError(f"probs must be non-empty, got shape {tuple(p.shape)}")
    if img.shape[:2] != (H, W):
        raise ValueError(f"image spatial size {tuple(img.shape[:2])} does not match "
                         f"probs (C, H, W)={tuple(p.shape)}")
    p = p.astype(np.float32, copy=False)
    if not np.isfinite(p).all() or p.min() < 0:
        raise ValueError("probs must be finite and non-negative")

    dcrf = _import_densecrf()
    unary = -np.log(np.clip(p, params.prob_clip, 1.0)).reshape(C, H * W)
    unary = np.ascontiguousarray(unary, dtype=np.float32)

    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=float(params.gaussian_sxy), compat=float(params.gaussian_compat))
    crf.addPairwiseBilateral(sxy=float(params.bilateral_sxy), srgb=float(params.bilateral_srgb),
                             rgbim=img, compat=float(params.bilateral_compat))
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    return q.reshape(C, H, W)


def crf_labels(image: ArrayLike, probs: ArrayLike, params: CRFParams = CRFParams()) -> np.ndarray:
    """Arg-max of :func:`dense_crf`: ``(H, W)`` int64 label map (same arguments)."""
    return dense_crf(image, probs, params).argmax(axis=0).astype(np.int64)


def labels_to_probs(labels: ArrayLike, num_classes: int, confidence: float = 0.7,
                    classes: Optional[Sequence[int]] = None,
                    ignore_index: Optional[int] = 255) -> np.ndarray:
    """Soft probabilities from a hard label map, to refine it with a CRF.

    For refining pseudo labels: ``dense_crf(image, labels_to_probs(y, C))``.
    The probability mass is restricted to the *allowed* classes, ``classes`` if
    given (e.g. background plus the image-level labels), else the classes
    present in ``labels`` (ignore pixels excluded). With ``K`` allowed classes,
    a pixel labelled ``c`` gets ``confidence`` on ``c`` and
    ``(1 - confidence) / (K - 1)`` on each other allowed class (``1`` on ``c``
    when ``K == 1``); ignore pixels get ``1 / K`` on every allowed class; the
    other classes get 0, so the CRF (after clipping, unary ``-log(prob_clip)``)
    never switches a pixel to a class absent from the image. ``confidence=0.7``
    is the ``gt_prob`` of ``pydensecrf``'s label example and of the PSA code.

    Args:
        labels: ``(H, W)`` integer label map (numpy or torch), values in
            ``0..num_classes-1`` or ``ignore_index``.
        num_classes: number of classes ``C``.
        confidence: probability of the given label, in ``(0, 1]``.
        classes: allowed class indices; must contain every label present.
        ignore_index: label value meaning "unknown" (``None``: no such value).

    Returns:
        ``(C, H, W)`` float32 probabilities summing to 1 over ``C``.
    """
    y = _to_numpy(labels, "labels")
    if y.ndim != 2:
        raise ValueError(f"labels must have shape (H, W), got {tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise TypeError(f"labels must be an integer array, got dtype {y.dtype}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    y = y.astype(np.int64)
    ignore = (y == ignore_index) if ignore_index is not None else np.zeros(y.shape, bool)
    present = np.unique(y[~ignore])
    bad = present[(present < 0) | (present >= num_classes)]
    if bad.size:
        raise ValueError(f"labels contain values {bad.tolist()[:5]} outside 0..{num_classes - 1}"
                         f" (ignore_index={ignore_index})")
    if classes is None:
        allowed = present
    else:
        allowed = np.unique(np.asarray(list(classes), dtype=np.int64))
        if allowed.size and (allowed.min() < 0 or allowed.max() >= num_classes):
            raise ValueError(f"classes must be in 0..{num_classes - 1}, got {allowed.tolist()}")
        missing = np.setdiff1d(present, allowed)
        if missing.size:
            raise ValueError(f"labels contain classes {missing.tolist()} not in classes={allowed.tolist()}")
    if allowed.size == 0:
        raise ValueError("labels contain only ignore pixels and no classes were given")

    K = allowed.size
    H, W = y.shape
    out = np.zeros((num_classes, H, W), dtype=np.float32)
    other = (1.0 - confidence) / (K - 1) if K > 1 else 0.0
    on = confidence if K > 1 else 1.0
    out[allowed] = other
    rows, cols = np.nonzero(~ignore)
    out[y[rows, cols], rows, cols] = on
    irows, icols = np.nonzero(ignore)
    out[allowed[:, None], irows[None, :], icols[None, :]] = 1.0 / K
    return out
