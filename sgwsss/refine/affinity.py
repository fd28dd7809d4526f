"""Feature affinity (Eq. 2 of Ke & Hsu), transition matrix (unnumbered, Sec. 3.2) and colour similarity
(Eq. 3, the target of the affinity loss, Eq. 4).

All functions work on a ``grid x grid`` resampling of their input (50 x 50 in
the paper), so ``N = grid ** 2`` and the matrices are (B, N, N); pixel ``p``
is the row-major index ``p = y * grid + x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "resize_to_grid",
    "pairwise_distance",
    "affinity_matrix",
    "transition_matrix",
    "color_similarity",
]


def _check_bchw(name: str, t: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 4 or (channels is not None and t.shape[1] != channels):
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {t.dtype}")


def _check_grid(grid: int) -> int:
    if int(grid) != grid or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    return int(grid)


def resize_to_grid(x: torch.Tensor, grid: int, antialias: bool = False) -> torch.Tensor:
    """Bilinearly resample (B, C, H, W) to (B, C, grid, grid) (``align_corners=False``).

    ``antialias=True`` low-pass filters when shrinking (for images); it has no
    effect when enlarging.
    """
    grid = _check_grid(grid)
    if x.shape[-2:] == (grid, grid):
        return x
    return F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False, antialias=antialias)


def pairwise_distance(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Euclidean distances between all rows: (B, N, C) -> (B, N, N).

    Uses ``||a||^2 + ||b||^2 - 2 a.b`` on mean-centred rows (distances are
    translation invariant; centring limits cancellation). The diagonal is
    exactly 0. ``eps > 0`` returns the smoothed norm ``sqrt(d^2 + eps) - sqrt(eps)``,
    which is 0 at zero distance, within ``sqrt(eps)`` of the true distance and
    has a finite gradient everywhere (the plain norm's gradient is NaN at 0, e.g.
    on the diagonal).
    """
    x = x - x.mean(dim=1, keepdim=True)
    sq = (x * x).sum(-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * torch.bmm(x, x.transpose(1, 2))
    n = x.shape[1]
    off_diag = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    d2 = d2.clamp_min(0.0) * off_diag
    if eps > 0:
        return torch.sqrt(d2 + eps) - eps**0.5
    return torch.sqrt(d2)


def affinity_matrix(feat: torch.Tensor, grid: int = 50, eps: float = 1e-10) -> torch.Tensor:
    """Feature affinity W_pq = exp(-||F_p - F_q||_2) (Eq. 2 of Ke & Hsu).

    Args:
        feat: aggregation-layer features F (B, k, h, w); bilinearly resized to
            ``grid x grid`` first.
        grid: side of the grid (N = grid**2).
        eps: smoothing of the norm so gradients stay finite at zero distance
            (see :func:`pairwise_distance`); values change by at most ``sqrt(eps)``.

    Returns:
        W (B, N, N): symmetric, entries in (0, 1], ones on the diagonal. Half
        precision input (e.g. under ``torch.autocast``) is computed and returned
        in float32.
    """
    _check_bchw("feat", feat)
    if feat.dtype in (torch.float16, torch.bfloat16):
        feat = feat.float()  # distances by cancellation need float32 (eps underflows in half)
    with torch.autocast(device_type=feat.device.type, enabled=False):
        f = resize_to_grid(feat, grid).flatten(2).transpose(1, 2)  # (B, N, k)
        return torch.exp(-pairwise_distance(f, eps=eps))


def transition_matrix(W: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Row-stochastic transition matrix T = D^-1 W^beta, D = diag(sum_q W_pq^beta).

    Ke & Hsu define T = D^-1 W in Sec. 3.2 without an equation number (between Eqs. 2 and 3).

    Args:
        W: affinity (B, N, N), positive entries.
        beta: power applied to W before normalising (an extension; 1 in the
            paper). Since W = exp(-d), W^beta = exp(-beta d): beta acts as an
            inverse temperature, larger beta gives sharper transitions.

    Returns:
        T (B, N, N) with rows summing to 1.
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"W must have shape (B, N, N), got {tuple(W.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    Wb = W if beta == 1 else W.pow(beta)
    return Wb / Wb.sum(dim=-1, keepdim=True)


def color_similarity(image: torch.Tensor, grid: int = 50, normalize_rows: bool = True) -> torch.Tensor:
    """Colour similarity M (Eq. 3 of Ke & Hsu), the target of the affinity loss (Eq. 4).

    M_pq = 1 - ||I_p - I_q||_2 / max_{p', q'} ||I_p' - I_q'||_2 on the image
    resized to ``grid x grid`` (bilinear, antialiased), the maximum taken per image.

    Why ``normalize_rows`` (default True): T = D^-1 W is row-stochastic, so its
    entries are ~1/N (4e-4 for a 50 x 50 grid), while the raw M has entries
    ~0.5. Then T <= M elementwise and ||T - M||_1 = sum(M) - sum(T) = sum(M) - N
    does not depend on T at all: L_aff would be a constant with no gradient
    (verified numerically in ``tests/test_affinity.py``). Row-normalising M into
    a transition matrix, M_pq / sum_q M_pq, makes Eq. 4 compare two random-walk
    distributions per pixel (an L1 / total-variation distance), which does train
    the features. ``normalize_rows=False`` returns the raw M as printed.

    Args:
        image: RGB (B, 3, H, W) in [0, 1] (any float range works).
        grid: side of the grid (N = grid**2).
        normalize_rows: return M / rowsum(M) (rows sum to 1) instead of raw M.

    Returns:
        M (B, N, N). Raw M: symmetric, in [0, 1], ones on the diagonal; a
        constant image gives all ones.
    """
    _check_bchw("image", image, channels=3)
    out_dtype = torch.float32 if image.dtype in (torch.float16, torch.bfloat16) else image.dtype
    with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):  # a fixed target
        img = resize_to_grid(image.to(out_dtype), grid, antialias=True).flatten(2).transpose(1, 2)  # (B, N, C)
        work = torch.float32 if img.device.type == "mps" else torch.float64  # exact zeros for equal colours
        d = pairwise_distance(img.to(work)).to(out_dtype)
        dmax = d.amax(dim=(1, 2), keepdim=True)
        M = 1.0 - d / torch.where(dmax > 0, dmax, torch.ones_like(dmax))
        if normalize_rows:
            M = M / M.sum(dim=-1, keepdim=True)
    return M
