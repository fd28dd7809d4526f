"""Checkpoints: atomic writes, RNG capture/restore, and :func:`load_checkpoint`.

A training checkpoint is a plain dict saved with :func:`torch.save` and readable with
``torch.load(..., weights_only=True)`` (only tensors, numbers, strings, lists,
tuples and dicts inside)::

    {"format": 1, "kind": "train" | "final", "backbone": str, "config": dict,
     "model": state_dict, "optimizer": state_dict | None, "scaler": state_dict | None,
     "progress": {"round": r, "step": 1 | 2, "iteration": it, "iters": total},
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...], "numpy": {...}, "python": tuple}}

The data order is a pure function of ``(seed, round, step, iteration)`` (see
:class:`sgwsss.train.loop.DataOrder`), so ``progress`` is the data order's state.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from sgwsss.files import atomic_open
from sgwsss.train.config import TrainConfig, as_config

FORMAT = 1
PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temp file in the same folder, fsync, ``os.replace``
    (:func:`sgwsss.files.atomic_open`).

    A crash while writing leaves the previous ``path`` (if any) untouched; a temp file left by a
    killed writer is removed by the next run (:func:`sgwsss.files.remove_stale_temps`).
    """
    with atomic_open(path, "wb", fsync=True) as fh:
        torch.save(obj, fh)
    return Path(path)


def capture_rng_state() -> Dict[str, Any]:
    """The torch (CPU and every CUDA device), NumPy global and Python ``random`` states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python ``random``."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    return model.module if hasattr(model, "module") and isinstance(
        model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model


def make_checkpoint(model: torch.nn.Module, config: TrainConfig, progress: Dict[str, int], *,
                    optimizer: Optional[torch.optim.Optimizer] = None, scaler=None, kind: str = "train",
                    with_rng: bool = True) -> Dict[str, Any]:
    """The checkpoint dict (see the module docstring)."""
    net = unwrap(model)
    return {
        "format": FORMAT,
        "kind": kind,
        "backbone": getattr(net, "backbone_name", config.backbone),
        "config": config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "progress": dict(progress),
        "rng": capture_rng_state() if with_rng else None,
    }


def read_checkpoint(path: PathLike, map_location="cpu") -> Dict[str, Any]:
    """The raw checkpoint dict (loaded with ``weights_only=True``); clear errors for foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, ...
        # torch's own message may advise weights_only=False, which would run the file's code: never pass it on
        first = (str(exc).strip().splitlines() or [""])[0]
        detail = f": {first}" if first and "weights_only" not in first else ""
        raise ValueError(f"{path} is not a readable sgwsss checkpoint ({type(exc).__name__}{detail}); it is "
                         f"truncated, corrupt or not written by sgwsss: use a checkpoint written by "
                         f"`sgwsss train`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not an sgwsss checkpoint (format {FORMAT} with 'model' and 'config')")
    return ckpt


def check_finite_weights(state: Dict[str, torch.Tensor], path: PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` and the first key whose tensor holds NaN or inf."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f"checkpoint {path} holds non-finite weights ({bad} of {value.numel()} values of "
                                 f"{key!r} are NaN or inf): the run that wrote it diverged; use an earlier "
                                 f"checkpoint or retrain")


def load_weights(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: PathLike) -> None:
    """``model.load_state_dict(state)`` with an error that names ``path`` and the keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}"
                        + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    if shapes:
        k = shapes[0]
        problems.append(f"key {k!r} has shape {tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in "
                        f"the network" + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the {type(model).__name__} network of its own "
                         f"configuration: {'; '.join(problems)}; it was edited or written by another version: "
                         f"use a checkpoint written by `sgwsss train`")
    model.load_state_dict(state)


def network_for(config: TrainConfig, pretrained: Optional[bool] = None) -> torch.nn.Module:
    """The network a configuration trains: backbone, output stride, BatchNorm freezing,
    classification-branch start and early-layer freezing as in ``config``
    (``pretrained`` default: ``config.pretrained``)."""
    from sgwsss.model import build_model

    return build_model(config.backbone, pretrained=config.pretrained if pretrained is None else pretrained,
                       output_stride=config.output_stride, freeze_bn=config.freeze_bn,
                       classifier_init=config.classifier_init, freeze_early=config.freeze_early)


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    backbone: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the network stored in ``path`` (from its own config) and load its weights.

    Args:
        path: a checkpoint written by :func:`sgwsss.train.train` (``last.pt``, an end-of-step file or ``final.pt``).
        device: where to put the model.
        backbone: the backbone the caller expects; a checkpoint of another backbone raises ``ValueError``.

    A checkpoint with NaN or inf weights, or with keys or shapes that do not fit its network, raises
    ``ValueError`` naming the file and the key.

    Returns:
        ``(model, meta)``: the model in eval mode on ``device`` and
        ``meta = {"config": TrainConfig, "backbone": str, "progress": dict, "kind": str, "path": str}``.
    """
    ckpt = read_checkpoint(path)
    config = as_config(ckpt["config"])
    stored = ckpt.get("backbone", config.backbone)
    if backbone is not None and backbone != stored:
        raise ValueError(f"checkpoint {path} holds a {stored!r} network, but backbone={backbone!r} was asked")
    check_finite_weights(ckpt["model"], path)
    model = network_for(config.replace(backbone=stored), pretrained=False)
    load_weights(model, ckpt["model"], path)
    model.to(device).eval()
    meta = {"config": config, "backbone": stored, "progress": ckpt.get("progress", {}), "kind": ckpt.get("kind"),
            "path": str(path)}
    return model, meta
