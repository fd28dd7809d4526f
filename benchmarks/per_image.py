"""Per-image confusion matrices beside a benchmark's JSON: ``sgwsss/book/results/<name>_per_image.npz``.

The JSON of a benchmark gives mIoU over a whole split; a paired bootstrap over images
(:func:`sgwsss.evaluate.paired_bootstrap`) needs each image's confusion matrix. The sidecar is
one ``np.savez_compressed`` archive:

- ``ids``: ``(N,)`` unicode, the scored image ids in order;
- one ``(N, 21, 21)`` **int32** array per method (e.g. ``plain/A``, ``crf/G-iter15``), image
  ``k`` of ``ids`` (or of the key's own id list, e.g. ``crf_ids``) in row ``k``; rows ground
  truth, columns prediction, pixels labelled 255 in the ground truth left out (int32 suffices:
  an image has far fewer than 2^31 pixels; cast to int64 before summing many).

:func:`save_per_image` asserts that each array, summed over its images, is exactly the
confusion matrix the JSON reports (so the bootstrap and the JSON score the same pixels).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from sgwsss.book.report import result_path
from sgwsss.files import atomic_open


def per_image_path(name: str) -> Path:
    """``<results dir>/<name>_per_image.npz``, beside ``<name>.json``."""
    json_path = result_path(name)
    return json_path.with_name(f"{json_path.stem}_per_image.npz")


def check_sum(per_image: np.ndarray, confusion, what: str) -> None:
    """Raise AssertionError unless ``per_image`` (N, C, C) sums to ``confusion`` (C, C) exactly."""
    total = np.asarray(per_image, dtype=np.int64).sum(axis=0)
    if not np.array_equal(total, np.asarray(confusion, dtype=np.int64)):
        raise AssertionError(f"{what}: per-image confusion matrices do not sum to the reported confusion matrix")


def save_per_image(name: str, arrays: Mapping[str, np.ndarray], confusions: Mapping[str, object],
                   id_lists: Mapping[str, Sequence[str]]) -> Path:
    """Write the sidecar of result ``name`` atomically and return its path.

    Args:
        arrays: ``{key: (N_key, C, C) counts}``, e.g. ``{"plain/A": ...}``.
        confusions: ``{key: (C, C) confusion}`` as the JSON reports it (checked by :func:`check_sum`).
        id_lists: ``{id key: ids}``, e.g. ``{"ids": [...], "crf_ids": [...]}``.
    """
    out = {}
    for key, conf in arrays.items():
        conf = np.asarray(conf)
        if conf.ndim != 3 or conf.shape[1] != conf.shape[2]:
            raise ValueError(f"{key}: expected (N, C, C) per-image matrices, got shape {conf.shape}")
        if conf.size and conf.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{key}: counts above int32")
        check_sum(conf, confusions[key], key)
        out[key] = conf.astype(np.int32)
    for key, ids in id_lists.items():
        out[key] = np.asarray(list(ids), dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    path = per_image_path(name)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def load_per_image(name: str, path: Optional[Path] = None) -> dict:
    """The sidecar as ``{key: array}`` (counts as int64)."""
    with np.load(path or per_image_path(name)) as data:
        return {k: (data[k].astype(np.int64) if data[k].dtype.kind in "iu" else data[k]) for k in data.files}
