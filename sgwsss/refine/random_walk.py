"""Affinity random walk of the localization maps (Eq. 5 of Ke & Hsu).

The transition matrix ``T`` (B, N, N) comes from
:func:`sgwsss.refine.affinity.transition_matrix` (rows sum to 1, pixel
``y * grid + x``); the maps are resampled to the same ``grid x grid`` grid.
"""

from __future__ import annotations

import torch

__all__ = ["random_walk"]


def random_walk(transition: torch.Tensor, maps: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Eq. 5 of Ke & Hsu: ``vec(R^c) = T vec(A^c)`` for every map: (B, C, h, w) -> (B, C, h, w).

    ``transition``: (B, N, N) row-stochastic with ``N = h * w`` (row-major pixels);
    ``maps``: (B, C, h, w). Each output pixel is the transition-weighted average of
    the maps: ``R_i = sum_j T_ij A_j``. ``steps = t > 1`` applies ``T^t`` (an
    extension; the paper uses one step). Computed in the promoted dtype of the two
    inputs; a constant map stays constant.
    """
    for name, t in (("transition", transition), ("maps", maps)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {t.dtype}")
    if maps.ndim != 4:
        raise ValueError(f"maps must have shape (B, C, h, w), got {tuple(maps.shape)}")
    b, c, h, w = maps.shape
    n = h * w
    if transition.ndim != 3 or transition.shape != (b, n, n):
        raise ValueError(
            f"transition must have shape (B, N, N) = ({b}, {n}, {n}) for maps of shape "
            f"{tuple(maps.shape)} (N = h * w), got {tuple(transition.shape)}"
        )
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    dtype = torch.promote_types(transition.dtype, maps.dtype)
    t = transition.to(dtype)
    a = maps.to(dtype).reshape(b, c, n).transpose(1, 2)  # (B, N, C)
    for _ in range(int(steps)):
        a = torch.bmm(t, a)
    return a.transpose(1, 2).reshape(b, c, h, w)
