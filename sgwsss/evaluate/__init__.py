"""Evaluation: confusion matrices and mIoU (:mod:`~sgwsss.evaluate.metrics`), the quality of
each Table 1 stage's pseudo labels (:mod:`~sgwsss.evaluate.stages`), and the paired bootstrap of a
difference in mIoU (:mod:`~sgwsss.evaluate.bootstrap`)."""
from sgwsss.evaluate.bootstrap import BootstrapResult, paired_bootstrap
from sgwsss.evaluate.metrics import (
    VOC_CLASSES,
    ConfusionMeter,
    confusion_matrix,
    evaluate_folder,
    iou_per_class,
    mean_iou,
    per_class_table,
)
from sgwsss.evaluate.stages import config_kwargs, oracle_refinement, stage_miou, subset_indices

__all__ = [
    "VOC_CLASSES", "confusion_matrix", "iou_per_class", "mean_iou", "ConfusionMeter", "per_class_table",
    "evaluate_folder", "stage_miou", "config_kwargs", "oracle_refinement", "subset_indices",
    "paired_bootstrap", "BootstrapResult",
]
