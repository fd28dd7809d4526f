"""Algorithm 1 of Ke & Hsu: alternating training (step 1, pseudo labels, step 2), checkpoints, resume, DDP.

* :func:`train` -- the whole algorithm into a work folder (resumable).
* :func:`get_config`, :class:`TrainConfig`, :data:`CONFIGS` -- the ``paper``, ``gpu``, ``cpu`` and ``smoke`` presets;
  ``$SGWSSS_BUDGET`` scales the iteration counts.
* :func:`train_step1`, :func:`train_step2`, :func:`poly_lr` -- the SGD loops; :func:`train_transform` --
  their augmentation.
* :func:`generate_pseudo_labels`, :func:`predict` -- ``<id>.png`` palette masks; :func:`predict_probs`,
  :func:`mask_from_probs` -- one batch's probabilities and masks.
* :func:`load_checkpoint` -- rebuild a trained network; :func:`read_metrics` -- a run's log;
  :func:`phase_seconds` -- its time per phase;
  :func:`training_ids`, :func:`train_images_per_class` -- the images a configuration trains on.
"""
from sgwsss.train.algorithm import train, train_images_per_class, train_transform, training_ids
from sgwsss.train.checkpoint import atomic_save, load_checkpoint, read_checkpoint
from sgwsss.train.config import BUDGET_ENV, CONFIGS, TrainConfig, get_config
from sgwsss.train.loop import DataOrder, Runtime, poly_lr, train_step1, train_step2
from sgwsss.train.metrics import METRICS_FILE, loss_records, phase_seconds, read_metrics
from sgwsss.train.pseudo import generate_pseudo_labels, mask_from_probs, predict, predict_probs

__all__ = [
    "train", "phase_seconds", "read_metrics", "loss_records", "METRICS_FILE", "training_ids",
    "train_images_per_class", "train_transform", "load_checkpoint", "read_checkpoint", "atomic_save", "BUDGET_ENV",
    "CONFIGS", "TrainConfig", "get_config", "DataOrder", "Runtime", "poly_lr", "train_step1", "train_step2",
    "generate_pseudo_labels", "predict", "predict_probs", "mask_from_probs",
]
