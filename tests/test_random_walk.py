"""Affinity random walk (Eq. 5 of Ke & Hsu)."""

from __future__ import annotations

import pytest
import torch

from sgwsss.refine.random_walk import random_walk


def _stochastic(b, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(b, n, n, generator=g, dtype=torch.float64) ** 4
    return (w / w.sum(-1, keepdim=True)).to(dtype)


def test_matches_float64_einsum_reference():
    t = _stochastic(2, 12)
    maps = torch.rand(2, 5, 3, 4, generator=torch.Generator().manual_seed(1))
    got = random_walk(t, maps)
    want = torch.einsum("bij,bcj->bci", t.double(), maps.double().flatten(2)).view(2, 5, 3, 4)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 3, 4)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # pixel (y, x) is row y * w + x of T: a one-hot map picks column j of T
    one_hot = torch.zeros(2, 1, 3, 4)
    one_hot[:, 0, 1, 2] = 1
    torch.testing.assert_close(random_walk(t, one_hot).flatten(1), t[:, :, 1 * 4 + 2])


def test_steps_apply_matrix_powers():
    t = _stochastic(1, 9, seed=2, dtype=torch.float64)
    maps = torch.rand(1, 3, 3, 3, dtype=torch.float64)
    want = torch.einsum("bij,bcj->bci", torch.linalg.matrix_power(t, 3), maps.flatten(2)).view(1, 3, 3, 3)
    torch.testing.assert_close(random_walk(t, maps, steps=3), want)
    torch.testing.assert_close(random_walk(t, maps, steps=3), random_walk(t, random_walk(t, random_walk(t, maps))))


def test_constant_map_stays_constant():
    t = _stochastic(3, 16, seed=3)
    maps = torch.full((3, 2, 4, 4), 0.37)
    torch.testing.assert_close(random_walk(t, maps, steps=4), maps)


def test_shape_and_type_errors():
    t = _stochastic(2, 12)
    with pytest.raises(ValueError, match=r"transition must have shape \(B, N, N\) = \(2, 16, 16\).*got \(2, 12, 12\)"):
        random_walk(t, torch.rand(2, 5, 4, 4))
    with pytest.raises(ValueError, match="transition must have shape"):
        random_walk(t, torch.rand(3, 5, 3, 4))
    with pytest.raises(ValueError, match=r"maps must have shape \(B, C, h, w\)"):
        random_walk(t, torch.rand(2, 12))
    with pytest.raises(ValueError, match="steps"):
        random_walk(t, torch.rand(2, 5, 3, 4), steps=0)
    with pytest.raises(TypeError, match="maps must be a floating"):
        random_walk(t, torch.ones(2, 5, 3, 4, dtype=torch.int64))
