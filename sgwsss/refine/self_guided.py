"""Self-guided refinement: Otsu binarisation + guided filter with the image as guide.

Sec. 3.3 of Ke & Hsu: each present class map ``A^c`` is binarised with its Otsu
threshold, ``B^c = [A^c > otsu(A^c)]``, and filtered by the guided filter
(:mod:`sgwsss.refine.guided_filter`, Eqs. 6-8) with the training image as
guide, which moves the map's edges onto the image's edges. Table 1 also iterates
this step (``G-iter15``).
"""

from __future__ import annotations

import numbers

import torch

from sgwsss.refine.guided_filter import GuidedFilter
from sgwsss.refine.otsu import otsu_threshold

__all__ = ["self_guided_refine", "FEEDBACK_MODES"]

FEEDBACK_MODES = ("binary", "filtered")


def self_guided_refine(
    image: torch.Tensor,
    maps: torch.Tensor,
    iterations: int = 1,
    radius: int = 17,
    eps: float = 1e-6,
    labels: torch.Tensor | None = None,
    feedback: str = "binary",
    skip_constant: bool = True,
    threshold: float | None = None,
) -> torch.Tensor:
    """Self-guided refinement of the present class maps: (B, C, H, W) -> (B, C, H, W).

    ``image``: (B, 3, H, W) in [0, 1] (a (B, 1, H, W) grey guide also works);
    ``maps``: (B, C, H, W) localization maps at the image size (e.g. C = 20 VOC
    classes); ``labels``: (B, C) image-level labels (non-zero = present; ``None``:
    every class is present). Absent classes come out as zeros. ``radius = 17``
    (window 35) and ``eps = 1e-6`` are the paper's settings.

    With ``Q^0 = A`` (the input map) and ``GF`` the guided filter guided by the image,
    iteration ``t = 1 .. iterations`` computes:

    * ``feedback="binary"`` (default, the paper's procedure read as "binarise, then
      filter", repeated): ``Q^t = GF([Q^{t-1} > otsu(Q^{t-1})])``, i.e. every
      iteration re-binarises the previous output with its own Otsu threshold;
    * ``feedback="filtered"``: ``Q^1`` as above, then ``Q^t = GF(Q^{t-1})`` (the
      filtered map itself is filtered again, no re-binarisation).

    ``threshold=None`` binarises with each map's Otsu threshold (the paper); a number
    uses that fixed threshold instead, for every map and iteration (for exploring).

    The result is ``Q^iterations`` (continuous values, typically in [0, 1]); one
    iteration is the ``G`` row of Table 1, 15 the ``G-iter15`` row. The guide
    statistics are computed once per image; all present maps of an image are
    filtered together. ``skip_constant`` skips pixels whose neighbourhood is
    constant in the filter input (exact; see :class:`GuidedFilter`).
    """
    if not isinstance(image, torch.Tensor) or not isinstance(maps, torch.Tensor):
        raise TypeError("image and maps must be torch.Tensors")
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
    if maps.ndim != 4 or maps.shape[0] != image.shape[0] or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"maps must have shape (B, C, H, W) = ({image.shape[0]}, C, {image.shape[2]}, {image.shape[3]}) "
            f"to match image {tuple(image.shape)}, got {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a floating point tensor, got {maps.dtype}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if feedback not in FEEDBACK_MODES:
        raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)):
        raise ValueError(f"threshold must be None (Otsu) or a number, got {threshold!r}")
    b, c = maps.shape[:2]
    if labels is None:
        present = torch.ones(b, c, dtype=torch.bool, device=maps.device)
    else:
        if not isinstance(labels, torch.Tensor) or labels.shape != (b, c):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a ({b}, {c}) tensor, got {got}")
        present = (labels != 0).to(maps.device)

    out = torch.zeros_like(maps)
    with torch.no_grad():
        for i in range(b):
            idx = torch.nonzero(present[i]).flatten()
            if idx.numel() == 0:
                continue
            gf = GuidedFilter(image[i : i + 1], radius, eps)
            q = maps[i : i + 1, idx]
            for t in range(int(iterations)):
                binary = t == 0 or feedback == "binary"
                if binary:  # float32 maps: the mask goes to the filter as a bool tensor
                    p = q > (otsu_threshold(q)[:, :, None, None] if threshold is None else float(threshold))
                    p = p if maps.dtype == torch.float32 else p.to(maps.dtype)
                else:
                    p = q
                q = gf(p, skip_constant=skip_constant and binary).to(maps.dtype)
            out[i, idx] = q[0]
    return out
