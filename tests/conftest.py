"""Shared pytest fixtures.

The real PASCAL VOC 2012 sample is found through ``SGWSSS_VOC_ROOT``, else
``<repo>/../shared/voc-sample``; tests that need it are skipped when neither exists.
"""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VOC_SAMPLE = REPO.parent / "shared" / "voc-sample"


@pytest.fixture(scope="session", autouse=True)
def _sgwsss_cache_dir(tmp_path_factory):
    """Keep the data layer's label cache of a test session in a temporary folder.

    An explicit ``SGWSSS_CACHE_DIR`` from the user is respected.
    """
    if os.environ.get("SGWSSS_CACHE_DIR"):
        yield pathlib.Path(os.environ["SGWSSS_CACHE_DIR"])
        return
    path = tmp_path_factory.mktemp("sgwsss-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGWSSS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def voc_root() -> pathlib.Path:
    """Folder holding ``VOCdevkit/VOC2012`` (the real VOC sample or a full copy)."""
    env = os.environ.get("SGWSSS_VOC_ROOT")
    path = pathlib.Path(env).expanduser() if env else DEFAULT_VOC_SAMPLE
    if not path.exists():
        pytest.skip(
            f"PASCAL VOC data not found at {path}: set SGWSSS_VOC_ROOT to the folder holding "
            "VOCdevkit/ (e.g. `export SGWSSS_VOC_ROOT=../shared/voc-sample`)"
        )
    return path


@pytest.fixture(scope="session")
def voc_small(voc_root) -> list[str]:
    """A few ids (4) of the ``train`` split, in list order."""
    from sgwsss.data.voc import read_split, resolve_root

    return read_split(resolve_root(voc_root), "train")[:4]


@pytest.fixture(scope="session")
def voc_small_dataset(voc_root, voc_small):
    """``VOCSegmentation`` over :func:`voc_small` with ground-truth masks."""
    from sgwsss.data.voc import VOCSegmentation

    return VOCSegmentation(voc_root, split="train", ids=voc_small, with_mask=True)


@pytest.fixture(params=["numba", "torch"])
def cpu_path(request, monkeypatch):
    """Run a test through both CPU paths of sgwsss.refine: the fused numba kernels and plain torch."""
    from sgwsss.refine import _cpu_kernels

    if request.param == "numba" and not _cpu_kernels.available():
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setattr(_cpu_kernels, "available", lambda: False)
    return request.param
