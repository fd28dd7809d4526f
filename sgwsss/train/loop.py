"""The SGD loops of Algorithm 1 (Ke & Hsu): step 1 (``L_cls + lam * L_aff``) and step 2 (``L_seg``).

Both steps share :func:`sgd_loop`: SGD with momentum, the 'poly' learning rate
(:func:`poly_lr`), mixed precision on CUDA, a tqdm bar, a ``metrics.jsonl`` line
per log interval and atomic checkpoints every ``checkpoint_interval`` iterations
and at the end of the step.

Reproducibility. The data order is a pure function of ``(seed, round, step,
epoch)`` (:class:`DataOrder`) and every item is augmented under its own seed
drawn from the same generator, so iteration ``k`` sees the same images and
crops whether the run was interrupted or not, whatever the number of data-loader
workers. A resumed step restores the model, the optimizer (momentum buffers),
the grad scaler and the global RNG states and skips to iteration ``k``.

Distributed data parallel. Under ``torchrun`` (``WORLD_SIZE > 1``) every process
holds ``batch_size`` items of each global batch of ``batch_size * world_size``
items (rank ``r`` takes the ``r``-th slice), and DDP averages the gradients:
the global batch is the one a single process with ``batch_size * world_size``
would see, so (with BatchNorm statistics frozen, ``freeze_bn``) the loss curve is
the single-process one. Only rank 0 writes checkpoints, metrics and bars.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from sgwsss.files import temp_path
from sgwsss.train.checkpoint import atomic_save, make_checkpoint, unwrap
from sgwsss.train.config import TrainConfig
from sgwsss.train.metrics import METRICS_FILE, MetricsWriter

__all__ = ["poly_lr", "poly_schedule", "DataOrder", "Runtime", "init_distributed", "set_train_mode", "sgd_loop",
           "train_step1", "train_step2"]


# --------------------------------------------------------------------------- learning rate
def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The 'poly' learning-rate policy of DeepLab used by Ke & Hsu for both steps.

    ``lr = base_lr * (1 - iteration / max_iterations) ** power`` for
    ``0 <= iteration <= max_iterations`` (``iteration`` counts the updates already done).
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if not 0 <= iteration <= max_iterations:
        raise ValueError(f"iteration must be in [0, {max_iterations}], got {iteration}")
    return base_lr * (1.0 - iteration / max_iterations) ** power


def poly_schedule(optimizer: torch.optim.Optimizer, iters: int, power: float = 0.9,
                  start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The 'poly' policy as a torch scheduler: group ``g`` runs at ``g["initial_lr"] * poly_lr(1, k, iters)``
    at iteration ``k``, from ``k = start`` (a resumed step); call ``.step()`` after each update.

    Why ``LambdaLR`` and not ``torch.optim.lr_scheduler.PolynomialLR``: PolynomialLR updates
    the rate multiplicatively, ``lr_k = lr_{k-1} * (f(k) / f(k - 1))``, so the rounding errors
    pile up (measured: 470 of the 600 rates of a 300-iteration step differ from
    :func:`poly_lr`, by up to 2e-15 relative; up to 3e-13 over 50k iterations), and a resumed
    step would need its state. ``LambdaLR`` evaluates the closed form at every iteration,
    the same rates to the bit (``tests/test_train.py`` checks both statements).
    """
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: poly_lr(1.0, k, iters, power),
                                             last_epoch=start - 1)


# --------------------------------------------------------------------------- data order
class DataOrder:
    """Deterministic batch sampler: global batch ``k`` of a (round, step) is fixed by the seed.

    The item stream of a step is the concatenation of per-epoch permutations,
    epoch ``e`` drawn from ``numpy.random.SeedSequence([seed, round, step, e])``;
    global batch ``k`` is items ``k*G .. k*G+G-1`` of the stream (``G =
    batch_size * world_size``; batches may straddle epochs), and this rank yields
    its slice ``rank*batch_size .. (rank+1)*batch_size-1``. Each element is an
    ``(index, aug_seed)`` pair; :class:`SeededItems` applies the augmentation
    under ``aug_seed``.

    Args:
        num_items: dataset length.
        batch_size: items per process and iteration.
        seed, round, step: identify the stream.
        iters: total iterations of the step; iteration ``start .. iters-1`` are yielded.
        rank, world_size: this process's slice.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, round: int, step: int, iters: int,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1 (empty dataset?), got {num_items}")
        if not 0 <= start <= iters:
            raise ValueError(f"start must be in [0, iters={iters}], got {start}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.round, self.step = seed, round, step
        self.iters, self.start = iters, start
        self.rank, self.world_size = rank, world_size
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch_plan(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(permutation, aug_seeds)`` of ``epoch``: two ``(num_items,)`` int64 arrays."""
        if epoch not in self._cache:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.round, self.step, epoch]))
            perm = rng.permutation(self.num_items).astype(np.int64)
            seeds = rng.integers(0, 2 ** 31 - 1, size=self.num_items, dtype=np.int64)
            self._cache = {epoch: (perm, seeds)}  # keep one epoch: the stream only moves forward
        return self._cache[epoch]

    def global_batch(self, iteration: int) -> List[Tuple[int, int]]:
        """The ``(index, aug_seed)`` pairs of global batch ``iteration``."""
        out = []
        for pos in range(iteration * self.global_batch_size, (iteration + 1) * self.global_batch_size):
            perm, seeds = self.epoch_plan(pos // self.num_items)
            j = pos % self.num_items
            out.append((int(perm[j]), int(seeds[j])))
        return out

    def local_batch(self, iteration: int) -> List[Tuple[int, int]]:
        """This rank's slice of :meth:`global_batch`."""
        g = self.global_batch(iteration)
        return g[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for it in range(self.start, self.iters):
            yield self.local_batch(it)

    def __len__(self) -> int:
        return self.iters - self.start


@contextlib.contextmanager
def local_seed(seed: int):
    """Run a block with Python ``random``, NumPy and torch-CPU RNGs seeded by ``seed``; restore them after."""
    py, npst, tst = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(tst)


class SeededItems(Dataset):
    """Wrap a dataset so that ``self[(index, seed)]`` loads ``dataset[index]`` under :func:`local_seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with local_seed(seed):
            return self.dataset[index]


# --------------------------------------------------------------------------- runtime / DDP
def init_distributed(device: Optional[torch.device] = None) -> Tuple[int, int, torch.device, bool]:
    """Initialise ``torch.distributed`` when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Returns ``(rank, world_size, device, initialised_here)``: NCCL and ``cuda:LOCAL_RANK``
    when CUDA is available, else gloo on CPU. Without ``WORLD_SIZE > 1`` it returns
    ``(0, 1, device or cuda/cpu, False)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if device is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
                else torch.device("cpu")
        return rank, world, device, False
    if world <= 1:
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, torch.device(device), False
    if device is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
            else torch.device("cpu")
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device, True


@dataclass
class Runtime:
    """Where and how a loop runs: device, DDP rank/world size, output folder, progress bar, hook.

    ``work_dir=None`` writes nothing (no checkpoints, no metrics). ``callback`` is
    called on every rank after each iteration (and its checkpoint, if any) with a
    dict ``{"round", "step", "iteration", "iters", "loss"}``; raising from it stops
    the run (tests use it to simulate a kill).
    """

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    work_dir: Optional[Path] = None
    progress: bool = True
    callback: Optional[Callable[[Dict[str, Any]], None]] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def checkpoint_dir(self) -> Optional[Path]:
        return None if self.work_dir is None else Path(self.work_dir) / "checkpoints"

    @property
    def metrics_path(self) -> Optional[Path]:
        return None if self.work_dir is None else Path(self.work_dir) / METRICS_FILE

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def set_train_mode(model: torch.nn.Module, freeze_bn: bool = True) -> None:
    """``model.train()``, but with BatchNorm layers in eval mode (running statistics frozen) if ``freeze_bn``.

    An :class:`~sgwsss.model.SGNet` is switched with its own ``freeze_bn`` (which also
    fixes the BN scale and shift); call this before building the optimizer.
    """
    if hasattr(model, "freeze_bn") and getattr(model, "bn_frozen", None) != freeze_bn:
        model.freeze_bn(freeze_bn)
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _to_float(x) -> float:
    return float(x.detach().float().item()) if torch.is_tensor(x) else float(x)


def _float32(out):
    """Cast a network output (tensor or namedtuple of tensors) to float32."""
    if torch.is_tensor(out):
        return out.float()
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(t.float() if torch.is_tensor(t) else t for t in out))
    return out


def _checkpoint_name(round: int, step: int) -> str:
    return f"round{round}_step{step}.pt"


def _save_step_checkpoint(runtime: Runtime, ckpt: Dict[str, Any], end_of_step: bool) -> None:
    last = runtime.checkpoint_dir / "last.pt"
    if not end_of_step:
        atomic_save(ckpt, last)
        return
    prog = ckpt["progress"]
    final = atomic_save(ckpt, runtime.checkpoint_dir / _checkpoint_name(prog["round"], prog["step"]))
    tmp = temp_path(last)
    try:  # a hard link shares the bytes; os.replace makes 'last.pt' switch atomically
        if tmp.exists():
            tmp.unlink()
        os.link(final, tmp)
        os.replace(tmp, last)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        atomic_save(ckpt, last)


# --------------------------------------------------------------------------- the loop
LossFn = Callable[[Any, Dict[str, torch.Tensor]], Tuple[torch.Tensor, Dict[str, Any]]]


def sgd_loop(model: torch.nn.Module, dataset, cfg: TrainConfig, *, step: int, round: int, batch_size: int,
             lr: float, iters: int, loss_fn: LossFn, runtime: Optional[Runtime] = None,
             resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train ``model`` for ``iters`` SGD iterations of step ``step`` of round ``round``.

    Args:
        model: the (unwrapped) network, already on ``runtime.device``; wrapped in DDP here when distributed.
        dataset: training dataset (items with ``image`` and the loss's targets), already augmenting.
        cfg: momentum, weight decay, poly power, AMP, BN freezing, seed, intervals, workers.
        loss_fn: ``(model_output, batch) -> (total, parts)``.
        resume: a checkpoint dict of this (round, step): continue from its iteration with its
            optimizer and grad-scaler state (the caller restores the RNG states).

    Returns:
        ``{"round", "step", "start", "iteration", "iters", "losses"}`` with the per-iteration
        total loss (mean over all processes) of the iterations run in this call.
    """
    runtime = runtime or Runtime(device=next(model.parameters()).device)
    net = unwrap(model)
    start = _start_iteration(resume, round, step, iters)
    set_train_mode(net, cfg.freeze_bn)
    use_amp = bool(cfg.amp) and runtime.device.type == "cuda"
    optimizer, scaler = _optimizer(net, cfg, lr, use_amp, resume)
    schedule = poly_schedule(optimizer, iters, cfg.poly_power, start)
    order = DataOrder(len(dataset), batch_size, seed=cfg.seed, round=round, step=step, iters=iters, start=start,
                      rank=runtime.rank, world_size=runtime.world_size)
    loader = DataLoader(SeededItems(dataset), batch_sampler=order, num_workers=cfg.num_workers,
                        pin_memory=runtime.device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # never touch the global RNG
    train_model = _data_parallel(net, runtime)
    log = _StepLog(runtime, cfg, round=round, step=step, iters=iters, start=start,
                   images_per_iteration=order.global_batch_size)
    position = {"round": round, "step": step, "iters": iters}
    losses: List[float] = []
    iteration = start
    try:
        for batch in loader:
            total, parts = _update(train_model, batch, loss_fn, optimizer, scaler, runtime.device, use_amp,
                                   where=f"round {round} step {step} iteration {iteration + 1}", lr=lr)
            iteration += 1
            vals = _mean_over_ranks(total, parts, runtime)
            losses.append(vals["loss"])
            log.update(iteration, vals, step_lr(optimizer))
            if log.writes_checkpoints and (iteration % cfg.checkpoint_interval == 0 or iteration == iters):
                ckpt = make_checkpoint(net, cfg, {**position, "iteration": iteration}, optimizer=optimizer,
                                       scaler=scaler)
                _save_step_checkpoint(runtime, ckpt, end_of_step=iteration == iters)
            schedule.step()
            if runtime.callback is not None:
                runtime.callback({**position, "iteration": iteration, "loss": vals["loss"]})
    finally:
        log.close()
    if iteration != iters:
        raise RuntimeError(f"data loader stopped at iteration {iteration} of {iters}")
    return {"round": round, "step": step, "start": start, "iteration": iteration, "iters": iters, "losses": losses}


def _start_iteration(resume: Optional[Dict[str, Any]], round: int, step: int, iters: int) -> int:
    """The iteration a step starts at: 0, or the checkpoint's (which must be of this round, step and length)."""
    if resume is None:
        return 0
    prog = resume["progress"]
    if (prog["round"], prog["step"]) != (round, step):
        raise ValueError(f"resume checkpoint is for round {prog['round']} step {prog['step']}, "
                         f"not round {round} step {step}")
    if prog["iters"] != iters:
        raise ValueError(f"resume checkpoint was written for {prog['iters']} iterations, not {iters}")
    return int(prog["iteration"])


def _optimizer(net: torch.nn.Module, cfg: TrainConfig, lr: float, use_amp: bool,
               resume: Optional[Dict[str, Any]]) -> Tuple[torch.optim.Optimizer, "torch.amp.GradScaler"]:
    """SGD with momentum over the network's parameter groups (new layers at 10x) and the grad scaler,
    both with the checkpoint's state when resuming."""
    groups = net.param_groups(lr, cfg.weight_decay) if hasattr(net, "param_groups") else \
        [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr, "weight_decay": cfg.weight_decay}]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if resume is not None:
        if resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
        if use_amp and resume.get("scaler") is not None:
            scaler.load_state_dict(resume["scaler"])
    return optimizer, scaler


def _data_parallel(net: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """``net`` in DDP when distributed (step 2 leaves the classification branch and aggregation layer
    without gradient: unused parameters are allowed), else ``net`` itself."""
    if not runtime.distributed:
        return net
    device = runtime.device
    ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
    return torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True, **ddp_kwargs)


def _update(train_model, batch, loss_fn: LossFn, optimizer, scaler, device: torch.device, use_amp: bool, *,
            where: str, lr: float) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """One SGD update on ``batch``: forward (autocast under AMP), loss in float32, backward, step."""
    batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        out = train_model(batch["image"])
    if use_amp:  # the losses (softmax, affinity exp / row sums) in float32
        out = _float32(out)
    total, parts = loss_fn(out, batch)
    if not use_amp and not torch.isfinite(total.detach()).all():  # AMP: the grad scaler skips such steps
        raise FloatingPointError(f"non-finite loss {float(total)} at {where}; lower the learning rate ({lr}) "
                                 f"or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return total, parts


def _mean_over_ranks(total: torch.Tensor, parts: Dict[str, Any], runtime: Runtime) -> Dict[str, float]:
    """``{"loss": total, **parts}`` as floats, averaged over the DDP processes."""
    names = ["loss"] + sorted(parts)
    on_gpu = runtime.distributed and runtime.device.type == "cuda"
    values = torch.tensor([_to_float(total)] + [_to_float(parts[k]) for k in sorted(parts)],
                          dtype=torch.float64, device=runtime.device if on_gpu else "cpu")
    if runtime.distributed:
        dist.all_reduce(values)
        values /= runtime.world_size
    return dict(zip(names, values.tolist()))


class _StepLog:
    """Rank 0's view of a step: the tqdm bar and one ``metrics.jsonl`` record per ``log_interval``
    iterations (the window's mean losses, the rate, images per second and the window's seconds)."""

    def __init__(self, runtime: Runtime, cfg: TrainConfig, *, round: int, step: int, iters: int, start: int,
                 images_per_iteration: int):
        self.writer = MetricsWriter(runtime.metrics_path if runtime.is_main else None)
        self.writes_checkpoints = runtime.is_main and runtime.checkpoint_dir is not None
        self.round, self.step, self.iters, self.interval = round, step, iters, cfg.log_interval
        self.images_per_iteration = images_per_iteration
        self.bar = None
        if runtime.is_main and runtime.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=iters, initial=start, desc=f"round {round} step {step}", dynamic_ncols=True)
        self._reset()

    def _reset(self) -> None:
        self.window: Dict[str, List[float]] = {}
        self.t0, self.n = time.perf_counter(), 0

    def update(self, iteration: int, vals: Dict[str, float], lr: float) -> None:
        for k, v in vals.items():
            self.window.setdefault(k, []).append(v)
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{vals['loss']:.4f}")
        if iteration % self.interval == 0 or iteration == self.iters:
            dt = time.perf_counter() - self.t0
            self.writer.step(step=self.step, round=self.round, iteration=iteration, iters=self.iters,
                             values={k: float(np.mean(v)) for k, v in self.window.items()}, lr=lr,
                             images_per_s=self.n * self.images_per_iteration / max(dt, 1e-9), seconds=dt)
            self._reset()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def step_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (the backbone's, 1x)."""
    return float(optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- the two steps
def step1_loss_fn(cfg: TrainConfig) -> LossFn:
    """``L_cls + lam * L_aff`` (Eq. 13 of Ke & Hsu) on a batch with ``image`` and ``label``."""
    from sgwsss.losses import step1_loss

    def fn(out, batch):
        return step1_loss(out, batch["label"], batch["image"], lam=cfg.lam, grid=cfg.grid)

    return fn


def step2_loss_fn(cfg: TrainConfig) -> LossFn:
    """``L_seg`` (Eq. 12 of Ke & Hsu) on a batch with pseudo-label ``mask``.

    With ``cfg.step2_guided_filter`` the loss is taken through the guided-filter layer, the
    crop as guide (:func:`sgwsss.losses.guided_segmentation_loss`, ``cfg.radius`` and
    ``cfg.eps``): the paper's Eqs. 9-10, read as set out in :mod:`sgwsss.refine.guided_layer`.
    """
    from sgwsss.losses import guided_segmentation_loss, segmentation_loss

    def fn(out, batch):
        if cfg.step2_guided_filter:
            loss = guided_segmentation_loss(out.seg, batch["image"], batch["mask"], radius=cfg.radius, eps=cfg.eps)
        else:
            loss = segmentation_loss(out.seg, batch["mask"])
        return loss, {"seg": loss}

    return fn


def train_step1(model: torch.nn.Module, dataset, cfg: TrainConfig, runtime: Optional[Runtime] = None, *,
                round: int = 1, resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Step 1 of Algorithm 1: train the classification branch and aggregation layer with
    ``L_cls + lam * L_aff`` (Eq. 13), batch ``cfg.step1_batch_size``, lr ``cfg.step1_lr``,
    ``cfg.step1_iters`` iterations. See :func:`sgd_loop` for the arguments and the result."""
    return sgd_loop(model, dataset, cfg, step=1, round=round, batch_size=cfg.step1_batch_size, lr=cfg.step1_lr,
                    iters=cfg.step1_iters, loss_fn=step1_loss_fn(cfg), runtime=runtime, resume=resume)


def train_step2(model: torch.nn.Module, dataset, cfg: TrainConfig, runtime: Optional[Runtime] = None, *,
                round: int = 1, resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Step 2 of Algorithm 1: train the segmentation branch with ``L_seg`` (Eq. 12) on the
    pseudo labels (items' ``mask``), batch ``cfg.step2_batch_size``, lr ``cfg.step2_lr``,
    ``cfg.step2_iters`` iterations. See :func:`sgd_loop` for the arguments and the result."""
    return sgd_loop(model, dataset, cfg, step=2, round=round, batch_size=cfg.step2_batch_size, lr=cfg.step2_lr,
                    iters=cfg.step2_iters, loss_fn=step2_loss_fn(cfg), runtime=runtime, resume=resume)
