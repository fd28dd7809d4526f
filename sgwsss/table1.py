"""The paper's Table 1 protocol: pseudo-label quality of each refinement stage.

:func:`stage_miou` runs the step-1 network once per image and scores the pseudo
labels (Eq. 11) of every requested stage against the ground truth, with and
without dense CRF. :data:`PAPER_TABLE1` holds the paper's numbers where they have
been transcribed (``None`` where not).
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from sgwsss.refine.stages import STAGES

#: mIoU (%) reported in Table 1 of Ke & Hsu for each stage (segmentation network on VOC val).
#: ``None``: not transcribed into this package yet -- fill in from the paper; never guessed.
PAPER_TABLE1: Dict[str, float | None] = {stage: None for stage in STAGES}


def subset_indices(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n`` is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def stage_miou(model, dataset, stages: Sequence[str] = STAGES, *, grid: int = 50, beta: float = 1.0,
               crf: bool = False, indices: Iterable[int] | None = None, progress: bool = True,
               stage_kwargs: dict | None = None, scales: Sequence[float] = (1.0,),
               flip: bool = False) -> Dict[str, dict]:
    """Pseudo-label mIoU of each stage on ``dataset`` (items need ``mask``: use ``with_mask=True``).

    The localization maps are averaged over ``scales`` and, with ``flip``, mirrored
    inputs (:meth:`~sgwsss.model.SGNet.infer`), as in pseudo-label generation. Returns ``{stage: {"miou", "iou", "seconds_per_image"}}`` and, with ``crf=True``,
    also ``{stage + "+CRF": ...}``. The network runs once per image; the stages
    share its outputs.
    """
    from tqdm.auto import tqdm

    from sgwsss.crf import crf_labels, labels_to_probs
    from sgwsss.data import CLASSES
    from sgwsss.evaluate import ConfusionMeter
    from sgwsss.refine.affinity import affinity_matrix, transition_matrix
    from sgwsss.refine.stages import stage_pseudo_labels
    from sgwsss.viz import to_hwc_uint8

    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; valid stages: {', '.join(STAGES)}")
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    names = list(stages) + ([s + "+CRF" for s in stages] if crf else [])
    meters = {s: ConfusionMeter() for s in names}
    seconds = {s: 0.0 for s in names}
    dev = next(model.parameters()).device
    model.eval()
    for i in tqdm(indices, desc="Table 1 stages", disable=not progress):
        item = dataset[i]
        if "mask" not in item:
            raise ValueError("stage_miou needs ground-truth masks: build the dataset with with_mask=True")
        x = item["image"][None].to(dev)
        lab = item["label"][None].to(dev)
        gt = item["mask"].numpy()
        with torch.no_grad():
            out = model.infer(x, tuple(scales), flip)
            T = transition_matrix(affinity_matrix(out.feat, grid=grid), beta=beta)
            for s in stages:
                t0 = time.perf_counter()
                pl = stage_pseudo_labels(s, x, out.cam, lab, transition=T, grid=grid, **(stage_kwargs or {}))[0]
                seconds[s] += time.perf_counter() - t0
                pl = pl.cpu().numpy()
                meters[s].update(pl, gt)
                if crf:
                    t0 = time.perf_counter()
                    allowed = [0] + [c + 1 for c in np.flatnonzero(item["label"].numpy() > 0.5)]
                    probs = labels_to_probs(pl, len(CLASSES), classes=allowed)
                    refined = crf_labels(to_hwc_uint8(item["image"]), probs)
                    seconds[s + "+CRF"] += time.perf_counter() - t0
                    meters[s + "+CRF"].update(refined, gt)
    n = max(len(indices), 1)
    return {s: {**meters[s].as_dict(CLASSES), "seconds_per_image": seconds[s] / n} for s in names}
