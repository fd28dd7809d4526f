"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) with image-level labels.

Layout expected under the VOC folder (``.../VOCdevkit/VOC2012``)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png   index masks (0 background, 1..20, 255 ignore)
    SegmentationClass/<id>.png      official VOC masks (fallback)
    Annotations/<id>.xml            object boxes (fallback for image-level labels)
    ImageSets/Segmentation/{train,train_aug,val}.txt

Masks are palette ("P") PNGs and are always read with PIL as class indices.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
import warnings
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from sgwsss.files import atomic_open

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "ENV_VAR",
    "VOCDataError",
    "VOCMissingError",
    "VOCFormatError",
    "colorize",
    "names_to_label",
    "label_to_names",
    "read_mask",
    "save_mask",
    "cache_dir",
    "resolve_root",
    "available_splits",
    "read_split",
    "VOCSegmentation",
    "collate_eval",
]

CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASSES)  # 21, background included
IGNORE_INDEX = 255
ENV_VAR = "SGWSSS_VOC_ROOT"
CACHE_ENV_VAR = "SGWSSS_CACHE_DIR"

_FG_INDEX = {name: i for i, name in enumerate(CLASSES[1:])}


# --------------------------------------------------------------------------- errors
class VOCDataError(Exception):
    """Base class of every data-layer error of :mod:`sgwsss.data`."""


class VOCMissingError(VOCDataError, FileNotFoundError):
    """A folder, list file, image or mask of the dataset does not exist."""


class VOCFormatError(VOCDataError, ValueError):
    """A file exists but is unreadable or inconsistent (corrupt JPEG, size mismatch...)."""


#: How the root-hint of the errors names the options: ``"python"`` (``root=...``, ``download=True``)
#: or ``"cli"`` (``--voc-root DIR``); the command line sets ``"cli"``.
HINT_STYLE = "python"


def _how_to_set_root() -> str:
    if HINT_STYLE == "cli":
        return (
            f"Pass --voc-root DIR (the folder that holds VOCdevkit/, or the VOC2012 folder itself) "
            f"or set {ENV_VAR}, e.g. `export {ENV_VAR}=/data/voc`; to download VOC2012 + SBD into "
            f"{cache_dir()} run `python -m sgwsss.data.download` (`make data`)."
        )
    return (
        f"Set {ENV_VAR} to the folder that holds VOCdevkit/ (or to the VOC2012 folder itself), "
        f"e.g. `export {ENV_VAR}=/data/voc`, or pass root=..., "
        f"or download VOC2012 + SBD into {cache_dir()} with `python -m sgwsss.data.download` "
        f"(`make data`; or download=True)."
    )


# --------------------------------------------------------------------------- palette
def _voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: bits of the index spread over R, G, B (MSB first)."""
    idx = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for c in range(3):
            bit = (idx >> c) & 1
            pal[:, c] |= bit << (7 - shift)
        idx = idx >> 3
    return pal.astype(np.uint8)


PALETTE: np.ndarray = _voc_palette()
"""(256, 3) uint8 VOC palette; index 255 (ignore) is the light (224, 224, 192)."""
PALETTE.flags.writeable = False


def colorize(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Colour an index mask with :data:`PALETTE`.

    Args:
        mask: (H, W) integer class indices in 0..255 (numpy array or tensor).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"colorize: mask must be (H, W), got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"colorize: mask must hold integers, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"colorize: mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
    return PALETTE[mask.astype(np.intp)]


def names_to_label(names: Iterable[str]) -> np.ndarray:
    """Multi-hot image-level label from foreground class names.

    Args:
        names: foreground class names (``CLASSES[1:]``); repeats are fine.

    Returns:
        (20,) float32 multi-hot vector, entry ``c - 1`` for class index ``c``.
    """
    if isinstance(names, str):
        names = [names]
    label = np.zeros(NUM_CLASSES - 1, dtype=np.float32)
    for name in names:
        if name not in _FG_INDEX:
            raise ValueError(
                f"names_to_label: unknown class name {name!r}; valid names: {', '.join(CLASSES[1:])}"
            )
        label[_FG_INDEX[name]] = 1.0
    return label


def label_to_names(label: Sequence[float] | np.ndarray | torch.Tensor, threshold: float = 0.5) -> list[str]:
    """Names of the classes whose entry in a (20,) label is above ``threshold``."""
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label, dtype=np.float64)
    if label.shape != (NUM_CLASSES - 1,):
        raise ValueError(f"label_to_names: label must have shape (20,), got {label.shape}")
    return [CLASSES[i + 1] for i in np.flatnonzero(label > threshold)]


# --------------------------------------------------------------------------- masks
def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an index mask PNG ("P" or "L" mode) as an (H, W) uint8 array.

    Palette PNGs give their indices, not colours. RGB masks are rejected.
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise VOCFormatError(
                    f"mask {path} has PIL mode {im.mode!r}; expected an index PNG (mode 'P' or 'L')"
                )
            arr = np.array(im)
    except VOCDataError:
        raise
    except FileNotFoundError as e:
        raise VOCMissingError(f"mask file not found: {path}") from e
    except OSError as e:
        raise VOCFormatError(f"could not read mask {path}: {e}") from e
    return arr.astype(np.uint8, copy=False)


def save_mask(path: str | os.PathLike, mask: np.ndarray | torch.Tensor) -> pathlib.Path:
    """Write an (H, W) mask with values in 0..255 as a VOC palette PNG, atomically; returns ``path``.

    The one palette-PNG writer of the package (ground truth built from SBD, pseudo labels,
    predictions). The PNG is written to a temp file and renamed
    (:func:`sgwsss.files.atomic_open`), so a killed run never leaves a partial PNG that a
    resumed run would skip. Read back with :func:`read_mask`.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"save_mask: mask must be (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"save_mask: mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
    im = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)))  # mode "L"
    im.putpalette(PALETTE.reshape(-1).tolist())  # -> mode "P": indices + the VOC colours
    with atomic_open(path, "wb") as fh:
        im.save(fh, format="PNG")
    return pathlib.Path(path)


def _classes_in_mask(path: pathlib.Path) -> np.ndarray:
    """(20,) float32 multi-hot of the classes 1..20 present in a mask file."""
    counts = np.bincount(read_mask(path).ravel(), minlength=256)
    bad = np.flatnonzero(counts[NUM_CLASSES:IGNORE_INDEX])
    if bad.size:
        raise VOCFormatError(
            f"mask {path} holds values {(bad + NUM_CLASSES).tolist()[:5]} outside 0..20 and 255"
        )
    return (counts[1:NUM_CLASSES] > 0).astype(np.float32)


def _classes_in_xml(path: pathlib.Path) -> np.ndarray:
    """(20,) float32 multi-hot of the object names of a VOC ``Annotations`` file."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise VOCFormatError(f"could not parse annotation {path}: {e}") from e
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]
    try:
        return names_to_label(names)
    except ValueError as e:
        raise VOCFormatError(f"annotation {path}: {e}") from e


# --------------------------------------------------------------------------- images
_PIL_FLAG_LOCK = threading.Lock()


def _load_image(path: pathlib.Path) -> Image.Image:
    """Open and fully decode an RGB image; truncated or corrupt files raise VOCFormatError."""
    with _PIL_FLAG_LOCK:  # never load truncated images silently, whatever the global flag says
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except FileNotFoundError as e:
            raise VOCMissingError(f"image file not found: {path}") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise VOCFormatError(f"corrupt or truncated image {path}: {e}") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


# --------------------------------------------------------------------------- roots
def cache_dir() -> pathlib.Path:
    """``$SGWSSS_CACHE_DIR``, else ``$XDG_CACHE_HOME/sgwsss``, else ``~/.cache/sgwsss``."""
    if os.environ.get(CACHE_ENV_VAR):
        return pathlib.Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "sgwsss"


_MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
_LABEL_SOURCES = (*_MASK_DIRS, "Annotations")


def _locate_voc_dir(path: pathlib.Path) -> pathlib.Path | None:
    """The VOC2012 folder for ``path`` (holding VOCdevkit/ or being VOC2012 itself), if any."""
    nested = path / "VOCdevkit" / "VOC2012"
    if nested.is_dir():
        return nested
    if (path / "VOCdevkit").is_dir():
        return None
    if path.name == "VOC2012" or any((path / d).exists() for d in ("JPEGImages", "ImageSets", *_LABEL_SOURCES)):
        return path
    return None


def _layout_problems(voc: pathlib.Path, images: bool = True) -> list[str]:
    problems = []
    for d in (("JPEGImages",) if images else ()) + (os.path.join("ImageSets", "Segmentation"),):
        if not (voc / d).is_dir():
            problems.append(f"missing folder {voc / d}")
    if not any((voc / d).is_dir() for d in _LABEL_SOURCES):
        problems.append(
            f"none of the label folders {', '.join(_LABEL_SOURCES)} exists in {voc}"
        )
    return problems


def resolve_root(root: str | os.PathLike | None = None, download: bool = False,
                 images: bool = True) -> pathlib.Path:
    """Find and check the VOC 2012 folder.

    Looks at ``root`` if given, else ``$SGWSSS_VOC_ROOT``, else :func:`cache_dir`. Either the
    folder holding ``VOCdevkit/`` or the ``VOC2012`` folder itself is accepted.

    Args:
        root: dataset location, or None.
        download: when the data is absent, download VOC2012 trainval and SBD there
            (building ``SegmentationClassAug`` and ``train_aug.txt``), see
            :func:`sgwsss.data.download.prepare_voc`.
        images: require ``JPEGImages/`` (``False``: masks and lists only, e.g. for evaluation).

    Returns:
        Path of the ``VOC2012`` folder (the one holding ``JPEGImages``).

    Raises:
        VOCMissingError: the root is missing or incomplete; the message names what is missing.
    """
    if root is not None:
        path = pathlib.Path(root).expanduser()
        source = "--voc-root" if HINT_STYLE == "cli" else "the root argument"
    elif os.environ.get(ENV_VAR):
        path, source = pathlib.Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        path, source = cache_dir(), "the default cache folder"

    voc = _locate_voc_dir(path) if path.is_dir() else None
    if download and (
        voc is None
        or _layout_problems(voc)
        or not (voc / "SegmentationClassAug").is_dir()
        or not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()
    ):
        # prepare_voc works on the folder that holds VOCdevkit/
        base = path if voc is None or voc == path / "VOCdevkit" / "VOC2012" else None
        if base is None and voc is not None and voc.parent.name == "VOCdevkit":
            base = voc.parent.parent
        if base is not None:
            from sgwsss.data.download import prepare_voc

            voc = prepare_voc(base)

    if not path.exists():
        raise VOCMissingError(f"VOC root {path} (from {source}) does not exist. {_how_to_set_root()}")
    if voc is None:
        if (path / "VOCdevkit").is_dir():
            what = f"missing folder {path / 'VOCdevkit' / 'VOC2012'}"
        else:
            what = f"no VOCdevkit/VOC2012 folder (nor JPEGImages/, ImageSets/) in {path}"
        raise VOCMissingError(f"VOC root {path} (from {source}) is not a VOC 2012 copy: {what}. {_how_to_set_root()}")
    problems = _layout_problems(voc, images=images)
    if problems:
        raise VOCMissingError(
            f"VOC root {path} (from {source}) is incomplete: {'; '.join(problems)}. {_how_to_set_root()}"
        )
    return voc


def available_splits(voc_dir: pathlib.Path) -> list[str]:
    """Names of the list files in ``ImageSets/Segmentation``."""
    return sorted(p.stem for p in (pathlib.Path(voc_dir) / "ImageSets" / "Segmentation").glob("*.txt"))


def read_split(voc_dir: str | os.PathLike, split: str) -> list[str]:
    """Ids listed in ``ImageSets/Segmentation/<split>.txt`` (first column, order kept)."""
    voc_dir = pathlib.Path(voc_dir)
    path = voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        hint = ""
        if split == "train_aug":
            hint = (" (train_aug.txt is built from SBD by `python -m sgwsss.data.download --root ROOT`, "
                    "see sgwsss.data.download.build_train_aug_list)")
        raise VOCMissingError(
            f"split {split!r}: list file {path} not found{hint}; available splits: "
            f"{available_splits(voc_dir) or 'none'}. {_how_to_set_root()}"
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VOCFormatError(f"split {split!r}: list file {path} is empty")
    return ids


def _listdir(path: pathlib.Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return set()


# --------------------------------------------------------------------------- label table
_LABEL_CACHE: dict[str, tuple[list[str], np.ndarray]] = {}
_LABEL_CACHE_VERSION = 2


def _stat_key(path: pathlib.Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _labels_key(voc: pathlib.Path, split: str, sources: Sequence[pathlib.Path]) -> str:
    """Cache key of a split's label table: the root, the list file and every label source's
    path, size and mtime (an edited, replaced or added mask changes it; a folder's mtime
    would not change when a file in it is overwritten)."""
    info = {
        "version": _LABEL_CACHE_VERSION,
        "root": str(voc.resolve()),
        "split": split,
        "list": _stat_key(voc / "ImageSets" / "Segmentation" / f"{split}.txt"),
        "sources": [(str(p.relative_to(voc)), _stat_key(p)) for p in sources],
    }
    return hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:20]


def _compute_labels(sources: list[pathlib.Path]) -> np.ndarray:
    def one(p: pathlib.Path) -> np.ndarray:
        return _classes_in_xml(p) if p.suffix == ".xml" else _classes_in_mask(p)

    if not sources:
        return np.zeros((0, NUM_CLASSES - 1), dtype=np.float32)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(one, sources, chunksize=32))
    return np.stack(rows).astype(np.float32)


def _select_ids(split_ids: list[str], ids: Sequence[str] | None, split: str) -> list[str]:
    """``ids`` (order kept) after checking that each is in the split; all of ``split_ids`` when None."""
    if ids is None:
        return list(split_ids)
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of id strings, not a single string")
    ids = [str(i) for i in ids]
    known = set(split_ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(
            f"ids: {len(unknown)} id(s) not in split {split!r}: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    return ids


# --------------------------------------------------------------------------- dataset
class VOCSegmentation(Dataset):
    """PASCAL VOC 2012 segmentation split with image-level labels.

    Each item is a dict:

    * ``image``: float32 (3, H, W) RGB in [0, 1], not normalised (the model normalises).
    * ``label``: float32 (20,) multi-hot image-level label: the classes 1..20 present in the
      ground-truth mask (``SegmentationClassAug``, else ``SegmentationClass``, else the object
      names of ``Annotations/<id>.xml``). Entry ``c - 1`` is class ``CLASSES[c]``.
    * ``id``: the image id.
    * ``mask``: int64 (H, W), values 0..20 and 255 (ignore) -- only with ``with_mask=True``
      (ground truth, for evaluation) or ``mask_dir`` (``<mask_dir>/<id>.png``, e.g. pseudo
      labels; ``label`` still comes from the ground truth).

    Images whose mask holds no foreground class are kept: their label is all zeros (their
    classification target is all zeros and their pseudo label is all background).

    Args:
        root: see :func:`resolve_root`.
        split: list file name in ``ImageSets/Segmentation`` (``train``, ``train_aug``, ``val``...).
        transform: callable ``item -> item`` on the dict above (e.g.
            :class:`~sgwsss.data.transforms.TrainTransform`). It receives ``image`` as
            ``tv_tensors.Image`` and ``mask`` as ``tv_tensors.Mask`` so that torchvision v2
            transforms act jointly; plain tensors are returned.
        with_mask: also return the ground-truth mask.
        mask_dir: folder of ``<id>.png`` masks to return instead of the ground truth.
        ids: restrict to these ids of the split (order kept); unknown ids raise ValueError.
        download: see :func:`resolve_root`.
        images: require ``JPEGImages/<id>.jpg`` of every id (``False``: ground truth only, e.g. to
            evaluate a folder of predictions; items then cannot be loaded).

    Every item checks that its mask (the one it carries, else the ground truth the label comes
    from) has the image's size: a mismatch raises :class:`VOCFormatError` naming both files.

    Attributes:
        root (pathlib.Path): the VOC2012 folder. split (str). ids (list[str]).
        labels (np.ndarray): (N, 20) float32 label table, computed once (memory and disk cache
        in :func:`cache_dir`, keyed by root, list file and each label file's size and mtime).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train_aug",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        with_mask: bool = False,
        mask_dir: str | os.PathLike | None = None,
        ids: Sequence[str] | None = None,
        download: bool = False,
        images: bool = True,
    ) -> None:
        self.root = resolve_root(root, download=download, images=images)
        self.split = split
        self.transform = transform
        self.with_mask = bool(with_mask)
        self.mask_dir = pathlib.Path(mask_dir) if mask_dir is not None else None

        split_ids = read_split(self.root, split)
        self.ids = _select_ids(split_ids, ids, split)
        if images:
            self._check_images()
        self._gt_masks, sources = self._label_sources()
        self._check_masks()
        self.labels = self._label_table(split_ids, sources, full=ids is None)

    def _check_images(self) -> None:
        """Every id has its ``JPEGImages/<id>.jpg`` (checked once, at construction)."""
        jpgs = _listdir(self.root / "JPEGImages")
        missing = [i for i in self.ids if f"{i}.jpg" not in jpgs]
        if missing:
            raise VOCMissingError(
                f"split {self.split!r}: {len(missing)} listed id(s) have no image, e.g. "
                f"{self.root / 'JPEGImages' / (missing[0] + '.jpg')}"
            )

    def _label_sources(self, ids: Sequence[str] | None = None) -> tuple[list[pathlib.Path | None],
                                                                         list[pathlib.Path]]:
        """``(ground-truth mask or None per id, label source per id)`` of ``ids`` (default: the
        dataset's): the mask, else the annotation XML."""
        listings = {d: _listdir(self.root / d) for d in _LABEL_SOURCES}
        masks: list[pathlib.Path | None] = []
        sources: list[pathlib.Path] = []
        for i in self.ids if ids is None else ids:
            mask = next((self.root / d / f"{i}.png" for d in _MASK_DIRS if f"{i}.png" in listings[d]), None)
            masks.append(mask)
            if mask is not None:
                sources.append(mask)
            elif f"{i}.xml" in listings["Annotations"]:
                sources.append(self.root / "Annotations" / f"{i}.xml")
            else:
                raise VOCMissingError(
                    f"id {i!r} (split {self.split!r}) has no label source: none of "
                    + ", ".join(str(self.root / d / f"{i}{'.xml' if d == 'Annotations' else '.png'}")
                                for d in _LABEL_SOURCES)
                    + " exists"
                )
        return masks, sources

    def _check_masks(self) -> None:
        """The masks the items will carry exist: ground truth (``with_mask``) or ``mask_dir/<id>.png``."""
        if self.with_mask and self.mask_dir is None:
            no_mask = [i for i, m in zip(self.ids, self._gt_masks) if m is None]
            if no_mask:
                raise VOCMissingError(
                    f"with_mask=True but {len(no_mask)} id(s) have no mask in "
                    f"{' or '.join(str(self.root / d) for d in _MASK_DIRS)}, e.g. {no_mask[0]!r}"
                )
        if self.mask_dir is not None:
            if not self.mask_dir.is_dir():
                raise VOCMissingError(f"mask_dir {self.mask_dir} does not exist")
            pngs = _listdir(self.mask_dir)
            no_mask = [i for i in self.ids if f"{i}.png" not in pngs]
            if no_mask:
                raise VOCMissingError(
                    f"mask_dir: {len(no_mask)} id(s) have no mask, e.g. {self.mask_dir / (no_mask[0] + '.png')}"
                )

    # ------------------------------------------------------------------ labels
    def _label_table(self, split_ids: list[str], sources: list[pathlib.Path], full: bool) -> np.ndarray:
        try:
            split_sources = sources if list(self.ids) == list(split_ids) else self._label_sources(split_ids)[1]
        except VOCMissingError:  # another id of the split has no label: no split-wide table to cache
            return _compute_labels(sources)
        key = _labels_key(self.root, self.split, split_sources)
        table = _LABEL_CACHE.get(key)
        disk = cache_dir() / "labels" / f"{self.split}-{key}.npz"
        if table is None and disk.is_file():
            try:
                with np.load(disk, allow_pickle=False) as z:
                    cached_ids, cached = [str(s) for s in z["ids"]], z["labels"].astype(np.float32)
                if cached_ids == split_ids and cached.shape == (len(split_ids), NUM_CLASSES - 1):
                    table = (cached_ids, cached)
                    _LABEL_CACHE[key] = table
            except (OSError, ValueError, KeyError):
                table = None
        if table is not None:
            index = {i: k for k, i in enumerate(table[0])}
            return table[1][[index[i] for i in self.ids]].copy()

        labels = _compute_labels(sources)
        if full:
            _LABEL_CACHE[key] = (list(self.ids), labels)
            try:
                with atomic_open(disk, "wb") as fh:
                    np.savez(fh, ids=np.array(self.ids), labels=labels)
            except OSError as e:
                warnings.warn(f"could not write the label cache {disk}: {e}", stacklevel=3)
        return labels.copy()

    def class_counts(self) -> np.ndarray:
        """(20,) int64: number of images containing each foreground class."""
        return (self.labels > 0.5).sum(axis=0).astype(np.int64)

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> pathlib.Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> pathlib.Path | None:
        """Path of the mask returned for ``index`` (``mask_dir`` first, then ground truth)."""
        if self.mask_dir is not None:
            return self.mask_dir / f"{self.ids[index]}.png"
        return self._gt_masks[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        image_id = self.ids[index]
        img_path = self.image_path(index)
        pil = _load_image(img_path)
        image = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        item: dict[str, Any] = {
            "image": image.to(torch.float32).div_(255.0),
            "label": torch.from_numpy(self.labels[index].copy()),
            "id": image_id,
        }
        if self.with_mask or self.mask_dir is not None:
            mpath = self.mask_path(index)
            mask = read_mask(mpath)
            if mask.shape != (pil.height, pil.width):
                raise VOCFormatError(
                    f"id {image_id!r}: mask {mpath} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                    f"{img_path} has size {pil.width}x{pil.height}"
                )
            if self.mask_dir is not None:
                bad = (mask >= NUM_CLASSES) & (mask != IGNORE_INDEX)
                if bad.any():
                    raise VOCFormatError(
                        f"id {image_id!r}: mask {mpath} holds values {np.unique(mask[bad])[:5].tolist()} "
                        "outside 0..20 and 255"
                    )
            item["mask"] = torch.from_numpy(mask.astype(np.int64))
        elif self._gt_masks[index] is not None:  # the label's mask must belong to this image
            _check_mask_size(image_id, self._gt_masks[index], img_path, pil.size)
        if self.transform is not None:
            item = _apply_transform(self.transform, item)
        return item

    def __repr__(self) -> str:
        extra = ", with_mask=True" if self.with_mask else ""
        if self.mask_dir is not None:
            extra += f", mask_dir={str(self.mask_dir)!r}"
        return f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, n={len(self)}{extra})"


def _check_mask_size(image_id: str, mask_path: pathlib.Path, img_path: pathlib.Path, size: tuple) -> None:
    """Raise VOCFormatError when the mask's (W, H), read from its header, differs from ``size``."""
    try:
        with Image.open(mask_path) as im:
            msize = im.size
    except OSError as e:
        raise VOCFormatError(f"could not read mask {mask_path}: {e}") from e
    if msize != tuple(size):
        raise VOCFormatError(
            f"id {image_id!r}: mask {mask_path} has size {msize[0]}x{msize[1]} (WxH) but image "
            f"{img_path} has size {size[0]}x{size[1]}; fix or remove the mask"
        )


def _apply_transform(transform: Callable, item: dict[str, Any]) -> dict[str, Any]:
    from torchvision import tv_tensors

    item = dict(item)
    item["image"] = tv_tensors.Image(item["image"])
    if "mask" in item:
        item["mask"] = tv_tensors.Mask(item["mask"])
    out = transform(item)
    out = dict(out)
    for k, v in out.items():
        if isinstance(v, tv_tensors.TVTensor):
            out[k] = v.as_subclass(torch.Tensor)
    return out


def collate_eval(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader ``collate_fn`` for variable-size items: returns the list of item dicts as is.

    Use with any batch size: ``for item in batch: ...`` (images keep their own sizes).
    """
    if not isinstance(batch, (list, tuple)) or not all(isinstance(b, dict) for b in batch):
        raise TypeError("collate_eval: expected a list of item dicts")
    return list(batch)
