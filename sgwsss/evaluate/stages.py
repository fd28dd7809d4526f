"""Pseudo-label quality of each Table 1 stage, and the refinement on degraded ground truth.

:func:`stage_miou` runs the step-1 network once per image and scores the pseudo
labels (Eq. 11) of every requested stage against the ground truth, with and
without dense CRF; :func:`config_kwargs` takes its settings from a run's
configuration. (The paper's Table 1 itself scores segmentation networks trained on
each stage's labels, on val: ``benchmarks/table1.py``; its numbers are in
:mod:`sgwsss.paper`.) :func:`oracle_refinement` applies the self-guided refinement to
degraded ground-truth masks, to see when iterating it pays.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from sgwsss.constants import STAGES


def subset_indices(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n`` is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def config_kwargs(cfg) -> dict:
    """The keyword arguments of :func:`stage_miou` that a run's configuration fixes: the affinity
    ``grid``, the walk's ``beta``, the guided filter's ``radius`` / ``eps`` and the maps'
    test-time augmentation (``scales``, ``flip``), so scores use what its pseudo labels used."""
    from sgwsss.train.config import as_config

    cfg = as_config(cfg)
    return {"grid": cfg.grid, "beta": cfg.beta, "stage_kwargs": {"radius": cfg.radius, "eps": cfg.eps},
            "scales": cfg.infer_scales, "flip": cfg.infer_flip}


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
    from sgwsss.evaluate.metrics import ConfusionMeter
    from sgwsss.refine.affinity import affinity_matrix, transition_matrix
    from sgwsss.refine.stages import stage_pseudo_labels

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
                    refined = crf_labels(item["image"].numpy(), probs)
                    seconds[s + "+CRF"] += time.perf_counter() - t0
                    meters[s + "+CRF"].update(refined, gt)
    n = max(len(indices), 1)
    return {s: {**meters[s].as_dict(CLASSES), "seconds_per_image": seconds[s] / n} for s in names}


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

    from sgwsss.data import CLASSES
    from sgwsss.evaluate.metrics import ConfusionMeter
    from sgwsss.refine.pseudo_label import pseudo_label
    from sgwsss.refine.self_guided import self_guided_refine

    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    names = ["maps"] + [f"G x{k}" for k in iterations]
    meters = {n: ConfusionMeter() for n in names}
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
        meters["maps"].update(pseudo_label(maps, labels)[0].numpy(), gt.numpy())
        for k in iterations:
            refined = self_guided_refine(image, maps, iterations=int(k), radius=radius, eps=eps, labels=labels)
            meters[f"G x{k}"].update(pseudo_label(refined, labels)[0].numpy(), gt.numpy())
    return {n: m.as_dict(CLASSES)["miou"] for n, m in meters.items()}
