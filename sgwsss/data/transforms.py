"""Joint image / mask transforms on :class:`~sgwsss.data.voc.VOCSegmentation` item dicts.

Built on ``torchvision.transforms.v2`` with ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that
geometric ops act on the image and the mask together (bilinear for the image, nearest for the
mask). Randomness comes from torch's global RNG, so ``torch.manual_seed`` and DataLoader worker
seeding make them reproducible.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sgwsss.constants import IMAGENET_MEAN

__all__ = ["IMAGENET_MEAN", "TrainTransform", "EvalTransform"]


def _as_tv(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    image = out.get("image")
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"item['image'] must be a (3, H, W) tensor, got "
            f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
        )
    if not isinstance(image, tv_tensors.Image):
        out["image"] = tv_tensors.Image(image)
    if "mask" in out:
        mask = out["mask"]
        if not isinstance(mask, torch.Tensor) or mask.shape != image.shape[-2:]:
            raise ValueError(
                f"item['mask'] must be an (H, W) tensor matching image {tuple(image.shape)}, got "
                f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}"
            )
        if not isinstance(mask, tv_tensors.Mask):
            out["mask"] = tv_tensors.Mask(mask)
    return out


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, tv_tensors.TVTensor) else v for k, v in item.items()}


class TrainTransform:
    """Random rescale, random ``crop_size`` square crop (padding when smaller), random h-flip.

    Args:
        crop_size: side of the square output crop.
        scale: (min, max) range of the uniform random rescale factor.
        hflip: flip horizontally with probability 0.5.
        ignore_index: mask value of the padded area.
        fill: image value of the padded area, one float or one per channel. The padded
            pixels enter the network (and the global average pool of Eq. 1), so they should
            be 0 after the backbone's normalisation: pass the backbone's mean
            (``INPUT_NORMALIZATION[backbone][0]`` of :mod:`sgwsss.constants`), as
            :func:`sgwsss.train.train_transform` does. The default, the ImageNet mean, is
            right for ImageNet-normalised backbones (ResNet-101) only.

    Call on an item dict (``image`` (3, H, W) float, optional ``mask`` (H, W)); returns a new
    dict with ``image`` (3, c, c) and ``mask`` (c, c); other keys pass through unchanged.
    """

    def __init__(
        self,
        crop_size: int = 321,
        scale: Sequence[float] = (0.5, 1.5),
        hflip: bool = True,
        ignore_index: int = 255,
        fill: float | Sequence[float] = IMAGENET_MEAN,
    ) -> None:
        if int(crop_size) != crop_size or crop_size < 1:
            raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {tuple(scale)!r}")
        self.crop_size = int(crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = bool(hflip)
        self.ignore_index = int(ignore_index)
        self.fill = [float(fill)] * 3 if isinstance(fill, (int, float)) else [float(f) for f in fill]
        self._crop = v2.RandomCrop(
            self.crop_size,
            pad_if_needed=True,
            fill={tv_tensors.Image: self.fill, tv_tensors.Mask: self.ignore_index},
        )
        self._flip = v2.RandomHorizontalFlip(p=0.5)

    def _rescale(self, item: dict[str, Any]) -> dict[str, Any]:
        lo, hi = self.scale
        s = lo + (hi - lo) * float(torch.rand(()))
        if s == 1.0:
            return item
        h, w = item["image"].shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        out = dict(item)
        out["image"] = F.resize(item["image"], size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        out["image"] = tv_tensors.wrap(out["image"].clamp(0.0, 1.0), like=item["image"])
        if "mask" in item:
            out["mask"] = F.resize(item["mask"], size, interpolation=v2.InterpolationMode.NEAREST)
        return out

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        out = self._rescale(_as_tv(item))
        out = self._crop(out)
        if self.hflip:
            out = self._flip(out)
        return _plain(out)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, hflip={self.hflip}, "
            f"ignore_index={self.ignore_index}, fill={[round(f, 4) for f in self.fill]})"
        )


class EvalTransform:
    """Identity on item dicts: full-size images (and masks) unchanged (a shallow copy)."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return _plain(dict(item))

    def __repr__(self) -> str:
        return "EvalTransform()"
