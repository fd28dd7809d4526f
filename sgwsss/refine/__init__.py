"""Refinement operators, in the order of the paper's pipeline.

* :mod:`~sgwsss.refine.affinity` -- W (Eq. 2), T = D^-1 W (unnumbered, Sec. 3.2), colour similarity M (Eq. 3, target of Eq. 4)
* :mod:`~sgwsss.refine.random_walk` -- R = T A (Eq. 5)
* :mod:`~sgwsss.refine.otsu` -- Otsu thresholds, binarisation B^c
* :mod:`~sgwsss.refine.guided_filter` -- guided filter (Eqs. 6-8), differentiable (Eqs. 9-10)
* :mod:`~sgwsss.refine.guided_layer` -- the filter as a trainable layer, its coefficients explicit (Eqs. 6-10)
* :mod:`~sgwsss.refine.self_guided` -- Otsu + guided filter, iterated
* :mod:`~sgwsss.refine.pseudo_label` -- pseudo labels (Eq. 11)
* :mod:`~sgwsss.refine.stages` -- the Table 1 stages (A, R, G-w/o-aff, G, G-iter15-w/o-aff, G-iter15)
"""
from sgwsss.refine.affinity import affinity_matrix, color_similarity, transition_matrix
from sgwsss.refine.guided_filter import GuidedFilter, guide_statistics, guided_filter
from sgwsss.refine.otsu import binarize, otsu_threshold
from sgwsss.refine.pseudo_label import pseudo_label
from sgwsss.refine.random_walk import random_walk
from sgwsss.refine.self_guided import self_guided_refine
from sgwsss.refine.stages import STAGES, base_maps, normalize_maps, refine_maps, refine_stage, stage_pseudo_labels

__all__ = [
    "affinity_matrix", "transition_matrix", "color_similarity", "random_walk", "otsu_threshold", "binarize",
    "guided_filter", "GuidedFilter", "guide_statistics", "self_guided_refine", "pseudo_label", "STAGES",
    "normalize_maps", "base_maps", "refine_maps", "refine_stage", "stage_pseudo_labels",
]
