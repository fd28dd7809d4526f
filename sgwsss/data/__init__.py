"""PASCAL VOC 2012 (+ SBD augmentation) with image-level labels.

Set ``SGWSSS_VOC_ROOT`` to the folder holding ``VOCdevkit/`` (or the ``VOC2012`` folder).
"""

from sgwsss.data import transforms, voc
from sgwsss.data.transforms import IMAGENET_MEAN, EvalTransform, TrainTransform
from sgwsss.data.voc import (CLASSES, ENV_VAR, IGNORE_INDEX, NUM_CLASSES, PALETTE, VOCDataError, VOCFormatError,
                             VOCMissingError, VOCSegmentation, available_splits, cache_dir, collate_eval, colorize,
                             label_to_names, names_to_label, read_mask, read_split, resolve_root, save_mask)

__all__ = [*voc.__all__, *transforms.__all__]
