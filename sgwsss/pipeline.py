"""The pseudo-label pipeline: a network and images -> a Table 1 stage's maps -> Eq. 11 labels (-> dense CRF).

:class:`PseudoLabelPipeline` is the one place that turns a network and images into the maps
and pseudo labels of a Table 1 stage. Training (:func:`sgwsss.train.generate_pseudo_labels`,
step 1 -> step 2 of Algorithm 1), ``sgwsss pseudo-labels``, the stage scores
(:func:`sgwsss.evaluate.stage_miou`), the benchmarks and the book's
:class:`~sgwsss.book.Explorer` all call it, and :meth:`PseudoLabelPipeline.from_config` is
the one translation of a run's :class:`~sgwsss.train.TrainConfig` into its settings. So what
the book shows, what the benchmarks score and what step 2 trains on are the same labels.

The recipe, for a batch of images ``I`` (B, 3, H, W) in [0, 1] with image-level labels
``y`` (B, 20):

1. **Network** (:meth:`~PseudoLabelPipeline.infer`): ``model.infer(I, scales, flip)`` in eval
   mode without gradient: the localization maps ``cam`` (B, 20, h, w) averaged over the
   test-time scales and mirror images, and the aggregation features ``F`` of the plain pass.
2. **Affinity** (stages ``R``, ``G``, ``G-iter15`` only): ``W`` (Eq. 2) of ``F`` on a
   ``grid x grid`` grid and ``T = D^-1 W^beta`` (unnumbered in the paper; ``beta = 1`` is its T).
3. **Stage maps** (:func:`sgwsss.refine.stages.refine_stage`): ``A`` is each present class's
   map min-max scaled to [0, 1] *at the network's resolution, then* bilinearly upsampled to
   the image (normalise, then upsample: the order the training and the Table 1 scores always
   used; the book's explorer used to upsample first, so its stage ``A`` differed from theirs
   by the interpolation's overshoot). ``R = T A`` on the grid, upsampled; the ``G`` stages
   refine ``A`` or ``R`` with 1 or 15 self-guided iterations (Otsu + guided filter with
   ``radius`` and ``eps``, Eqs. 6-8).
4. **Pseudo labels** (Eq. 11, :func:`sgwsss.refine.pseudo_label.pseudo_label`).
5. **Dense CRF** (optional, :meth:`~PseudoLabelPipeline.crf_refine`): the labels become soft
   probabilities (:func:`sgwsss.crf.labels_to_probs`, confidence 0.7) over the *allowed*
   classes, background plus every class of the image-level label, and the CRF's arg-max
   replaces them. (Training's ``pseudo_crf`` used to allow only the classes already in the
   pseudo label while the Table 1 "+CRF" column allowed every image-level class; the
   image-level label is the weak supervision the method is given, so the CRF may use it:
   one recipe, the latter, for both.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from sgwsss.constants import AFFINITY_STAGES
from sgwsss.crf import CRFParams, crf_labels, labels_to_probs
from sgwsss.data.voc import NUM_CLASSES
from sgwsss.refine.affinity import affinity_matrix, transition_matrix
from sgwsss.refine.pseudo_label import pseudo_label
from sgwsss.refine.stages import base_maps, check_stage, refine_maps

__all__ = ["PseudoLabelPipeline", "NetworkMaps"]


@dataclass
class NetworkMaps:
    """One batch's network outputs, the start of every stage, with the affinity cached per grid and beta.

    ``image`` (B, 3, H, W) in [0, 1] and ``labels`` (B, C) on the network's device; ``cam``
    (B, C, h, w) localization maps; ``feat`` (B, k, ceil(H/4), ceil(W/4)) aggregation features.
    """

    image: torch.Tensor
    labels: torch.Tensor
    cam: torch.Tensor
    feat: torch.Tensor
    cache: Dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PseudoLabelPipeline:
    """Network -> affinity -> Table 1 stage -> Eq. 11 -> CRF (see the module docstring).

    Attributes:
        stage: the Table 1 stage (``A``, ``R``, ``G-w/o-aff``, ``G``, ``G-iter15-w/o-aff``, ``G-iter15``).
        grid: side of the affinity grid (Eqs. 2-3, 5).
        beta: power of ``W`` in ``T = D^-1 W^beta`` (1: the paper's T, unnumbered there).
        radius, eps: the guided filter's window radius and regularisation (Eqs. 6-8).
        scales, flip: test-time augmentation of the localization maps (:meth:`~sgwsss.model.SGNet.infer`).
        crf: dense-CRF settings to refine the labels with, or None (no CRF).
    """

    stage: str = "G-iter15"
    grid: int = 50
    beta: float = 1.0
    radius: int = 17
    eps: float = 1e-6
    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: Optional[CRFParams] = None

    def __post_init__(self):
        check_stage(self.stage)
        if isinstance(self.grid, bool) or int(self.grid) != self.grid or self.grid < 1:
            raise ValueError(f"grid must be a positive integer, got {self.grid!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta!r}")
        if self.crf is not None and not isinstance(self.crf, CRFParams):
            raise TypeError(f"crf must be None or a CRFParams, got {type(self.crf).__name__}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @classmethod
    def from_config(cls, config, stage: Optional[str] = None,
                    crf: Union[bool, CRFParams, None] = None) -> "PseudoLabelPipeline":
        """The pipeline of a run: the one translation of a :class:`~sgwsss.train.TrainConfig` (or a
        preset name / config dict) into the pipeline's settings.

        ``grid``, ``beta``, ``radius``, ``eps``, ``infer_scales`` / ``infer_flip`` come from the
        configuration; ``stage`` defaults to its ``pseudo_stage`` and ``crf`` to its ``pseudo_crf``
        (``True``: the default :class:`~sgwsss.crf.CRFParams`; a ``CRFParams``: those settings).
        """
        from sgwsss.train.config import as_config

        cfg = as_config(config)
        crf = cfg.pseudo_crf if crf is None else crf
        params = crf if isinstance(crf, CRFParams) else (CRFParams() if crf else None)
        return cls(stage=cfg.pseudo_stage if stage is None else stage, grid=cfg.grid, beta=cfg.beta,
                   radius=cfg.radius, eps=cfg.eps, scales=cfg.infer_scales, flip=cfg.infer_flip, crf=params)

    def replace(self, **changes) -> "PseudoLabelPipeline":
        """A copy with ``changes`` applied (e.g. ``beta=1`` or another ``stage``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the steps
    def infer(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> NetworkMaps:
        """Step 1: the network's maps of ``images`` (B, 3, H, W) with image-level ``labels`` (B, C).

        Runs ``model.infer`` with the pipeline's test-time augmentation, in eval mode (the
        model's mode is restored afterwards) and without gradient; inputs move to the model's device.
        """
        device = next(model.parameters()).device
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.infer(images, self.scales, self.flip)
        finally:
            model.train(was_training)
        return NetworkMaps(images, labels, out.cam, out.feat)

    def affinity(self, net: NetworkMaps) -> torch.Tensor:
        """Step 2a: ``W`` (Eq. 2) of the features on the ``grid x grid`` grid: (B, N, N), cached in ``net``."""
        key = ("W", self.grid)
        if key not in net.cache:
            with torch.no_grad():
                net.cache[key] = affinity_matrix(net.feat, grid=self.grid)
        return net.cache[key]

    def transition(self, net: NetworkMaps, beta: Optional[float] = None) -> torch.Tensor:
        """Step 2b: ``T = D^-1 W^beta`` (unnumbered in the paper; ``beta``: the pipeline's): (B, N, N), cached."""
        beta = self.beta if beta is None else beta
        key = ("T", self.grid, float(beta))
        if key not in net.cache:
            with torch.no_grad():
                net.cache[key] = transition_matrix(self.affinity(net), beta=beta)
        return net.cache[key]

    def base_maps(self, net: NetworkMaps, stage: Optional[str] = None, beta: Optional[float] = None) -> torch.Tensor:
        """The maps ``stage`` starts from, ``A`` or ``R``, at the image size: (B, C, H, W)
        (:func:`sgwsss.refine.stages.base_maps`)."""
        stage = self.stage if stage is None else stage
        with torch.no_grad():
            t = self.transition(net, beta) if stage in AFFINITY_STAGES else None
            return base_maps(stage, net.image, net.cam, net.labels, transition=t, grid=self.grid)

    def refine(self, net: NetworkMaps, maps: torch.Tensor, stage: Optional[str] = None, **kw) -> torch.Tensor:
        """The stage's self-guided refinement of its :meth:`base_maps` (none for ``A`` and ``R``).

        ``kw`` go to :func:`~sgwsss.refine.self_guided.self_guided_refine`; ``radius`` and ``eps``
        default to the pipeline's.
        """
        kw.setdefault("radius", self.radius)
        kw.setdefault("eps", self.eps)
        with torch.no_grad():
            return refine_maps(self.stage if stage is None else stage, net.image, maps, net.labels, **kw)

    def stage_maps(self, net: NetworkMaps, stage: Optional[str] = None, beta: Optional[float] = None,
                   **kw) -> torch.Tensor:
        """Step 3: the maps of a Table 1 stage (default: the pipeline's) at the image size: (B, C, H, W)."""
        return self.refine(net, self.base_maps(net, stage, beta), stage, **kw)

    def labels(self, net: NetworkMaps, stage: Optional[str] = None, beta: Optional[float] = None,
               **kw) -> torch.Tensor:
        """Step 4: the stage's pseudo labels (Eq. 11), no CRF: (B, H, W) int64, 0 = background."""
        return pseudo_label(self.stage_maps(net, stage, beta, **kw), net.labels)

    def crf_refine(self, image: torch.Tensor, pseudo: np.ndarray, labels: torch.Tensor) -> np.ndarray:
        """Step 5: the dense CRF's labels for one image: (H, W) int64.

        ``image`` (3, H, W) in [0, 1]; ``pseudo`` (H, W) Eq. 11 labels; ``labels`` (C,) the
        image-level label. Allowed classes: background and every class of ``labels``
        (see the module docstring); CRF settings: the pipeline's ``crf``, else the defaults.
        """
        present = torch.nonzero(torch.as_tensor(labels).cpu() != 0).flatten()
        allowed = [0] + [int(c) + 1 for c in present]
        probs = labels_to_probs(np.asarray(pseudo).astype(np.int64), NUM_CLASSES, classes=allowed)
        return crf_labels(image.detach().cpu().numpy(), probs, self.crf or CRFParams())

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """Steps 1-5 for a batch: the pipeline's stage's pseudo labels (B, H, W) int64, CRF-refined
        when ``crf`` is set."""
        net = self.infer(model, images, labels)
        masks = self.labels(net).cpu().numpy()
        if self.crf is not None:
            masks = np.stack([self.crf_refine(img, m, lab) for img, m, lab in zip(net.image, masks, net.labels)])
        return masks
