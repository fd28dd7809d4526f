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
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from sgwsss.data.voc import CLASSES

__all__ = [
    "VOC_CLASSES",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "ConfusionMeter",
    "per_class_table",
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


def confusion_matrix(pred, gt, num_classes: int = 21, ignore_index: Optional[int] = 255) -> np.ndarray:
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

    def __init__(self, num_classes: int = 21, ignore_index: Optional[int] = 255):
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


def _fmt_pct(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    return "-" if math.isnan(x) else f"{100.0 * x:.1f}"


def per_class_table(results: Mapping[str, Mapping], class_names: Optional[Sequence[str]] = None) -> str:
    """Markdown table of per-class IoU and mIoU, one row per method (as Table 2
    of Ke & Hsu).

    Args:
        results: ``{method: {"iou": {class_name: iou}, "miou": miou}}`` (e.g.
            :meth:`ConfusionMeter.as_dict` or :func:`evaluate_folder` outputs);
            ``"iou"`` may also be a sequence in class order. IoUs are fractions
            in ``[0, 1]``; they are printed as percentages with one decimal,
            ``-`` for ``None`` / NaN / missing.
        class_names: column order; defaults to :data:`VOC_CLASSES`.

    Returns:
        The table as a string (header, separator, one row per method).
    """
    names = list(VOC_CLASSES) if class_names is None else list(class_names)
    lines = ["| Method | " + " | ".join(names) + " | mIoU |",
             "|---|" + "---:|" * (len(names) + 1)]
    for method, res in results.items():
        if not isinstance(res, Mapping) or "iou" not in res:
            raise ValueError(f"results[{method!r}] must be a dict with an 'iou' entry")
        iou = res["iou"]
        if isinstance(iou, Mapping):
            vals = [iou.get(n) for n in names]
        else:
            vals = list(_to_numpy(iou, "iou") if not isinstance(iou, (list, tuple)) else iou)
            if len(vals) != len(names):
                raise ValueError(f"results[{method!r}]['iou'] has {len(vals)} values for {len(names)} classes")
        cells = [_fmt_pct(v) for v in vals] + [_fmt_pct(res.get("miou"))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _voc2012_dir(voc_root: Union[str, Path]) -> Path:
    root = Path(voc_root).expanduser()
    for cand in (root / "VOCdevkit" / "VOC2012", root):
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise FileNotFoundError(f"no VOCdevkit/VOC2012/ImageSets/Segmentation under {root}; "
                            f"voc_root must be the folder holding VOCdevkit/")


def _read_index_png(path: Path, what: str, image_id: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.array(im)
    if a.ndim != 2:
        raise ValueError(f"{what} for id {image_id!r} ({path}) is not a single-channel index mask "
                         f"(mode gives shape {a.shape}); save palette ('P') or 'L' PNGs")
    return a


def evaluate_folder(voc_root: Union[str, Path], split: str, pred_dir: Union[str, Path],
                    class_names: Optional[Sequence[str]] = None, num_classes: int = 21,
                    ignore_index: int = 255, progress: bool = True) -> dict:
    """Evaluate a folder of predicted index masks against VOC ground truth.

    Reads ``<pred_dir>/<id>.png`` (palette or grey PNG of class indices) for
    every id of ``VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt`` and
    the ground truth ``SegmentationClassAug/<id>.png`` (falling back to
    ``SegmentationClass/<id>.png``).

    Args:
        voc_root: folder holding ``VOCdevkit/`` (the ``VOC2012`` folder itself
            is accepted too).
        split: split name, e.g. ``"val"``.
        pred_dir: folder of predictions.
        class_names: names for the result dict (default :data:`VOC_CLASSES`).
        num_classes, ignore_index: see :func:`confusion_matrix`.
        progress: show a tqdm progress bar.

    Returns:
        ``{"miou", "iou": {name: iou}, "num_images", "split", "confusion"}``,
        JSON-safe (``None`` for undefined IoU, confusion as nested lists).

    Raises:
        FileNotFoundError: split file, predictions (count and first ids
            listed) or ground-truth masks missing.
        ValueError: prediction and ground truth sizes differ (id named), bad
            label values.
    """
    from tqdm.auto import tqdm

    voc = _voc2012_dir(voc_root)
    split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    ids = [ln.strip().split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    missing = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} predictions of split {split!r} missing in {pred_dir}, "
            f"e.g. {', '.join(missing[:5])}")
    names = _class_names(class_names, num_classes)

    meter = ConfusionMeter(num_classes, ignore_index)
    for image_id in tqdm(ids, desc=f"eval {split}", disable=not progress):
        for sub in ("SegmentationClassAug", "SegmentationClass"):
            gt_path = voc / sub / f"{image_id}.png"
            if gt_path.is_file():
                break
        else:
            raise FileNotFoundError(f"no ground truth for id {image_id!r} in "
                                    f"{voc / 'SegmentationClassAug'} or {voc / 'SegmentationClass'}")
        gt = _read_index_png(gt_path, "ground truth", image_id)
        pred = _read_index_png(pred_dir / f"{image_id}.png", "prediction", image_id)
        if pred.shape != gt.shape:
            raise ValueError(f"id {image_id!r}: prediction size {pred.shape} != ground truth size {gt.shape}")
        try:
            meter.update(pred, gt)
        except ValueError as exc:
            raise ValueError(f"id {image_id!r}: {exc}") from exc

    out = meter.as_dict(names)
    out.update(num_images=len(ids), split=split, confusion=meter.conf.tolist())
    return out
