"""Markdown tables and percentages: the one formatter of measured numbers (benchmarks, chapters, README).

:func:`pct` prints a fraction in [0, 1] as a percentage (``-`` when undefined);
:func:`markdown_table` builds a GitHub-flavoured table; :func:`per_class_table` is the
per-class IoU layout of Table 2 of Ke & Hsu.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from sgwsss.data.voc import CLASSES

__all__ = ["pct", "markdown_table", "per_class_table"]


def pct(value: Optional[float], digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string (``0.123 -> "12.3"``); ``-`` for None/NaN."""
    if value is None:
        return "-"
    value = float(value)
    return "-" if value != value else f"{100.0 * value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub-flavoured markdown table (cells converted with ``str``).

    ``align``: one letter per column, ``l`` (the default) or ``r`` (right-aligned, ``---:``).
    """
    align = "l" * len(header) if align is None else align
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must give 'l' or 'r' for each of the {len(header)} columns, got {align!r}")
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row {list(r)} has {len(r)} cells, the header has {len(header)}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def per_class_table(results: Mapping[str, Mapping], class_names: Optional[Sequence[str]] = None) -> str:
    """Markdown table of per-class IoU and mIoU, one row per method (as Table 2 of Ke & Hsu).

    Args:
        results: ``{method: {"iou": {class_name: iou}, "miou": miou}}`` (e.g. the results of
            :class:`~sgwsss.evaluate.Evaluator` or :meth:`~sgwsss.evaluate.ConfusionMeter.as_dict`);
            ``"iou"`` may also be a sequence in class order. IoUs are fractions in ``[0, 1]``;
            they are printed as percentages with one decimal (:func:`pct`), ``-`` for
            ``None`` / NaN / missing.
        class_names: column order; defaults to the VOC classes.

    Returns:
        The table as a string (header, separator, one row per method, final newline).
    """
    names = list(CLASSES) if class_names is None else list(class_names)
    rows = []
    for method, res in results.items():
        if not isinstance(res, Mapping) or "iou" not in res:
            raise ValueError(f"results[{method!r}] must be a dict with an 'iou' entry")
        iou = res["iou"]
        if isinstance(iou, Mapping):
            vals = [iou.get(n) for n in names]
        else:
            vals = list(iou) if isinstance(iou, (list, tuple)) else list(np.asarray(iou))
            if len(vals) != len(names):
                raise ValueError(f"results[{method!r}]['iou'] has {len(vals)} values for {len(names)} classes")
        rows.append([method, *(pct(v) for v in vals), pct(res.get("miou"))])
    return markdown_table(["Method", *names, "mIoU"], rows, align="l" + "r" * (len(names) + 1)) + "\n"
