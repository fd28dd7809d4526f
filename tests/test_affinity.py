"""Tests of sgwsss.refine.affinity (Eqs. 2-4 of Ke & Hsu) against float64 naive references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize as sk_resize

from sgwsss.refine.affinity import (
    affinity_matrix,
    color_similarity,
    pairwise_distance,
    resize_to_grid,
    transition_matrix,
)


def _naive_dist(x: np.ndarray) -> np.ndarray:
    """x (N, C) float64 -> (N, N) Euclidean distances by explicit differences."""
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _pixels(t: torch.Tensor) -> np.ndarray:
    """(C, g, g) -> (g*g, C) float64, row-major pixel order."""
    return t.detach().double().flatten(1).T.numpy()


def test_affinity_matches_eq2_without_resize():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 6, 6) * 2
    W = affinity_matrix(feat, grid=6)
    assert W.shape == (2, 36, 36)
    for b in range(2):
        ref = np.exp(-_naive_dist(_pixels(feat[b])))
        np.testing.assert_allclose(W[b].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_affinity_resizes_bilinearly():
    torch.manual_seed(1)
    feat = torch.randn(1, 3, 9, 7)
    W = affinity_matrix(feat, grid=5)
    # reference resize: skimage order-1 (bilinear, pixel-centre convention like align_corners=False)
    g = sk_resize(feat[0].double().permute(1, 2, 0).numpy(), (5, 5), order=1, anti_aliasing=False, mode="edge")
    ref = np.exp(-_naive_dist(g.reshape(-1, 3)))
    np.testing.assert_allclose(W[0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_affinity_symmetric_unit_diagonal_range():
    torch.manual_seed(2)
    W = affinity_matrix(torch.randn(3, 3, 20, 20) * 5, grid=12)
    torch.testing.assert_close(W, W.transpose(1, 2))
    assert torch.all(W.diagonal(dim1=1, dim2=2) == 1.0)
    assert torch.all(W > 0) and torch.all(W <= 1)


def test_affinity_gradients_finite_at_zero_distance():
    # constant features: every distance is 0 (the plain norm's gradient is NaN here)
    feat = torch.zeros(1, 3, 8, 8, requires_grad=True)
    affinity_matrix(feat, grid=8).sum().backward()
    assert torch.isfinite(feat.grad).all()
    # duplicated pixels + distinct ones, through the transition matrix
    torch.manual_seed(3)
    base = torch.randn(1, 3, 4, 4)
    base[..., :2, :] = 0.7  # 8 identical pixels
    feat = base.clone().requires_grad_(True)
    T = transition_matrix(affinity_matrix(feat, grid=4))
    (T * torch.rand_like(T)).sum().backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    # the plain sqrt form is NaN on the diagonal: the safe form is what makes this pass
    x = base.flatten(2).transpose(1, 2).clone().requires_grad_(True)
    torch.exp(-pairwise_distance(x, eps=0.0)).sum().backward()
    assert not torch.isfinite(x.grad).all()


def test_affinity_gradcheck():
    torch.manual_seed(4)
    feat = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: affinity_matrix(f, grid=3), (feat,))


def test_transition_matrix_eq3():
    torch.manual_seed(5)
    W = affinity_matrix(torch.randn(2, 3, 7, 7), grid=7).double()
    T = transition_matrix(W)
    torch.testing.assert_close(T.sum(-1), torch.ones(2, 49, dtype=torch.float64))
    D = W.sum(-1)
    torch.testing.assert_close(T, torch.diag_embed(1.0 / D) @ W)  # D^-1 W
    T2 = transition_matrix(W, beta=2.0)
    torch.testing.assert_close(T2, (W**2) / (W**2).sum(-1, keepdim=True))
    # larger beta -> sharper rows (more mass on the diagonal, W_pp = 1 is the maximum)
    assert torch.all(T2.diagonal(dim1=1, dim2=2) > T.diagonal(dim1=1, dim2=2))


def test_color_similarity_raw_formula():
    torch.manual_seed(6)
    img = torch.rand(2, 3, 10, 10)
    M = color_similarity(img, grid=10, normalize_rows=False)
    for b in range(2):
        d = _naive_dist(_pixels(img[b]))
        np.testing.assert_allclose(M[b].numpy(), 1 - d / d.max(), rtol=1e-5, atol=1e-6)
    assert M.min() >= 0 and M.max() <= 1
    assert torch.all(M.diagonal(dim1=1, dim2=2) == 1)
    assert torch.isclose(M.amin(dim=(1, 2)), torch.zeros(2)).all()  # the farthest pair
    torch.testing.assert_close(M, M.transpose(1, 2))


def test_color_similarity_normalised_rows_and_resize():
    torch.manual_seed(7)
    img = torch.rand(1, 3, 64, 48)
    raw = color_similarity(img, grid=16, normalize_rows=False)
    M = color_similarity(img, grid=16)
    assert M.shape == (1, 256, 256)
    torch.testing.assert_close(M.sum(-1), torch.ones(1, 256))
    torch.testing.assert_close(M, raw / raw.sum(-1, keepdim=True))
    # the grid image is an antialiased bilinear shrink (close to skimage's area-like resize)
    small = resize_to_grid(img, 16, antialias=True)
    ref = sk_resize(img[0].permute(1, 2, 0).double().numpy(), (16, 16), order=1, anti_aliasing=True)
    assert np.abs(small[0].permute(1, 2, 0).double().numpy() - ref).mean() < 0.05
    # constant image: all colours equal -> raw M all ones, no NaN
    const = color_similarity(torch.full((1, 3, 20, 20), 0.3), grid=5, normalize_rows=False)
    assert torch.all(const == 1)


def test_eq4_raw_target_gives_constant_loss():
    """With raw M, ||T - M||_1 = sum(M) - N for any T (T <= M): no gradient. Normalised M fixes it."""
    torch.manual_seed(8)
    img = torch.rand(1, 3, 40, 40)
    raw = color_similarity(img, grid=20, normalize_rows=False)
    norm = color_similarity(img, grid=20)
    losses_raw, losses_norm, grads_raw, grads_norm = [], [], [], []
    for scale in (0.1, 1.0, 10.0):
        feat = (torch.randn(1, 3, 20, 20) * scale).requires_grad_(True)
        T = transition_matrix(affinity_matrix(feat, grid=20))
        assert (T <= raw).float().mean() > 0.999
        l_raw = (T - raw).abs().sum()
        (g_raw,) = torch.autograd.grad(l_raw, feat, retain_graph=True)
        l_norm = (T - norm).abs().sum()
        (g_norm,) = torch.autograd.grad(l_norm, feat)
        losses_raw.append(l_raw.item())
        losses_norm.append(l_norm.item())
        grads_raw.append(g_raw.norm().item())
        grads_norm.append(g_norm.norm().item())
    expected = raw.sum().item() - 400
    assert np.allclose(losses_raw, expected, rtol=1e-4)
    assert np.ptp(losses_norm) > 1.0
    assert all(gr < 0.01 * gn for gr, gn in zip(grads_raw, grads_norm))


def test_shape_errors():
    with pytest.raises(ValueError, match="feat"):
        affinity_matrix(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="W"):
        transition_matrix(torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match="beta"):
        transition_matrix(torch.rand(2, 4, 4), beta=0)
    with pytest.raises(ValueError, match="image"):
        color_similarity(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="grid"):
        affinity_matrix(torch.rand(1, 3, 8, 8), grid=0)
    with pytest.raises(TypeError, match="image"):
        color_similarity(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_runs_on_float64_and_batch_independent():
    torch.manual_seed(9)
    feat = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    W = affinity_matrix(feat, grid=10)
    torch.testing.assert_close(W[1:], affinity_matrix(feat[1:], grid=10))
    assert W.dtype == torch.float64


def test_autocast_half_precision_is_computed_in_float32():
    torch.manual_seed(10)
    feat = torch.randn(1, 3, 6, 6)
    ref = affinity_matrix(feat, grid=6)
    half = feat.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        W = affinity_matrix(half, grid=6)
        M = color_similarity(torch.rand(1, 3, 12, 12).bfloat16(), grid=6)
    assert W.dtype == torch.float32 and M.dtype == torch.float32
    assert torch.all(W.diagonal(dim1=1, dim2=2) == 1)
    torch.testing.assert_close(W, ref, rtol=0.05, atol=0.02)  # bf16 rounding of the input only
    transition_matrix(W).sum().backward()
    assert torch.isfinite(half.grad).all()
