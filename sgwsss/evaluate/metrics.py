"""Semantic segmentation evaluation: confusion matrix, per-class IoU, mIoU.

The PASCAL VOC 2012 metric: for every class ``c``,
``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` accumulated over the whole split
(not averaged per image), pixels labelled ``ignore_index`` (255, object
borders) in the ground truth excluded; mIoU is the mean over classes. Classes
absent from both ground truth and prediction (union 0) have an undefined IoU
(NaN) and are left out of the mean, which matters on subsets of VOC where
some classes never occur.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from sgwsss.data.voc import CLASSES, IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "VOC_CLASSES",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "ConfusionMeter",
    "Evaluator",
    "evaluate_folder",
]

#: PASCAL VOC 2012 class names, index order (0 = background): the data layer's list.
VOC_CLASSES = CLASSES


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def confusion_matrix(pred, gt, num_classes: int = NUM_CLASSES,
                     ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """Pixel confusion matrix of one prediction (or a batch).

    Args:
        pred: integer label map(s), any shape (e.g. ``(H, W)`` or ``(B, H, W)``),
            numpy or torch; values must be in ``0..num_classes-1`` wherever
            ``gt`` is not ``ignore_index`` (elsewhere they are not looked at,
            so a copy of the ground truth scores mIoU 1).
        gt: ground truth of the same shape; values in ``0..num_classes-1`` or
            ``ignore_index`` (those pixels are skipped).
        num_classes: number of classes ``C``.
        ignore_index: ground-truth value to skip (``None``: none).

    Returns:
        ``(C, C)`` int64 matrix ``M`` with ``M[g, p]`` = number of pixels of
        ground-truth class ``g`` predicted as ``p`` (rows gt, columns pred).
    """
    p = _to_numpy(pred, "pred")
    g = _to_numpy(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} does not match gt shape {tuple(g.shape)}")
    for name, a in (("pred", p), ("gt", g)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise TypeError(f"{name} must be an integer label array, got dtype {a.dtype}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    C = int(num_classes)
    p = p.astype(np.int64, copy=False).ravel()
    g = g.astype(np.int64, copy=False).ravel()
    valid = g != ignore_index if ignore_index is not None else np.ones(g.shape, bool)
    g, p = g[valid], p[valid]
    if p.size and (p.min() < 0 or p.max() >= C):
        bad = np.unique(p[(p < 0) | (p >= C)])
        raise ValueError(f"pred contains values {bad[:5].tolist()} outside 0..{C - 1} "
                         f"at pixels where gt is not ignore_index={ignore_index}")
    if g.size and (g.min() < 0 or g.max() >= C):
        bad = np.unique(g[(g < 0) | (g >= C)])
        raise ValueError(f"gt contains values {bad[:5].tolist()} outside 0..{C - 1} "
                         f"and not ignore_index={ignore_index}")
    return np.bincount(g * C + p, minlength=C * C).reshape(C, C).astype(np.int64)


def _check_conf(conf) -> np.ndarray:
    c = _to_numpy(conf, "conf")
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"conf must be a square (C, C) matrix, got shape {tuple(c.shape)}")
    return c.astype(np.float64)


def iou_per_class(conf) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a ``(C, C)`` confusion matrix
    (rows gt, columns pred). Returns ``(C,)`` float64, NaN where the union is 0."""
    c = _check_conf(conf)
    tp = np.diag(c)
    union = c.sum(axis=0) + c.sum(axis=1) - tp
    iou = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def mean_iou(conf) -> float:
    """Mean IoU over classes with non-zero union (NaN if there is none)."""
    iou = iou_per_class(conf)
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else float("nan")


def _nan_to_none(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


class ConfusionMeter:
    """Accumulates a confusion matrix over many images.

    >>> m = ConfusionMeter(3)
    >>> m.update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    >>> round(m.miou(), 4)
    0.5
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: Optional[int] = IGNORE_INDEX):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.conf[...] = 0

    def update(self, pred, gt) -> None:
        """Add the pixels of ``pred`` / ``gt`` (same shapes, see :func:`confusion_matrix`)."""
        self.conf += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.conf)

    def miou(self) -> float:
        return mean_iou(self.conf)

    def as_dict(self, class_names: Optional[Sequence[str]] = None) -> dict:
        """JSON-safe summary ``{"miou": float|None, "iou": {name: float|None}}``
        (``None`` where undefined). ``class_names`` defaults to :data:`VOC_CLASSES`
        when ``num_classes == 21``, else ``"0", "1", ...``."""
        names = _class_names(class_names, self.num_classes)
        return {"miou": _nan_to_none(self.miou()),
                "iou": {n: _nan_to_none(v) for n, v in zip(names, self.iou())}}


def _class_names(class_names: Optional[Sequence[str]], num_classes: int) -> list:
    if class_names is None:
        return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [str(i) for i in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but there are {num_classes} classes")
    return names


class Evaluator:
    """mIoU of predictions for any ids of a VOC split, against the ground truth of the data layer.

    The one evaluator of the package: the ground-truth masks, their folders and the split's
    ids come from ``dataset``, a :class:`~sgwsss.data.VOCSegmentation` (its ``ids`` may be any
    subset of the split); predictions arrive one at a time (:meth:`add`, e.g. while a network
    runs), as an in-memory mapping (:meth:`score`) or as a folder of ``<id>.png`` index masks
    (:meth:`score_folder`). :meth:`result` is the VOC metric over the ids added so far.

    >>> ev = Evaluator.of_split(root, "val", ids=some_ids)  # doctest: +SKIP
    >>> ev.score_folder("pred/")["miou"]  # doctest: +SKIP
    """

    def __init__(self, dataset, class_names: Optional[Sequence[str]] = None, num_classes: int = NUM_CLASSES,
                 ignore_index: Optional[int] = IGNORE_INDEX):
        if getattr(dataset, "mask_dir", None) is not None:
            raise ValueError(f"dataset reads its masks from mask_dir={dataset.mask_dir}: the evaluator needs "
                             "the ground truth (build it without mask_dir)")
        if not hasattr(dataset, "mask_path") or not hasattr(dataset, "ids"):
            raise TypeError(f"dataset must be a VOCSegmentation, got {type(dataset).__name__}")
        self.dataset = dataset
        self.split = dataset.split
        self.names = _class_names(class_names, num_classes)
        self.meter = ConfusionMeter(num_classes, ignore_index)
        self.scored: list = []
        self._index = {image_id: k for k, image_id in enumerate(dataset.ids)}

    @classmethod
    def of_split(cls, root=None, split: str = "val", ids: Optional[Sequence[str]] = None, **kw) -> "Evaluator":
        """The evaluator of ``ids`` (default: all) of ``split`` of the VOC copy at ``root``
        (:func:`sgwsss.data.resolve_root`); every id must have a ground-truth mask (``JPEGImages/``
        is not needed: only masks are read)."""
        from sgwsss.data import VOCSegmentation

        return cls(VOCSegmentation(root, split=split, ids=ids, with_mask=True, images=False), **kw)

    def ground_truth(self, image_id: str) -> np.ndarray:
        """The (H, W) ground-truth index mask of ``image_id`` (read through the data layer)."""
        from sgwsss.data import read_mask

        if image_id not in self._index:
            raise KeyError(f"id {image_id!r} is not among the {len(self._index)} ids evaluated on split "
                           f"{self.split!r}")
        path = self.dataset.mask_path(self._index[image_id])
        if path is None:
            raise FileNotFoundError(f"no ground truth for id {image_id!r} in split {self.split!r}")
        return read_mask(path)

    def add(self, image_id: str, pred, gt=None) -> None:
        """Score one (H, W) prediction (numpy or torch); ``gt``: its ground truth when the caller
        holds it already (an item's ``mask``), else read by :meth:`ground_truth`."""
        gt = self.ground_truth(image_id) if gt is None else _to_numpy(gt, "gt")
        pred = _to_numpy(pred, "pred")
        if pred.shape != gt.shape:
            raise ValueError(f"id {image_id!r}: prediction size {pred.shape} != ground truth size {gt.shape}")
        try:
            self.meter.update(pred, gt)
        except ValueError as exc:
            raise ValueError(f"id {image_id!r}: {exc}") from exc
        self.scored.append(image_id)

    def result(self) -> dict:
        """``{"miou", "iou": {name: iou}, "num_images", "split", "confusion"}`` over the ids added,
        JSON-safe (``None`` for undefined IoU, the confusion matrix as nested lists)."""
        out = self.meter.as_dict(self.names)
        out.update(num_images=len(self.scored), split=self.split, confusion=self.meter.conf.tolist())
        return out

    def score(self, predictions: Mapping[str, Any]) -> dict:
        """:meth:`add` every ``{id: (H, W) mask}`` of ``predictions``, then :meth:`result`."""
        for image_id, pred in predictions.items():
            self.add(image_id, pred)
        return self.result()

    def score_folder(self, pred_dir: Union[str, Path], progress: bool = True) -> dict:
        """Score ``<pred_dir>/<id>.png`` (palette or grey index PNGs) for every id, then :meth:`result`.

        Raises ``FileNotFoundError`` (the count and the first missing ids named) when predictions
        are missing, ``ValueError`` (the id named) on a size mismatch or bad values.
        """
        from tqdm.auto import tqdm

        from sgwsss.data import read_mask

        pred_dir = Path(pred_dir)
        if not pred_dir.is_dir():
            raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
        ids = list(self._index)
        missing = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(ids)} predictions of split {self.split!r} missing in {pred_dir}, "
                f"e.g. {', '.join(missing[:5])}")
        if not ids:
            raise ValueError(f"split {self.split!r} has no ids to evaluate")
        for image_id in tqdm(ids, desc=f"eval {self.split}", disable=not progress):
            self.add(image_id, read_mask(pred_dir / f"{image_id}.png"))
        return self.result()


def evaluate_folder(voc_root, split: str, pred_dir: Union[str, Path], ids: Optional[Sequence[str]] = None,
                    class_names: Optional[Sequence[str]] = None, num_classes: int = NUM_CLASSES,
                    ignore_index: int = IGNORE_INDEX, progress: bool = True) -> dict:
    """Evaluate a folder of predicted index masks against VOC ground truth (``sgwsss evaluate``).

    Reads ``<pred_dir>/<id>.png`` (palette or grey PNG of class indices) for every id of
    ``split`` (or of its subset ``ids``) and the ground truth through the data layer
    (``SegmentationClassAug/<id>.png``, else ``SegmentationClass/<id>.png``): :class:`Evaluator`.

    Args:
        voc_root: folder holding ``VOCdevkit/`` (the ``VOC2012`` folder itself is accepted too;
            ``None``: ``$SGWSSS_VOC_ROOT``, see :func:`sgwsss.data.resolve_root`).
        split: split name, e.g. ``"val"``.
        pred_dir: folder of predictions.
        ids: score only these ids of the split (order kept); default: all.
        class_names: names for the result dict (default :data:`VOC_CLASSES`).
        num_classes, ignore_index: see :func:`confusion_matrix`.
        progress: show a tqdm progress bar.

    Returns:
        ``{"miou", "iou": {name: iou}, "num_images", "split", "confusion"}``,
        JSON-safe (``None`` for undefined IoU, confusion as nested lists).

    Raises:
        FileNotFoundError: VOC root, split file, predictions (count and first ids
            listed) or ground-truth masks missing.
        ValueError: prediction and ground truth sizes differ (id named), bad
            label values.
    """
    ev = Evaluator.of_split(voc_root, split, ids, class_names=class_names, num_classes=num_classes,
                            ignore_index=ignore_index)
    return ev.score_folder(pred_dir, progress=progress)
