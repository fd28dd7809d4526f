"""DeepLab-v2 style self-guided network (Ke & Hsu): backbones, heads, :func:`build_model`."""

from sgwsss.model.backbones import (
    BACKBONES,
    Backbone,
    EfficientNetLite0,
    EfficientNetLite0Backbone,
    ResNet101Backbone,
    build_backbone,
    load_efficientnet_lite0_imagenet,
)
from sgwsss.model.network import ASPP, CLASSIFIER_INITS, DEFAULT_OUTPUT_STRIDE, SGNet, SGOutput, build_model

__all__ = [
    "ASPP",
    "BACKBONES",
    "CLASSIFIER_INITS",
    "DEFAULT_OUTPUT_STRIDE",
    "Backbone",
    "EfficientNetLite0",
    "EfficientNetLite0Backbone",
    "ResNet101Backbone",
    "SGNet",
    "SGOutput",
    "build_backbone",
    "build_model",
    "load_efficientnet_lite0_imagenet",
]
