"""The guided filter as a trainable layer (Eqs. 6-10 of Ke & Hsu): L_seg reaches G and its coefficients.

Sec. 3.3 of the paper notes that the filter output ``G_p = alpha_p I_p + beta_p`` (Eq. 6) is
linear in the guide, so the filter can be a layer of the network, and gives the gradients
of the segmentation loss with respect to the coefficients: ``dL/d alpha_p += I_p dL/dG_p``
(Eq. 9) and ``dL/d beta_p += dL/dG_p`` (Eq. 10), the ``+=`` collecting every output that a
coefficient contributes to.

**The reading implemented.** The paper does not say what the layer's input is during step 2
nor how ``L_seg`` (Eq. 12, a cross-entropy on the softmax of the segmentation output
``S``) comes to depend on ``G``. Here the layer sits on the segmentation branch: in step 2
the logits ``S`` (B, 21, h, w), bilinearly upsampled to the crop, are the filter input ``p``,
the crop ``I`` is the guide, and ``L_seg`` is the cross-entropy of ``softmax(G)`` with the
pseudo labels, ``G = GF_I(S)`` (:func:`sgwsss.losses.guided_segmentation_loss`, option
``step2_guided_filter`` of :class:`~sgwsss.train.TrainConfig`). The coefficients have no
weights of their own: in every window ``omega_k`` they are the closed-form least-squares
solution of Eqs. 6-8 for the current ``S`` (He et al.'s
``a_k = (Sigma_k + eps U)^-1 cov_k(I, p)``, ``b_k = mean_k(p) - a_k^T mu_k``), and
``alpha_p``, ``beta_p`` are their means over the windows that contain ``p``. "Updating the
coefficients" is read as back-propagating through them: autograd applies Eqs. 9-10 at
Eq. 6, then carries the gradient through the closed form of ``a_k``, ``b_k`` to ``S`` and so
to the network, which learns maps whose guided-filtered version fits the pseudo labels.
Not implemented: free per-pixel coefficients (they would be per image, not network weights)
and a path from ``L_seg`` to the localization maps ``R`` (Eq. 11's arg-max and Otsu's
threshold have no gradient). At test time the network's own output is the prediction
(:func:`sgwsss.train.predict`); :func:`guided_filter_layer` can also be applied to it.

This module writes the layer out, coefficients included: plain torch built from
:func:`~sgwsss.refine.guided_filter.box_sum`, differentiable with respect to the input, the
guide and the coefficients, so that Eqs. 9-10 can be seen and checked
(``tests/test_guided_layer.py``: ``torch.autograd.gradcheck`` against finite differences in
float64; the gradients reaching ``alpha`` and ``beta`` are Eqs. 9-10; the output is the
package's filter). Step 2 itself runs the fused
:func:`~sgwsss.refine.guided_filter.guided_filter`: the filter is linear in ``p`` and its
backward pass (the adjoint filter) is, to float32 rounding, the gradient that flows through
Eqs. 9-10 and the closed-form coefficients here (the same test checks it), at a tenth of the
cost (0.4 s against 7.7 s for a forward and backward pass of 8 x 21 maps of 256 x 256 on two
cores).
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from sgwsss.refine.guided_filter import box_sum

__all__ = ["guided_filter_coefficients", "guided_filter_layer"]


def _box_mean(x: torch.Tensor, radius: int, counts: torch.Tensor) -> torch.Tensor:
    """Means over the clipped ``(2r+1) x (2r+1)`` windows of the last two dims."""
    return box_sum(x, radius) / counts


def _inverse3(m: torch.Tensor) -> torch.Tensor:
    """Inverse of every 3 x 3 matrix of (B, 3, 3, H, W), by the adjugate (differentiable)."""
    e = [[m[:, i, j] for j in range(3)] for i in range(3)]
    adj = [[e[1][1] * e[2][2] - e[1][2] * e[2][1], e[0][2] * e[2][1] - e[0][1] * e[2][2],
            e[0][1] * e[1][2] - e[0][2] * e[1][1]],
           [e[1][2] * e[2][0] - e[1][0] * e[2][2], e[0][0] * e[2][2] - e[0][2] * e[2][0],
            e[0][2] * e[1][0] - e[0][0] * e[1][2]],
           [e[1][0] * e[2][1] - e[1][1] * e[2][0], e[0][1] * e[2][0] - e[0][0] * e[2][1],
            e[0][0] * e[1][1] - e[0][1] * e[1][0]]]
    det = e[0][0] * adj[0][0] + e[0][1] * adj[1][0] + e[0][2] * adj[2][0]
    return torch.stack([torch.stack([adj[i][j] / det for j in range(3)], 1) for i in range(3)], 1)


def _check(guide: torch.Tensor, src: torch.Tensor) -> None:
    for name, t in (("guide", guide), ("src", src)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point (B, C, H, W) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if guide.shape[1] not in (1, 3) or guide.shape[0] != src.shape[0] or guide.shape[-2:] != src.shape[-2:]:
        raise ValueError(f"guide must be (B, 1 or 3, H, W) matching src {tuple(src.shape)}, got {tuple(guide.shape)}")


def guided_filter_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int = 17,
                               eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each window's coefficients (Eqs. 6-8 solved in closed form): ``a`` (B, K, C, H, W), ``b`` (B, K, H, W).

    ``guide`` (B, C, H, W), C = 3 (colour) or 1 (grey); ``src`` (B, K, H, W). For the window
    ``omega_k`` centred at pixel ``k`` (clipped to the image), ``a_k = (Sigma_k + eps U)^-1
    cov_k(I, p)`` and ``b_k = mean_k(p) - a_k^T mu_k``, ``mu_k`` / ``Sigma_k`` the mean / covariance
    of the guide in the window. Computed in the inputs' dtype.
    """
    _check(guide, src)
    h, w = src.shape[-2:]
    counts = box_sum(torch.ones(1, 1, h, w, dtype=src.dtype, device=src.device), radius)
    # the window statistics of the guide and input centred on their image means: the covariances
    # do not change, and their cancellation (a difference of two means) stays small in float32
    m, c = guide.mean(dim=(2, 3), keepdim=True), src.mean(dim=(2, 3), keepdim=True)
    guide, src = guide - m, src - c
    mu = _box_mean(guide, radius, counts)  # (B, C, H, W)
    mean_p = _box_mean(src, radius, counts)  # (B, K, H, W)
    cov = _box_mean(guide[:, None] * src[:, :, None], radius, counts) - mu[:, None] * mean_p[:, :, None]
    if guide.shape[1] == 1:
        var = _box_mean(guide * guide, radius, counts) - mu * mu  # (B, 1, H, W)
        a = cov / (var[:, None] + eps)
    else:
        eye = torch.eye(3, dtype=src.dtype, device=src.device)[None, :, :, None, None]
        sigma = _box_mean(guide[:, :, None] * guide[:, None], radius, counts) - mu[:, :, None] * mu[:, None]
        a = torch.einsum("bcdhw,bkdhw->bkchw", _inverse3(sigma + eps * eye), cov)
    b = (mean_p + c) - (a * (mu + m)[:, None]).sum(2)  # He et al.'s b_k with the uncentred means
    return a, b


def guided_filter_layer(guide: torch.Tensor, src: torch.Tensor, radius: int = 17, eps: float = 1e-6,
                        return_coefficients: bool = False
                        ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The guided filter of ``src`` (B, K, H, W) with ``guide`` (B, C, H, W) as a differentiable layer: (B, K, H, W).

    ``G_p = alpha_p^T I_p + beta_p`` (Eq. 6), with ``alpha_p`` (B, K, C, H, W) and ``beta_p``
    (B, K, H, W) the means of :func:`guided_filter_coefficients` over the windows containing
    ``p``; the same filter as :func:`~sgwsss.refine.guided_filter.guided_filter`. Back-propagation
    through Eq. 6 is Eqs. 9-10 (``dL/d alpha_p = I_p dL/dG_p``, ``dL/d beta_p = dL/dG_p``).
    ``return_coefficients=True`` returns ``(G, alpha, beta)``, the coefficients being the graph
    tensors ``G`` is computed from.
    """
    _check(guide, src)
    a, b = guided_filter_coefficients(guide, src, radius, eps)
    counts = box_sum(torch.ones(1, 1, *src.shape[-2:], dtype=src.dtype, device=src.device), radius)
    alpha, beta = _box_mean(a, radius, counts), _box_mean(b, radius, counts)
    out = (alpha * guide[:, None]).sum(2) + beta  # Eq. 6
    return (out, alpha, beta) if return_coefficients else out
