"""Evaluation: confusion matrices, mIoU and the one :class:`Evaluator` (:mod:`~sgwsss.evaluate.metrics`),
tables and percentages (:mod:`~sgwsss.evaluate.tables`), and the quality of each Table 1 stage's
pseudo labels (:mod:`~sgwsss.evaluate.stages`), and the paired bootstrap of a
difference in mIoU (:mod:`~sgwsss.evaluate.bootstrap`)."""
from sgwsss.evaluate.bootstrap import BootstrapResult, paired_bootstrap
from sgwsss.evaluate.metrics import (VOC_CLASSES, ConfusionMeter, Evaluator, confusion_matrix, evaluate_folder,
                                     iou_per_class, mean_iou)
from sgwsss.evaluate.stages import oracle_refinement, stage_miou, subset_indices
from sgwsss.evaluate.tables import markdown_table, pct, per_class_table

__all__ = [
    "VOC_CLASSES", "confusion_matrix", "iou_per_class", "mean_iou", "ConfusionMeter", "Evaluator",
    "evaluate_folder", "per_class_table", "markdown_table", "pct", "stage_miou", "oracle_refinement",
    "subset_indices", "paired_bootstrap", "BootstrapResult",
]
