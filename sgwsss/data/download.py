"""Download PASCAL VOC 2012 trainval and SBD, build ``SegmentationClassAug`` and ``train_aug.txt``.

Uses torchvision's download helpers (progress bar, MD5 check) and the URLs / checksums that
:class:`torchvision.datasets.VOCSegmentation` and :class:`torchvision.datasets.SBDataset` use.

Resulting layout under ``root``::

    VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ...}
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt
    benchmark_RELEASE/dataset/{cls, train.txt, val.txt, ...}       (SBD)

``SegmentationClassAug`` holds the SBD masks (``cls/<id>.mat`` converted to palette PNGs) with
the official VOC ``SegmentationClass`` masks written over them where those exist.
``train_aug`` = (SBD train + SBD val + VOC train) - VOC val (10,582 ids for the full data).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import urllib.error

import numpy as np
from torchvision.datasets import SBDataset
from torchvision.datasets.utils import download_url, extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT

from sgwsss.data.voc import ENV_VAR, VOCDataError, VOCFormatError, VOCMissingError, save_mask
from sgwsss.files import atomic_write_text

__all__ = [
    "VOC2012_TRAINVAL",
    "SBD_ARCHIVE",
    "VOCDownloadError",
    "prepare_voc",
    "download_archive",
    "read_sbd_mask",
    "build_segmentation_class_aug",
    "build_train_aug_list",
]

VOC2012_TRAINVAL = {k: DATASET_YEAR_DICT["2012"][k] for k in ("url", "filename", "md5")}
SBD_ARCHIVE = {"url": SBDataset.url, "filename": SBDataset.filename, "md5": SBDataset.md5}


class VOCDownloadError(VOCDataError, OSError):
    """Downloading or checking an archive failed."""


def download_archive(url: str, root: pathlib.Path, filename: str, md5: str, extract_to: pathlib.Path) -> None:
    """Download ``url`` to ``root/filename`` (progress bar, MD5 check), extract it, delete it."""
    try:
        download_url(url, str(root), filename=filename, md5=md5)
    except (urllib.error.URLError, OSError) as e:
        raise VOCDownloadError(
            f"could not download {url} (no network?) -- set {ENV_VAR} to an existing copy of "
            f"PASCAL VOC 2012 (the folder holding VOCdevkit/). Cause: {e}"
        ) from e
    except RuntimeError as e:  # torchvision: "File not found or corrupted." (MD5 mismatch)
        raise VOCDownloadError(
            f"downloaded {root / filename} failed its MD5 check (expected {md5}); delete it and retry, "
            f"or set {ENV_VAR} to an existing copy. Cause: {e}"
        ) from e
    archive = root / filename
    try:
        extract_archive(str(archive), str(extract_to))
    except Exception as e:
        raise VOCFormatError(f"could not extract {archive}: {e}") from e
    archive.unlink(missing_ok=True)


def read_sbd_mask(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class mask of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, KeyError, AttributeError, ValueError) as e:
        raise VOCFormatError(f"could not read SBD mask {path}: {e}") from e
    if seg.ndim != 2:
        raise VOCFormatError(f"SBD mask {path}: GTcls.Segmentation has shape {seg.shape}, expected (H, W)")
    return seg.astype(np.uint8)


def _read_ids(path: pathlib.Path) -> list[str]:
    if not path.is_file():
        raise VOCMissingError(f"list file {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def build_segmentation_class_aug(voc_dir: pathlib.Path, sbd_dir: pathlib.Path, progress: bool = True) -> pathlib.Path:
    """Write ``voc_dir/SegmentationClassAug`` from SBD masks plus official VOC masks.

    Args:
        voc_dir: the VOC2012 folder. sbd_dir: SBD's ``benchmark_RELEASE/dataset`` folder.

    Returns:
        The ``SegmentationClassAug`` folder (written to a temporary folder, then renamed).
    """
    from tqdm.auto import tqdm

    voc_dir, sbd_dir = pathlib.Path(voc_dir), pathlib.Path(sbd_dir)
    out = voc_dir / "SegmentationClassAug"
    tmp = voc_dir / "SegmentationClassAug.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    sbd_ids = sorted(set(_read_ids(sbd_dir / "train.txt")) | set(_read_ids(sbd_dir / "val.txt")))
    for i in tqdm(sbd_ids, desc="SBD masks -> SegmentationClassAug", disable=not progress):
        save_mask(tmp / f"{i}.png", read_sbd_mask(sbd_dir / "cls" / f"{i}.mat"))
    official = voc_dir / "SegmentationClass"
    if official.is_dir():
        for p in sorted(official.glob("*.png")):
            shutil.copyfile(p, tmp / p.name)
    os.replace(tmp, out)
    return out


def build_train_aug_list(voc_dir: pathlib.Path, sbd_dir: pathlib.Path) -> pathlib.Path:
    """Write ``ImageSets/Segmentation/train_aug.txt``: (SBD train + val + VOC train) - VOC val, sorted."""
    voc_dir, sbd_dir = pathlib.Path(voc_dir), pathlib.Path(sbd_dir)
    lists = voc_dir / "ImageSets" / "Segmentation"
    ids = set(_read_ids(sbd_dir / "train.txt")) | set(_read_ids(sbd_dir / "val.txt"))
    ids |= set(_read_ids(lists / "train.txt"))
    ids -= set(_read_ids(lists / "val.txt"))
    return atomic_write_text(lists / "train_aug.txt", "".join(f"{i}\n" for i in sorted(ids)))


def prepare_voc(root: str | os.PathLike, progress: bool = True) -> pathlib.Path:
    """Make ``root`` hold VOC 2012 + ``SegmentationClassAug`` + ``train_aug.txt``; download what is missing.

    Idempotent: existing folders are kept, archives already downloaded (with the right MD5) are
    not fetched again.

    Returns:
        The ``root/VOCdevkit/VOC2012`` folder.

    Raises:
        VOCDownloadError: no network, or a checksum mismatch.
    """
    root = pathlib.Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    voc_dir = root / "VOCdevkit" / "VOC2012"
    if not (voc_dir / "JPEGImages").is_dir():
        download_archive(**VOC2012_TRAINVAL, root=root, extract_to=root)
    need_aug = not (voc_dir / "SegmentationClassAug").is_dir()
    need_list = not (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()
    if need_aug or need_list:
        sbd_dir = root / "benchmark_RELEASE" / "dataset"
        if not (sbd_dir / "cls").is_dir():
            download_archive(**SBD_ARCHIVE, root=root, extract_to=root)
        if need_aug:
            build_segmentation_class_aug(voc_dir, sbd_dir, progress=progress)
        if need_list:
            build_train_aug_list(voc_dir, sbd_dir)
    return voc_dir
