"""Helpers shared by the book's chapters (d2l style: chapters import, the package works).

* :func:`voc_root` -- where the data is: the ``root`` argument or ``$SGWSSS_VOC_ROOT``, else the
  cache folder, which ``make data`` (``python -m sgwsss.data.download``) fills. In Colab the data is
  downloaded into the cache by the first cell; with Google Drive mounted (the first cell asks) the
  downloaded archives are kept on Drive, so a new runtime only extracts them again.
* :func:`work_dir` -- where the chapters keep trained runs so later chapters reuse them
  (``$SGWSSS_WORK_DIR``; in Colab with Drive ``MyDrive/sgwsss``, so a new runtime reuses them;
  else ``<cache>/work`` with the cache of :func:`sgwsss.data.cache_dir`).
* :func:`train_run` -- the book's model: a finished run of its configuration, else (the default
  in Colab) the trained ``cpu`` model that travels with the package (:mod:`sgwsss.book.pretrained`),
  else trained here; on a CUDA device the chapters' ``"cpu"`` trains the ``gpu`` preset.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_URL = "https://github.com/sgwsss/sgwsss"
COLAB_DRIVE = Path("/content/drive/MyDrive")  # where Colab mounts Google Drive (drive.mount("/content/drive"))
DRIVE_FOLDER = "sgwsss"  # MyDrive/sgwsss: the runs; MyDrive/sgwsss/archives: the downloaded archives

# What the first run costs in Colab (said once). Measured on two cloud CPU cores (the book's cpu run on
# the VOC sample, sgwsss/book/results/stages.json run_seconds): step 1 663 s, pseudo labels 381.6 s for
# 937 images (2.46 images/s), step 2 644 s. The full train_aug has 10,582 images: 663 + 10582 / 2.46 + 644 s.
_CPU_FULL_MINUTES = round((663 + 10582 / 2.46 + 644) / 60)
_GPU_MINUTES = "5-8"  # the gpu preset on a T4: an estimate, see its docstring in sgwsss/train/config.py

_said: set = set()


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def _say_once(key, text: str) -> None:
    if key not in _said:
        _said.add(key)
        print(text)


def drive_dir(mount: bool = False) -> Path | None:
    """``MyDrive/sgwsss`` in Colab when Google Drive is mounted, else ``None``.

    ``mount``: first ask to mount Drive when it is not (Colab shows its permission dialog; declining
    carries on without Drive, and this runtime does not ask again).
    """
    if not in_colab():
        return None
    if mount and not COLAB_DRIVE.is_dir() and "no-drive" not in _said:
        try:
            from google.colab import drive

            drive.mount(str(COLAB_DRIVE.parent))
        except Exception as e:  # declined, or no Drive for this account
            _say_once("no-drive", f"Google Drive not mounted ({type(e).__name__}: {e}).")
    if not COLAB_DRIVE.is_dir():
        return None
    folder = COLAB_DRIVE / DRIVE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _colab_note(store: Path | None) -> str:
    """One paragraph: where the data and runs live in this runtime, and what the first run costs."""
    import torch

    from sgwsss.book import pretrained
    from sgwsss.train import get_config

    if store is not None:
        data = (f"Google Drive: the downloaded archives stay in {store / 'archives'} and the trained runs in "
                f"{store}, so a new runtime reuses both (it only extracts the data again, a few minutes).")
    else:
        data = ("No Google Drive: this runtime downloads VOC 2012 + SBD (3.4 GB: about 6 minutes at 10 MB/s, "
                "longer from a slow host) and prepares them (about 3 minutes), and loses both when it ends; "
                "mount Drive to keep them.")
    info = pretrained.manifest("cpu")
    if info is not None and info["config"] == get_config("cpu").to_dict():
        model = ("The chapters use the trained 'cpu' model that comes with sgwsss (seconds); "
                 "book.train_run('cpu', pretrained=False) trains your own instead.")
    elif torch.cuda.is_available():
        g = get_config("gpu")
        model = (f"The first chapter run trains the 'gpu' configuration ({g.max_images} images, {g.step1_iters} + "
                 f"{g.step2_iters} iterations): about {_GPU_MINUTES} minutes on a T4 (an estimate).")
    else:
        model = (f"No GPU: the first chapter run trains the 'cpu' configuration on this runtime's CPU, about "
                 f"{_CPU_FULL_MINUTES} minutes for the 10,582 images of train_aug; a GPU runtime is much faster.")
    return f"{data} {model}"


def voc_root(root: str | os.PathLike | None = None, drive: bool = True) -> Path:
    """The VOC root for the chapters.

    Locally this is ``root`` or ``$SGWSSS_VOC_ROOT``, else the cache folder that ``make data``
    prepares (a clear error says what to do when it is missing). In Colab (no root given) VOC 2012
    and the SBD masks are downloaded into the cache once per runtime, with a progress bar; with
    Google Drive mounted (``drive``: ask to mount it) the archives are kept on Drive and a new
    runtime extracts them from there. The first call in Colab says what the first run costs.
    """
    from sgwsss.data import ENV_VAR, cache_dir, resolve_root

    if in_colab() and root is None and not os.environ.get(ENV_VAR):
        from sgwsss.data.download import prepare_voc

        store = drive_dir(mount=drive)
        _say_once("colab", _colab_note(store))
        prepare_voc(cache_dir(), archive_dir=None if store is None else store / "archives",
                    keep_archives=store is not None)
    return resolve_root(root)


def work_dir(name: str = "") -> Path:
    """Folder for the book's trained models and outputs (created if needed): ``$SGWSSS_WORK_DIR``,
    else ``MyDrive/sgwsss`` in Colab with Google Drive mounted, else ``<cache>/work``."""
    base = os.environ.get("SGWSSS_WORK_DIR")
    if base is None:
        store = drive_dir()
        if store is None:
            from sgwsss.data import cache_dir

            store = Path(cache_dir()) / "work"
        base = store
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


def book_config(config: str = "cpu") -> str:
    """The preset the chapters' ``config`` trains here: ``"gpu"`` for ``"cpu"`` on a CUDA device
    (the same network, sized for one GPU, see :mod:`sgwsss.train.config`), else ``config``."""
    import torch

    return "gpu" if config == "cpu" and torch.cuda.is_available() else config


def _travelling_run(config: str, overrides: dict, strict: bool) -> Path | None:
    """The run folder of the trained ``config`` model that travels with the package, when it was
    trained with exactly ``get_config(config, **overrides)``; else ``None`` (``strict``: raise)."""
    from sgwsss.book import pretrained
    from sgwsss.train import get_config

    info = pretrained.manifest(config)
    if info is None:
        problem = f"no trained '{config}' model travels with this install of sgwsss"
    elif info["config"] != get_config(config, **overrides).to_dict():
        problem = (f"the travelling '{config}' model was trained with another configuration (another "
                   f"SGWSSS_BUDGET, overrides or sgwsss version)")
    else:
        run = pretrained.materialize(info, work_dir())
        _say_once(("pretrained", config), f"Using the trained '{config}' model that comes with sgwsss (sha256 "
                                          f"{info['sha256'][:12]}..., checked); book.train_run('{config}', "
                                          f"pretrained=False) trains your own, which later calls then use.")
        return run
    if strict:
        raise pretrained.PretrainedError(f"{problem}; book.train_run('{config}', pretrained=False) trains one")
    _say_once(("no-pretrained", config), f"{problem}: training it here.")
    return None


def train_run(config: str = "cpu", pretrained: bool | None = None, **overrides) -> Path:
    """The book's model (Algorithm 1): reused when already trained, else taken from the package or trained.

    In order:

    1. a finished run of :func:`book_config` ``(config)`` (with ``overrides``) in
       ``work_dir(run_name(cfg))`` (:func:`run_name`: the hash names the full configuration,
       so a changed configuration never reuses a stale run);
    2. when ``pretrained`` (default: in Colab), the trained model of ``config`` that travels
       with the package (:mod:`sgwsss.book.pretrained`, SHA-256 checked), if it was trained
       with exactly this configuration; ``pretrained=True`` raises when there is none;
    3. training it (:func:`sgwsss.train.train`, resuming a killed run from its last checkpoint).
       On a CUDA device ``"cpu"`` trains the ``gpu`` preset. ``SGWSSS_BUDGET`` (see
       :mod:`sgwsss.train.config`) is the one switch that shortens training under test.

    So ``train_run("cpu", pretrained=False)`` trains your own model, and the chapters' later
    ``train_run("cpu")`` calls find it (step 1). Returns the run folder (``config.json``,
    ``metrics.jsonl``, ``checkpoints/``, ``final.pt``; a trained run also ``round*/pseudo/``).
    """
    from sgwsss.train import get_config, train

    cfg = get_config(book_config(config), **overrides)
    run = work_dir(run_name(cfg))
    if (run / "final.pt").exists():
        return run
    use_pretrained = in_colab() if pretrained is None else pretrained
    if use_pretrained:
        travelling = _travelling_run(config, overrides, strict=pretrained is not None)
        if travelling is not None:
            return travelling
    train(cfg, voc_root=voc_root(), work_dir=run, resume=True)
    return run


def load_model(run: Path, which: str = "step1"):
    """The network of a run: ``which="step1"`` after step 1 of round 1 (the one the
    pseudo labels of Table 1 come from), ``"final"`` after Algorithm 1. Eval mode.
    A file of the travelling model is checked against its SHA-256 first."""
    import torch

    from sgwsss.book.pretrained import check_file
    from sgwsss.train import load_checkpoint

    relative = "final.pt" if which == "final" else "checkpoints/round1_step1.pt"
    check_file(run, relative)
    model, meta = load_checkpoint(Path(run) / relative, device="cuda" if torch.cuda.is_available() else "cpu")
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
        self.feat = self.net.feat  # the aggregation features F (Eq. 2), kept for sgwsss.book.live
        self.A = self.pipeline.stage_maps(self.net, "A")

    @property
    def present(self):
        return [int(c) for c in (self.labels[0] > 0.5).nonzero().flatten()]

    def transition(self, beta: float | None = None):
        """T = D^-1 W^beta (unnumbered in the paper; beta default: the configuration's)."""
        return self.pipeline.transition(self.net, beta)

    def stage(self, name: str, beta: float | None = None, **kw):
        """Maps of a Table 1 stage (B=1): (1,20,H,W). ``kw`` go to the self-guided refinement
        (default ``radius`` and ``eps``: the configuration's)."""
        return self.pipeline.stage_maps(self.net, name, beta, **kw)

    def pseudo_label(self, name: str, beta: float | None = None, **kw):
        """Pseudo labels (Eq. 11) of a stage: (H,W) int64."""
        return self.pipeline.labels(self.net, name, beta, **kw)[0]


def glue(name: str, value):
    """Hand a computed number or phrase to the chapter's prose (myst-nb ``glue``, not displayed); returns None.

    Numbers are read in Markdown with ``{glue:text}`name:.1f```; strings are glued as Markdown, read
    with ``{glue:md}`name```. Numpy and torch scalars are glued as Python numbers. Without myst-nb
    (Colab) nothing is glued and the prose shows the role; the chapters print the numbers they glue.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar -> its Python number
        value = value.item()
    if isinstance(value, str):
        from IPython.display import Markdown

        _glue(name, Markdown(value), display=False)
    else:
        _glue(name, value, display=False)
    return None


def varied_images(dataset, n: int = 6, start: int = 0) -> list:
    """Indices of ``n`` images of ``dataset`` that together cover many classes, for a chapter's image picker.

    Greedy, in dataset order from ``start``: an image is taken when its image-level label holds a
    class not yet covered; once no image adds a class, the rest are taken in order. Deterministic.
    """
    import numpy as np

    labels = np.asarray(dataset.labels) > 0.5
    order = list(range(start, len(labels))) + list(range(start))
    chosen, seen = [], set()
    for i in order:
        classes = set(np.flatnonzero(labels[i]).tolist())
        if classes - seen:
            chosen.append(i)
            seen |= classes
        if len(chosen) == n:
            return chosen
    return chosen + [i for i in order if i not in chosen][: n - len(chosen)]


def docstring_section(obj, start: str, stop: str | None = None) -> str:
    """The part of ``obj``'s docstring from the line holding ``start`` up to ``stop`` (excluded), as Markdown.

    The package's docstrings are reStructuredText; a chapter that quotes one shows it as prose, not as a
    clipped code block: the common indent is removed, ````x```` becomes ```x``` and a role such as
    ``:meth:`x``` becomes ```x```. Raises ValueError naming the marker that is not in the docstring.
    """
    import inspect
    import re

    doc = inspect.getdoc(obj) or ""
    if start not in doc:
        raise ValueError(f"{start!r} is not in the docstring of {getattr(obj, '__name__', obj)!r}")
    begin = doc.rfind("\n", 0, doc.index(start)) + 1
    end = len(doc) if stop is None else doc.find(stop, begin + len(start))
    if end < 0:
        raise ValueError(f"{stop!r} does not follow {start!r} in the docstring of {getattr(obj, '__name__', obj)!r}")
    text = inspect.cleandoc(doc[begin:end])
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").rstrip()
