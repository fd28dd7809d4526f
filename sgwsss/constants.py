"""Names shared by the package, the configuration and the command line (no torch import).

:data:`STAGES` are the rows of Table 1 of Ke & Hsu (see :mod:`sgwsss.refine.stages`);
:data:`AFFINITY_STAGES` are those that start from the affinity random walk (Eq. 5)
and so need the transition matrix ``T`` (Eqs. 2-3); :data:`CLASSIFIER_INITS` are the
starts of the classification branch; :data:`INPUT_NORMALIZATION` is each backbone's
input normalisation.
"""

STAGES = ("A", "R", "G-w/o-aff", "G", "G-iter15-w/o-aff", "G-iter15")
AFFINITY_STAGES = ("R", "G", "G-iter15")

#: Starts of the classification branch (see :meth:`sgwsss.model.SGNet.init_classifier`):
#: ``"normal"``: N(0, 0.01), bias 0, like every new layer (DeepLab-v2; the paper);
#: ``"identity"``: A^c starts as segmentation map c + 1.
CLASSIFIER_INITS = ("normal", "identity")

#: Input normalisation of each backbone, ``(mean, std)`` per RGB channel of an image in
#: [0, 1] (:meth:`sgwsss.model.backbones.Backbone.normalize`): torchvision's ImageNet
#: statistics for ResNet-101; ``(255 x - 127) / 128`` for EfficientNet-Lite0, i.e. mean
#: 127/255 and std 128/255. A pixel equal to the mean is 0 after normalisation, which is
#: what crop padding must be (:func:`sgwsss.train.train_transform`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
INPUT_NORMALIZATION = {
    "resnet101": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD),
}
