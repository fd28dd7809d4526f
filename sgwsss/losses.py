"""Losses of Ke & Hsu: classification (Eq. 1), affinity (Eq. 4), segmentation (Eq. 12; through the
guided-filter layer, Eqs. 6-10) and the step-1 objective (Eq. 13)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgwsss.refine.affinity import affinity_matrix, color_similarity, transition_matrix

__all__ = ["classification_loss", "affinity_loss", "segmentation_loss", "guided_segmentation_loss", "step1_loss"]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label classification loss (Eq. 1 of Ke & Hsu).

    Eq. 1 is written per foreground class, with ``Z`` the classes present in the image:

        L_cls = -1(c in Z) log(E^c) - 1(c not in Z) log(1 - E^c),   for all c in L \\ bg,

    with ``E^c = sigmoid(GAP(A^c))``. The paper does not say how the per-class terms are
    combined; this function takes their mean over the B images and the C classes (PyTorch's
    default reduction), i.e. ``1/(B C)`` times their sum. The mean is an implementation choice,
    not part of Eq. 1: it sets the weight of ``L_cls`` against ``lam * L_aff`` in Eq. 13.
    Computed in the numerically stable logits form.

    Args:
        logits: (B, C) class scores before the sigmoid (GAP of the localization maps).
        labels: (B, C) image-level labels in {0, 1} (any dtype): 1 where ``c`` is in ``Z``.

    Returns:
        scalar tensor, the mean of the per-class terms over batch and classes.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(getattr(logits, 'shape', ()))}")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape:
        raise ValueError(
            f"labels must have the shape of logits {tuple(logits.shape)}, got {tuple(getattr(labels, 'shape', ()))}"
        )
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def affinity_loss(T: torch.Tensor, M: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """Affinity loss L_aff = || T - M ||_1 (Eq. 4 of Ke & Hsu).

    Args:
        T: transition matrix ``T = D^-1 W`` (B, N, N) from the feature affinity ``W`` of Eq. 2
            (the paper does not number it).
        M: colour similarity target (B, N, N), Eq. 3, see :func:`sgwsss.refine.affinity.color_similarity`.
        reduction: ``"row"`` (default): sum of |T - M| over each row q, mean over
            pixels p and the batch. With row-stochastic T and M this is twice the
            total-variation distance per pixel, in [0, 2], the same order as
            L_cls so ``lam = 1`` balances them. ``"mean"``: mean over all entries
            (= "row" / N, tiny). ``"sum"``: the raw L1 norm summed over the
            batch.
    """
    if not isinstance(T, torch.Tensor) or T.ndim != 3 or T.shape[1] != T.shape[2]:
        raise ValueError(f"T must have shape (B, N, N), got {tuple(getattr(T, 'shape', ()))}")
    if not isinstance(M, torch.Tensor) or M.shape != T.shape:
        raise ValueError(f"M must have the shape of T {tuple(T.shape)}, got {tuple(getattr(M, 'shape', ()))}")
    diff = (T - M.to(T.dtype)).abs()
    if reduction == "row":
        return diff.sum(-1).mean()
    if reduction == "mean":
        return diff.mean()
    if reduction == "sum":
        return diff.sum()
    raise ValueError(f"reduction must be 'row', 'mean' or 'sum', got {reduction!r}")


def segmentation_loss(seg_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy with the pseudo labels (Eq. 12 of Ke & Hsu).

    Args:
        seg_logits: (B, K, h, w) segmentation logits; bilinearly upsampled
            (``align_corners=False``) to the target's (H, W) when sizes differ.
        target: (B, H, W) integer labels in [0, K) or ``ignore_index``.
        ignore_index: label excluded from the loss.

    Returns:
        scalar: mean over non-ignored pixels (0, with gradient graph, if all are ignored).
    """
    if not isinstance(seg_logits, torch.Tensor) or seg_logits.ndim != 4:
        raise ValueError(f"seg_logits must have shape (B, K, h, w), got {tuple(getattr(seg_logits, 'shape', ()))}")
    if not isinstance(target, torch.Tensor) or target.ndim != 3 or target.shape[0] != seg_logits.shape[0]:
        raise ValueError(
            f"target must have shape (B, H, W) with B={seg_logits.shape[0]}, got {tuple(getattr(target, 'shape', ()))}"
        )
    if target.is_floating_point():
        raise TypeError(f"target must be an integer tensor, got {target.dtype}")
    if seg_logits.shape[-2:] != target.shape[-2:]:
        seg_logits = F.interpolate(seg_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    target = target.long()
    if not (target != ignore_index).any():
        return seg_logits.sum() * 0.0
    return F.cross_entropy(seg_logits, target, ignore_index=ignore_index)


def guided_segmentation_loss(seg_logits: torch.Tensor, image: torch.Tensor, target: torch.Tensor,
                             radius: int = 17, eps: float = 1e-6, ignore_index: int = 255) -> torch.Tensor:
    """Eq. 12 through the guided-filter layer (Eqs. 6-10 of Ke & Hsu): ``L_seg(softmax(GF_I(S)), C)``.

    The logits ``seg_logits`` (B, K, h, w) are bilinearly upsampled to the target's (H, W),
    filtered with the crop ``image`` (B, 3, H, W) as guide (:func:`~sgwsss.refine.guided_filter.guided_filter`,
    radius and eps of Eq. 8), and the cross-entropy of the result with the pseudo labels
    ``target`` (B, H, W) is returned, so the gradient of ``L_seg`` passes through the filter's
    coefficients (Eqs. 9-10) to the segmentation branch. The reading of Sec. 3.3 this
    implements is set out in :mod:`sgwsss.refine.guided_layer`.
    """
    from sgwsss.refine.guided_filter import guided_filter

    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != seg_logits.shape[0]:
        raise ValueError(f"image must have shape (B, 3, H, W) with B={seg_logits.shape[0]}, "
                         f"got {tuple(getattr(image, 'shape', ()))}")
    if image.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"image size {tuple(image.shape[-2:])} must match the target's {tuple(target.shape[-2:])}")
    logits = F.interpolate(seg_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    filtered = guided_filter(image.to(logits.dtype), logits, radius=radius, eps=eps)
    return segmentation_loss(filtered, target, ignore_index)


def step1_loss(
    out,
    labels: torch.Tensor,
    image: torch.Tensor,
    lam: float = 1.0,
    grid: int = 50,
    beta: float = 1.0,
    normalize_rows: bool = True,
    reduction: str = "row",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step-1 objective L = L_cls + lam * L_aff (Eq. 13 of Ke & Hsu).

    Args:
        out: :class:`sgwsss.model.network.SGOutput` (uses ``logits`` and ``feat``).
        labels: (B, C) image-level labels.
        image: (B, 3, H, W) RGB in [0, 1], the network input (for M).
        lam: weight of the affinity loss.
        grid: affinity grid side (50 in the paper).
        beta: power of W in the transition matrix (1: the paper's ``T = D^-1 W``).
        normalize_rows: row-normalise M (see :func:`~sgwsss.refine.affinity.color_similarity`).
        reduction: of :func:`affinity_loss`.

    Returns:
        ``(total, {"cls": L_cls, "aff": L_aff})``; the dict holds detached scalars.
    """
    l_cls = classification_loss(out.logits, labels)
    T = transition_matrix(affinity_matrix(out.feat, grid), beta)
    M = color_similarity(image, grid, normalize_rows)
    l_aff = affinity_loss(T, M, reduction)
    total = l_cls + lam * l_aff
    return total, {"cls": l_cls.detach(), "aff": l_aff.detach()}
