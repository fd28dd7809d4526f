"""Helpers shared by the book's chapters (d2l style: chapters import, the package works).

* :func:`voc_root` -- where the data is: ``$SGWSSS_VOC_ROOT`` locally, a download
  into the cache in Colab.
* :func:`work_dir` -- where chapters keep trained checkpoints so later chapters
  reuse them (``$SGWSSS_WORK_DIR``, default ``<cache>/work`` with the cache of
  :func:`sgwsss.data.cache_dir`, ``~/.cache/sgwsss`` by default).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_URL = "https://github.com/sgwsss/sgwsss"


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def voc_root(root: str | os.PathLike | None = None) -> Path:
    """The VOC root for the chapters.

    Locally this is ``root`` or ``$SGWSSS_VOC_ROOT`` (a clear error says how to set
    it when missing). In Colab, VOC 2012 and the SBD masks are downloaded once into
    the cache (a few GB, with a progress bar).
    """
    from sgwsss.data import resolve_root

    return resolve_root(root, download=in_colab())


def work_dir(name: str = "") -> Path:
    """Folder for the book's trained models and outputs (created if needed)."""
    base = os.environ.get("SGWSSS_WORK_DIR")
    if base is None:
        from sgwsss.data import cache_dir

        base = os.path.join(cache_dir(), "work")
    path = Path(base) / name if name else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_name(cfg) -> str:
    """``"<name>-budget<b>-<hash>"``: a folder name for one training configuration.

    ``cfg`` is a :class:`~sgwsss.train.TrainConfig`; the 8-hex-digit hash is of its full
    settings (:meth:`~sgwsss.train.TrainConfig.to_dict`), so two configurations that differ
    in any field, the ``SGWSSS_BUDGET`` scale included, get different folders. Resuming
    (``train(..., resume=True)``) in a folder named this way therefore never meets a
    checkpoint of another configuration, which it would refuse.
    """
    import hashlib
    import json

    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.name}-budget{cfg.budget:g}-{key}"


def train_run(config: str = "cpu", **overrides) -> Path:
    """Train the book's model with Algorithm 1, or reuse it when already trained.

    The run lives in ``work_dir(run_name(cfg))`` (:func:`run_name`), the hash naming the full
    configuration, so a changed configuration trains afresh instead of reusing a stale
    run; a killed run resumes from its last checkpoint. ``SGWSSS_BUDGET`` (see :mod:`sgwsss.train.config`) is the
    one switch that shortens training under test (``make test`` sets it).
    Returns the run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
    ``round*/pseudo/``, ``final.pt``).
    """
    from sgwsss.train import get_config, train

    cfg = get_config(config, **overrides)
    run = work_dir(run_name(cfg))
    if not (run / "final.pt").exists():
        train(cfg, voc_root=voc_root(), work_dir=run, resume=True)
    return run


def load_model(run: Path, which: str = "step1"):
    """The network of a run: ``which="step1"`` after step 1 of round 1 (the one the
    pseudo labels of Table 1 come from), ``"final"`` after Algorithm 1. Eval mode."""
    import torch

    from sgwsss.train import load_checkpoint

    path = Path(run) / ("final.pt" if which == "final" else "checkpoints/round1_step1.pt")
    model, meta = load_checkpoint(path, device="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model, meta


class Explorer:
    """One image's expensive intermediate results, computed once, for fast sliders.

    A thin view of :class:`~sgwsss.pipeline.PseudoLabelPipeline` (the one recipe that training,
    the benchmarks and the stage scores use): the network runs once (``net``: localization maps,
    aggregation features, the affinity cached), and the methods recompute only the cheap step a
    control changes. ``A`` is the pipeline's stage ``A`` (normalised at the network's
    resolution, then upsampled).

    ``config`` (a :class:`~sgwsss.train.TrainConfig`, e.g. ``meta["config"]`` of
    :func:`load_model`) supplies what the run's pseudo labels used
    (:meth:`~sgwsss.pipeline.PseudoLabelPipeline.from_config`): the affinity ``grid``, the
    walk's ``beta``, the guided filter's ``radius`` and ``eps`` and the test-time augmentation of
    the maps; ``None``: the paper's defaults. Every method argument left as ``None`` takes the
    configuration's value.
    """

    def __init__(self, model, item, config=None, grid: int | None = None):
        from sgwsss.pipeline import PseudoLabelPipeline
        from sgwsss.train.config import TrainConfig, as_config

        self.config = TrainConfig() if config is None else as_config(config)
        pipeline = PseudoLabelPipeline.from_config(self.config)
        self.pipeline = pipeline if grid is None else pipeline.replace(grid=int(grid))
        self.item = item
        self.grid = self.pipeline.grid
        self.net = self.pipeline.infer(model, item["image"][None], item["label"][None])
        self.image, self.labels, self.cam = self.net.image, self.net.labels, self.net.cam
        self.W = self.pipeline.affinity(self.net)
        self.A = self.pipeline.stage_maps(self.net, "A")

    @property
    def present(self):
        return [int(c) for c in (self.labels[0] > 0.5).nonzero().flatten()]

    def transition(self, beta: float | None = None):
        """T = D^-1 W^beta (Eq. 3; beta default: the configuration's)."""
        return self.pipeline.transition(self.net, beta)

    def stage(self, name: str, beta: float | None = None, **kw):
        """Maps of a Table 1 stage (B=1): (1,20,H,W). ``kw`` go to the self-guided refinement
        (default ``radius`` and ``eps``: the configuration's)."""
        return self.pipeline.stage_maps(self.net, name, beta, **kw)

    def pseudo_label(self, name: str, beta: float | None = None, **kw):
        """Pseudo labels (Eq. 11) of a stage: (H,W) int64."""
        return self.pipeline.labels(self.net, name, beta, **kw)[0]
