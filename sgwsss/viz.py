"""Figures used by the book: sample grids, class-frequency bars, map overlays.

Every function returns the matplotlib ``Figure`` it drew so a chapter can show or
save it; none of them computes anything the package does not already provide.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def to_hwc_uint8(image) -> np.ndarray:
    """(3,H,W) float tensor/array in [0,1] or (H,W,3) uint8 -> (H,W,3) uint8."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr


def show_samples(dataset, indices: Sequence[int], *, ncols: int = 4, title: str | None = None):
    """Grid of images (top) and their ground-truth masks (bottom), titled with the
    image-level labels: what the method may use (labels) and what it must not (masks)."""
    from sgwsss.data import colorize, label_to_names

    plt = _plt()
    indices = list(indices)
    nrows = 2 * ((len(indices) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, idx in enumerate(indices):
        item = dataset[idx]
        r, c = 2 * (k // ncols), k % ncols
        axes[r, c].imshow(to_hwc_uint8(item["image"]))
        axes[r, c].set_title(", ".join(label_to_names(item["label"])) or "(no object)", fontsize=9)
        if "mask" in item:
            axes[r + 1, c].imshow(colorize(np.asarray(item["mask"])))
            axes[r + 1, c].set_title(f"{item['id']} (mask)", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_frequency_bar(counts, class_names: Sequence[str], *, title: str = "Images per class"):
    """Horizontal bar chart of how many images contain each class, sorted."""
    plt = _plt()
    counts = np.asarray(counts)
    order = np.argsort(counts)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(counts) + 1))
    ax.barh([class_names[i] for i in order], counts[order], color="tab:blue")
    for y, v in enumerate(counts[order]):
        ax.text(v, y, f" {int(v)}", va="center", fontsize=8)
    ax.set_xlabel("number of images containing the class")
    ax.set_title(title)
    fig.tight_layout()
    return fig
