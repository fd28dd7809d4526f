"""Training configuration for Algorithm 1 of Ke & Hsu.

:class:`TrainConfig` holds every knob of the alternating training (step 1:
``L_cls + lam * L_aff``, Eq. 13; pseudo labels; step 2: ``L_seg``, Eq. 12), and
:data:`CONFIGS` names four presets:

``paper``
    The paper's setting: DeepLab-v2 ResNet-101, 321x321 crops, step 1 with batch
    10, learning rate 1e-3 for 50k iterations, step 2 with batch 8, learning rate
    5e-4 for 10k iterations, ``n = 2`` rounds, a 50x50 affinity grid, guided
    filter radius 17 and ``eps = 1e-6``.
``cpu``
    A laptop-sized run with EfficientNet-Lite0 (one round, 400 step-1 and 300 step-2
    iterations, stride 16, a 25x25 affinity grid), sized so that ``sgwsss train`` on the
    VOC sample takes at most 30 minutes on two cores. Measured: 28 min 19 s (step 1 11.1,
    pseudo labels 6.4, step 2 10.7 minutes) on a day when ``benchmarks/train.py`` read
    1650 ms per step-1 iteration. Shared cloud cores vary from day to day: with 400
    step-2 iterations, the same run (bit-identical weights) took 28 min 31 s on a day
    that read 1288 ms and 32 min 16 s on one that read 1800-1970 ms. Step 2 was therefore
    cut to 300 iterations, so that the budget holds on slow days too (28.6 minutes from
    that day's phase times). The segmentation network on ``val`` scores 21.4 mIoU (22.4
    with CRF) after 300 iterations, against 21.2 (22.6) after 400; step 1 and the pseudo
    labels are unchanged (bit-identical).
    Settings that differ from the paper, each measured on the sample (A-stage
    pseudo-label mIoU of 100 ``train`` images unless said otherwise):

    * ``classifier_init="identity"``: the classification branch starts as the
      identity on the 20 foreground maps (:meth:`sgwsss.model.SGNet.init_classifier`).
      With the paper's N(0, 0.01) on both the ASPP and the classifier, Eq. 1 was
      still at the label prior (loss ~0.19) after 100 iterations and A scored 5-15;
      with the identity start the loss was 0.10 after 80 iterations and A 24.5.
    * ``step1_lr=3e-3`` (28.8 after 400 iterations, against 26.4 at 1e-3; 1e-2
      fell back to the prior); ``step2_lr=2.5e-4`` (val mIoU 19.3 after 200
      iterations, against 16.8 at 1e-3).
    * ``freeze_early=True``: the stem and stride-4 layers keep their ImageNet
      weights (A 28.8 either way; an iteration costs about a fifth less).
    * the random walk uses ``beta = 50`` (``T ~ W^50``; at the paper's 1 the
      learned ``T`` is nearly flat and the walk blurs the maps: on a 500-iteration
      run ``R`` 19.8 and ``G`` 22.4 at beta 1, 22.3 and 24.9 at beta 50, with ``A``
      at 22.4). ``beta`` only changes the walk at pseudo-label time; ``L_aff``
      always trains ``T = D^-1 W`` (unnumbered in the paper).
    * pseudo labels come from ``G-iter15``, the paper's best stage, with the maps
      averaged over the image and its mirror image (``infer_flip``, +0.6).
``gpu``
    The ``cpu`` network and pseudo-label settings sized for one GPU: the first 2,500 images of
    ``train_aug`` (10,582 on the full data), 1,000 step-1 and 750 step-2 iterations (batch 8, the
    ``cpu`` learning rates), AMP. The chapters train it in place of ``cpu`` on a CUDA device
    (:func:`sgwsss.book.train_run`). Sized so that the whole run, and with it the first figure of
    any chapter, takes at most about 10 minutes on a Colab T4 once the data is in place. This is an
    estimate, not a measurement (no GPU was at hand); it rests on: the CPU data pipeline, 17 ms per
    augmented 256 px crop on one core here, so 2 loader workers (Colab's 2 vCPUs) feed about 115
    images/s, i.e. about 70 ms per batch of 8, which bounds both steps (GPU compute per iteration is
    less: NVIDIA's published EfficientNet-B0 training throughput is 1,301 images/s on one V100 with
    AMP; a T4 has about a third of its memory bandwidth and half its FP16 tensor throughput, so
    about 400 images/s, i.e. 20-40 ms per batch of 8 at our 256 px crops with its heavier head);
    and the pseudo labels at an assumed 15-33 images/s (on two CPU cores 2.9 images/s, 71% of it
    the forward pass, see ``benchmarks/pseudo_labels.py``). Step 1: 1,000 x 70 ms = 70 s; pseudo
    labels: 2,500 / 15-33 per s = 76-167 s; step 2: 750 x 70 ms = 53 s; start-up, image-level labels
    of ``train_aug`` and checkpoints about 35 s: 4-5.5 minutes, 8 if the GPU parts run at half the
    assumed speed. ``benchmarks/gpu_check.py`` measures the real figures on a GPU. Its accuracy has
    not been measured either (the ``cpu`` settings were tuned at 400 + 300 iterations).
``smoke``
    A few iterations on a handful of images with a random-init network; for tests
    and CI.

The environment variable ``SGWSSS_BUDGET`` (a positive float, default 1) scales the
step-1 and step-2 iteration counts of whatever :func:`get_config` returns
(``SGWSSS_BUDGET=0.1`` trains ten times shorter; at least one iteration per step
is kept); below 1 it also keeps only that fraction of the training images (at least 8, spread
evenly over the split). It is the single switch the book uses to train shorter under test; the
value used is recorded in the configuration's ``budget`` field.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

BUDGET_ENV = "SGWSSS_BUDGET"

from sgwsss.constants import CLASSIFIER_INITS
from sgwsss.constants import STAGES as STAGE_NAMES  # the Table 1 stage names, torch-free


@dataclass
class TrainConfig:
    """All settings of one Algorithm 1 run (see the module docstring for presets).

    The training images are the ``train_split`` list, restricted to ``train_ids`` when
    given, then to its first ``max_images``. Iteration counts are SGD iterations per step and per round; the learning rate
    follows the 'poly' schedule ``lr * (1 - it / iters) ** poly_power``. Batch
    sizes are per process: under ``torchrun`` with ``W`` processes the global batch
    is ``batch_size * W``.
    """

    name: str = "custom"
    # network
    backbone: str = "resnet101"
    pretrained: bool = True
    output_stride: int = 8
    freeze_bn: bool = True
    classifier_init: str = "normal"  # "identity": A^c starts as seg map c+1 (see SGNet.init_classifier)
    freeze_early: bool = False  # fix the stem and stride-4 layers (see SGNet.freeze_early)
    # data
    train_split: str = "train_aug"
    max_images: Optional[int] = None
    train_ids: Optional[Tuple[str, ...]] = None
    crop_size: int = 321
    scale: Tuple[float, float] = (0.5, 1.5)
    hflip: bool = True
    # step 1: L_cls + lam * L_aff (Eq. 13)
    step1_batch_size: int = 10
    step1_lr: float = 1e-3
    step1_iters: int = 50_000
    # step 2: L_seg on pseudo labels (Eq. 12)
    step2_batch_size: int = 8
    step2_lr: float = 5e-4
    step2_iters: int = 10_000
    step2_guided_filter: bool = False  # L_seg through the guided-filter layer (Eqs. 9-10, see step2_loss_fn)
    # Algorithm 1
    rounds: int = 2
    lam: float = 1.0
    grid: int = 50
    beta: float = 1.0  # T ~ W^beta for the random walk at pseudo-label time (1: the paper's T, unnumbered)
    radius: int = 17
    eps: float = 1e-6
    pseudo_stage: str = "G-iter15"
    pseudo_crf: bool = False
    # test-time augmentation of the network's maps (SGNet.infer): pseudo labels and predictions
    infer_scales: Tuple[float, ...] = (1.0,)
    infer_flip: bool = False
    # optimiser
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # bookkeeping
    checkpoint_interval: int = 1000
    log_interval: int = 20
    seed: int = 0
    num_workers: int = 2
    amp: bool = True
    budget: float = 1.0

    def __post_init__(self):
        if isinstance(self.scale, list):
            self.scale = tuple(self.scale)
        if isinstance(self.infer_scales, (list, tuple)) and self.infer_scales and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.infer_scales):
            self.infer_scales = tuple(float(v) for v in self.infer_scales)
        else:
            raise ValueError(f"infer_scales must be a non-empty list of positive numbers, got {self.infer_scales!r}")
        if not (isinstance(self.scale, tuple) and len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"scale must be a pair (min, max) with 0 < min <= max, got {self.scale!r}")
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        positive_ints = ("output_stride", "crop_size", "step1_batch_size", "step1_iters", "step2_batch_size",
                         "step2_iters", "rounds", "grid", "radius", "checkpoint_interval", "log_interval")
        for key in positive_ints:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key in ("step1_lr", "step2_lr", "eps", "beta", "budget", "poly_power"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        for key in ("lam", "momentum", "weight_decay"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        if self.max_images is not None and (isinstance(self.max_images, bool) or not isinstance(self.max_images, int)
                                            or self.max_images < 1):
            raise ValueError(f"max_images must be None or a positive integer, got {self.max_images!r}")
        if self.train_ids is not None:
            if isinstance(self.train_ids, str) or not all(isinstance(i, str) for i in self.train_ids) \
                    or len(self.train_ids) == 0:
                raise ValueError(f"train_ids must be None or a non-empty list of id strings, got {self.train_ids!r}")
            self.train_ids = tuple(self.train_ids)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {self.num_workers!r}")
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS}, got {self.classifier_init!r}")
        if self.pseudo_stage not in STAGE_NAMES:
            raise ValueError(f"pseudo_stage must be one of {STAGE_NAMES}, got {self.pseudo_stage!r}")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (``scale`` as a list)."""
        out = dataclasses.asdict(self)
        out["scale"] = list(self.scale)
        out["infer_scales"] = list(self.infer_scales)
        out["train_ids"] = None if self.train_ids is None else list(self.train_ids)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        _check_fields(data)
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` applied (unknown fields raise ``ValueError``)."""
        _check_fields(changes)
        return dataclasses.replace(self, **changes)


def _check_fields(data: Dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")


CONFIGS: Dict[str, TrainConfig] = {
    "paper": TrainConfig(
        name="paper", backbone="resnet101", pretrained=True, output_stride=8, crop_size=321, scale=(0.5, 1.5),
        step1_batch_size=10, step1_lr=1e-3, step1_iters=50_000,
        step2_batch_size=8, step2_lr=5e-4, step2_iters=10_000,
        rounds=2, grid=50, radius=17, eps=1e-6, checkpoint_interval=1000, log_interval=20, num_workers=4,
    ),
    "cpu": TrainConfig(
        name="cpu", backbone="efficientnet_lite0", pretrained=True, output_stride=16, classifier_init="identity",
        freeze_early=True, crop_size=256, scale=(0.7, 1.3), step1_batch_size=8, step1_lr=3e-3, step1_iters=400,
        step2_batch_size=8, step2_lr=2.5e-4, step2_iters=300,
        rounds=1, grid=25, beta=50.0, radius=17, eps=1e-6, pseudo_stage="G-iter15", infer_flip=True,
        checkpoint_interval=100, log_interval=10, num_workers=2, amp=True,
    ),
    "gpu": TrainConfig(
        name="gpu", backbone="efficientnet_lite0", pretrained=True, output_stride=16, classifier_init="identity",
        freeze_early=True, max_images=2500, crop_size=256, scale=(0.7, 1.3), step1_batch_size=8, step1_lr=3e-3,
        step1_iters=1000, step2_batch_size=8, step2_lr=2.5e-4, step2_iters=750,
        rounds=1, grid=25, beta=50.0, radius=17, eps=1e-6, pseudo_stage="G-iter15", infer_flip=True,
        checkpoint_interval=250, log_interval=10, num_workers=2, amp=True,
    ),
    "smoke": TrainConfig(
        name="smoke", backbone="efficientnet_lite0", pretrained=False, output_stride=8, max_images=4, crop_size=64,
        step1_batch_size=2, step1_lr=1e-3, step1_iters=4,
        step2_batch_size=2, step2_lr=5e-4, step2_iters=3,
        rounds=1, grid=8, radius=4, eps=1e-6, pseudo_stage="G", checkpoint_interval=2, log_interval=1,
        num_workers=0, amp=False,
    ),
}


def budget_from_env() -> float:
    """The ``SGWSSS_BUDGET`` scale (1.0 when unset); a clear ``ValueError`` when malformed."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a positive number, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{BUDGET_ENV} must be a positive number, got {raw!r}")
    return value


def scale_iterations(iters: int, budget: float) -> int:
    """``max(1, round(iters * budget))``: the iteration count under a budget."""
    return max(1, int(round(iters * budget)))


def get_config(name: str = "cpu", budget: Optional[float] = None, **overrides) -> TrainConfig:
    """The preset ``name`` (``paper``, ``cpu``, ``gpu``, ``smoke``) with ``overrides`` applied.

    The step-1 and step-2 iteration counts (after overrides) are multiplied by
    ``budget`` (default: ``$SGWSSS_BUDGET``, else 1), see :func:`scale_iterations`.
    Unknown names and unknown fields raise ``ValueError``.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config name {name!r}; choose one of {sorted(CONFIGS)}")
    if "budget" in overrides:
        raise ValueError("pass the budget as get_config(..., budget=x) or $SGWSSS_BUDGET, not as a field override")
    cfg = CONFIGS[name].replace(**overrides)
    budget = budget_from_env() if budget is None else float(budget)
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget!r}")
    if budget != 1.0:
        cfg = cfg.replace(step1_iters=scale_iterations(cfg.step1_iters, budget),
                          step2_iters=scale_iterations(cfg.step2_iters, budget), budget=budget)
    return cfg


def as_config(config) -> TrainConfig:
    """Accept a :class:`TrainConfig`, a preset name or a dict (as stored in a checkpoint)."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, str):
        return get_config(config)
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    raise TypeError(f"config must be a TrainConfig, a preset name or a dict, got {type(config).__name__}")
