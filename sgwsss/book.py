"""Helpers shared by the book's chapters (d2l style: chapters import, the package works).

* :func:`voc_root` -- where the data is: ``$SGWSSS_VOC_ROOT`` locally, a download
  into the cache in Colab.
* :func:`work_dir` -- where chapters keep trained checkpoints so later chapters
  reuse them (``$SGWSSS_WORK_DIR``, default ``~/.cache/sgwsss/work``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_URL = "https://github.com/sgwsss/sgwsss"


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def voc_root(root: str | os.PathLike | None = None) -> Path:
    """The VOC root for the chapters.

    Locally this is ``root`` or ``$SGWSSS_VOC_ROOT`` (a clear error says how to set
    it when missing). In Colab, VOC 2012 and the SBD masks are downloaded once into
    the cache (a few GB, with a progress bar).
    """
    from sgwsss.data import resolve_root

    return resolve_root(root, download=in_colab())


def work_dir(name: str = "") -> Path:
    """Folder for the book's trained models and outputs (created if needed)."""
    base = os.environ.get("SGWSSS_WORK_DIR")
    if base is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache, "sgwsss", "work")
    path = Path(base) / name if name else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
