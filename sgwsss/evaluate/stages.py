"""Pseudo-label quality of each Table 1 stage, and the refinement on degraded ground truth.

:func:`stage_miou` runs the step-1 network once per image through a
:class:`~sgwsss.pipeline.PseudoLabelPipeline` (a run's: ``PseudoLabelPipeline.from_config(cfg)``)
and scores the pseudo labels (Eq. 11) of every requested stage against the ground truth,
with and without dense CRF (:class:`~sgwsss.evaluate.Evaluator`). (The paper's Table 1 itself
scores segmentation networks trained on each stage's labels, on val: ``benchmarks/table1.py``;
its numbers are in :mod:`sgwsss.paper`.) :func:`oracle_refinement` applies the self-guided
refinement to degraded ground-truth masks, to see when iterating it pays.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch

from sgwsss.constants import AFFINITY_STAGES, STAGES
from sgwsss.evaluate.metrics import Evaluator, confusion_matrix


def subset_indices(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n`` is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def stage_miou(model, dataset, stages: Sequence[str] = STAGES, pipeline=None, *, crf: bool = False,
               indices: Iterable[int] | None = None, progress: bool = True,
               per_image: bool = False) -> Dict[str, dict]:
    """Pseudo-label mIoU of each stage on ``dataset`` (a :class:`~sgwsss.data.VOCSegmentation` with
    ``with_mask=True``).

    ``pipeline``: a :class:`~sgwsss.pipeline.PseudoLabelPipeline` for everything but the stage
    (affinity grid and beta, guided filter, test-time augmentation, CRF settings), e.g. a run's
    ``PseudoLabelPipeline.from_config(cfg)``; ``None``: the paper's defaults. Returns ``{stage:
    {"miou", "iou", "num_images", "split", "confusion", "seconds_per_image"}}`` and, with
    ``crf=True``, also ``{stage + "+CRF": ...}`` (the pipeline's CRF recipe,
    :meth:`~sgwsss.pipeline.PseudoLabelPipeline.crf_refine`). The network runs once per image;
    the stages share its outputs (and the transition matrix, computed outside the timing).
    ``per_image=True`` adds ``"ids"`` (the scored ids, in order) and ``"per_image"``, an
    ``(N, C, C)`` int64 stack of each image's confusion matrix (rows ground truth, columns
    prediction; they sum to ``"confusion"``), to every stage's entry, e.g. for
    :func:`~sgwsss.evaluate.paired_bootstrap`.
    """
    from tqdm.auto import tqdm

    from sgwsss.pipeline import PseudoLabelPipeline
    from sgwsss.refine.stages import check_stage

    pipeline = PseudoLabelPipeline() if pipeline is None else pipeline
    for s in stages:
        check_stage(s)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    names = list(stages) + ([s + "+CRF" for s in stages] if crf else [])
    scores = {s: Evaluator(dataset) for s in names}
    seconds = {s: 0.0 for s in names}
    confusions = {s: [] for s in names}

    def add(name, image_id, pred, gt):
        scores[name].add(image_id, pred, gt)
        if per_image:
            confusions[name].append(confusion_matrix(pred, gt, scores[name].meter.num_classes,
                                                     scores[name].meter.ignore_index))
    for i in tqdm(indices, desc="Table 1 stages", disable=not progress):
        item = dataset[i]
        if "mask" not in item:
            raise ValueError("stage_miou needs ground-truth masks: build the dataset with with_mask=True")
        net = pipeline.infer(model, item["image"][None], item["label"][None])
        if any(s in AFFINITY_STAGES for s in stages):
            pipeline.transition(net)
        for s in stages:
            t0 = time.perf_counter()
            pl = pipeline.labels(net, s)[0].cpu().numpy()
            seconds[s] += time.perf_counter() - t0
            add(s, item["id"], pl, item["mask"])
            if crf:
                t0 = time.perf_counter()
                refined = pipeline.crf_refine(net.image[0], pl, net.labels[0])
                seconds[s + "+CRF"] += time.perf_counter() - t0
                add(s + "+CRF", item["id"], refined, item["mask"])
    n = max(len(indices), 1)
    out = {s: {**scores[s].result(), "seconds_per_image": seconds[s] / n} for s in names}
    if per_image:
        c = scores[names[0]].meter.num_classes
        for s in names:
            out[s].update(ids=list(scores[s].scored),
                          per_image=np.stack(confusions[s]) if confusions[s] else np.zeros((0, c, c), np.int64))
    return out


def oracle_refinement(dataset, indices: Iterable[int] | None = None, *, stride: int = 16, grow: int = 0,
                      iterations: Sequence[int] = (1, 15), radius: int = 17, eps: float = 1e-6,
                      progress: bool = True) -> Dict[str, float]:
    """What the self-guided refinement does to maps whose only error is known: degraded ground truth.

    For every present class of each image the ground-truth mask is grown by ``grow``
    pixels (shrunk when negative; max-pooling), then blurred like a stride-``stride``
    localization map (average pooling, bilinear upsampling). The pseudo labels (Eq. 11)
    of these maps and of their self-guided refinement (:func:`self_guided_refine`,
    each count in ``iterations``) are scored against the ground truth. Returns
    ``{"maps": mIoU, "G x1": mIoU, ...}``. No network: the numbers are deterministic.
    """
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from sgwsss.refine.pseudo_label import pseudo_label
    from sgwsss.refine.self_guided import self_guided_refine

    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    names = ["maps"] + [f"G x{k}" for k in iterations]
    scores = {n: Evaluator(dataset) for n in names}
    for i in tqdm(indices, desc="degraded masks", disable=not progress):
        item = dataset[i]
        if "mask" not in item:
            raise ValueError("oracle_refinement needs ground-truth masks: build the dataset with with_mask=True")
        gt = item["mask"]
        labels = item["label"][None]
        h, w = gt.shape
        obj = torch.stack([(gt == c + 1) for c in range(labels.shape[1])]).float()[None]  # (1, 20, H, W)
        if grow > 0:
            obj = F.max_pool2d(obj, 2 * grow + 1, stride=1, padding=grow)
        elif grow < 0:
            obj = 1 - F.max_pool2d(1 - obj, -2 * grow + 1, stride=1, padding=-grow)
        coarse = F.avg_pool2d(obj, stride, ceil_mode=True)
        maps = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        maps = maps * (labels != 0)[:, :, None, None]
        image = item["image"][None]
        scores["maps"].add(item["id"], pseudo_label(maps, labels)[0], gt)
        for k in iterations:
            refined = self_guided_refine(image, maps, iterations=int(k), radius=radius, eps=eps, labels=labels)
            scores[f"G x{k}"].add(item["id"], pseudo_label(refined, labels)[0], gt)
    return {n: ev.result()["miou"] for n, ev in scores.items()}
