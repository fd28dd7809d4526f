"""Download PASCAL VOC 2012 trainval and SBD, build ``SegmentationClassAug`` and ``train_aug.txt``.

``python -m sgwsss.data.download`` (what ``make data``, ``make book`` and ``make test`` run first)
prepares the cache folder :func:`sgwsss.data.cache_dir`; with ``$SGWSSS_VOC_ROOT`` set it only
checks that copy and downloads nothing.

**Sources.** Each archive is tried from a list of sources, in order, and every source is checked
against the same MD5 (the one :mod:`torchvision.datasets` uses): first the entries of
``$SGWSSS_VOC_SOURCES``, then the archive's public hosts. ``SGWSSS_VOC_SOURCES`` is one setting,
a ``;``-separated list (newlines work too) of

* a mirror URL of a folder: ``https://mirror.example.org/voc/`` (the archive's file name is appended),
* a local folder holding the archives: ``/data/archives``,
* one archive, as a URL or a path that ends in the archive's own file name
  (``VOCtrainval_11-May-2012.tar`` or ``benchmark.tgz``): used for that archive only.

**Downloads are resumable and never mistaken for complete.** A download goes to
``<name>.part`` (a rerun continues it with an HTTP ``Range`` request), its MD5 is checked, and only
then is it renamed to ``<name>``. Archives are extracted into a temporary folder, checked again
against the MD5 while they are read, and moved into place only when complete, so a run killed at
any point leaves nothing that a later run takes for finished data. When every source fails, one
line lists each source tried with the reason, and how to point at an existing copy.

Resulting layout under ``root``::

    VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ...}
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt
    benchmark_RELEASE/dataset/{cls, train.txt, val.txt}       (the parts of SBD used)

``SegmentationClassAug`` holds the SBD masks (``cls/<id>.mat`` converted to palette PNGs) with
the official VOC ``SegmentationClass`` masks written over them where those exist.
``train_aug`` = (SBD train + SBD val + VOC train) - VOC val (10,582 ids for the full data).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import pathlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sgwsss.data.voc import ENV_VAR, VOCDataError, VOCFormatError, VOCMissingError, save_mask
from sgwsss.files import atomic_write_text

__all__ = [
    "Archive",
    "VOC2012_TRAINVAL",
    "SBD_ARCHIVE",
    "SOURCES_ENV",
    "VOCDownloadError",
    "sources_for",
    "fetch",
    "extract_verified",
    "obtain",
    "prepare_voc",
    "read_sbd_mask",
    "build_segmentation_class_aug",
    "build_train_aug_list",
]

SOURCES_ENV = "SGWSSS_VOC_SOURCES"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


@dataclass(frozen=True)
class Archive:
    """One archive to fetch: its file name, MD5, public hosts (tried after the user's sources),
    approximate size (for messages) and, when not everything is needed, the member prefixes to extract."""

    title: str
    filename: str
    md5: str
    urls: tuple[str, ...]
    gigabytes: float
    members: tuple[str, ...] | None = None


VOC2012_TRAINVAL = Archive(
    title="PASCAL VOC 2012 trainval",
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    urls=(
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",  # torchvision's
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",  # the official page's
        "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",  # a long-standing mirror (darknet)
    ),
    gigabytes=2.0,
)
SBD_ARCHIVE = Archive(
    title="SBD (semantic boundaries dataset)",
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    urls=(
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    ),
    gigabytes=1.4,
    members=("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt",
             "benchmark_RELEASE/dataset/val.txt"),
)


class VOCDownloadError(VOCDataError, OSError):
    """No source of an archive could be used (unreachable, incomplete or failing its MD5)."""


class SourceFailed(Exception):
    """One source of an archive failed; the message is the reason, for the final error line."""


# --------------------------------------------------------------------------- sources
def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "ftp")


def _local_path(source: str) -> pathlib.Path:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return pathlib.Path(urllib.request.url2pathname(parsed.path))
    return pathlib.Path(source).expanduser()


def _basename(source: str) -> str:
    path = urllib.parse.urlparse(source).path if _is_url(source) else str(_local_path(source))
    return path.rstrip("/").rsplit("/", 1)[-1]


def _user_sources(value: str | None = None) -> list[str]:
    raw = os.environ.get(SOURCES_ENV, "") if value is None else value
    return [s.strip() for s in raw.replace("\n", ";").split(";") if s.strip()]


def sources_for(archive: Archive, sources: Sequence[str] | None = None) -> list[str]:
    """The sources tried for ``archive``, in order: ``sources`` (default: ``$SGWSSS_VOC_SOURCES``),
    each a folder / mirror URL (the file name is appended) or one archive (used when its file name
    is ``archive.filename``), then ``archive.urls``."""
    known = {VOC2012_TRAINVAL.filename, SBD_ARCHIVE.filename, archive.filename}
    out = []
    for s in _user_sources() if sources is None else list(sources):
        name = _basename(s)
        if name in known:
            if name == archive.filename:
                out.append(s)
        else:
            out.append(s.rstrip("/") + "/" + archive.filename if _is_url(s) else str(_local_path(s) / archive.filename))
    return out + list(archive.urls)


# --------------------------------------------------------------------------- download
def _md5(path: pathlib.Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _open(url: str, offset: int):
    """The response for ``url`` from byte ``offset``, or None when the server says the range is past the end."""
    headers = {"User-Agent": "sgwsss"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file
            return None
        raise SourceFailed(_reason(e)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise SourceFailed(_reason(e)) from None


def _stream(resp, part: pathlib.Path, offset: int, progress: bool, desc: str) -> None:
    """Write the body of ``resp`` to ``part`` (appending from ``offset`` when the server honoured the range)."""
    from tqdm.auto import tqdm

    if offset and resp.status != 206:  # the server ignored the Range header: start over
        offset = 0
    length = resp.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    written = offset
    with open(part, "ab" if offset else "wb") as fh, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        try:
            read = getattr(resp, "read1", resp.read)  # what has arrived, so the .part grows as it comes
            for block in iter(lambda: read(_CHUNK), b""):
                fh.write(block)
                written += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            raise SourceFailed(f"interrupted after {written:,} bytes ({_reason(e)}); "
                               f"{part.name} is kept and the next run resumes it") from None
    if total is not None and written < total:
        raise SourceFailed(f"connection closed after {written:,} of {total:,} bytes; "
                           f"{part.name} is kept and the next run resumes it")


def fetch(url: str, dest: pathlib.Path, md5: str, progress: bool = True) -> pathlib.Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present), check the MD5, rename.

    Raises:
        SourceFailed: unreachable, interrupted (the ``.part`` is kept) or a wrong MD5 (it is deleted).
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for _ in range(2):  # a resumed .part that fails the MD5 may hold another file's bytes: once more from 0
        offset = part.stat().st_size if part.exists() else 0
        resp = _open(url, offset)
        if resp is not None:
            with resp:
                _stream(resp, part, offset, progress, dest.name)
        got = _md5(part)
        if got == md5:
            os.replace(part, dest)
            return dest
        part.unlink()
        if not offset:
            break
    raise SourceFailed(f"MD5 {got} is not the expected {md5} (not this archive, or corrupted in transit)")


# --------------------------------------------------------------------------- extraction
class _HashingReader:
    """A file wrapper that feeds every byte read to an MD5 (and a progress bar)."""

    def __init__(self, fh, bar):
        self.fh, self.bar, self.md5 = fh, bar, hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        block = self.fh.read(size)
        self.md5.update(block)
        self.bar.update(len(block))
        return block


def _move_into(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Move ``src`` to ``dst``; where ``dst`` is an existing folder, merge into it entry by entry."""
    if not dst.exists():
        os.replace(src, dst)
    elif src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _move_into(child, dst / child.name)
    # else: keep what is already there


def extract_verified(path: pathlib.Path, archive: Archive, dest: pathlib.Path, progress: bool = True) -> None:
    """Extract ``path`` (the members ``archive.members``, default all) into ``dest``, checking its MD5.

    The archive is read once, as a stream: extracted into ``dest/.<name>.partial`` while hashed, and
    moved into ``dest`` only when the MD5 matches and the archive is complete.

    Raises:
        SourceFailed: a wrong MD5 or an unreadable archive (nothing is left in ``dest``).
    """
    from tqdm.auto import tqdm

    path, dest = pathlib.Path(path), pathlib.Path(dest)
    tmp = dest / f".{archive.filename}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with open(path, "rb") as raw, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                           desc=f"extracting {archive.filename}", disable=not progress) as bar:
            reader = _HashingReader(raw, bar)
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                for member in tar:
                    if archive.members is None or member.name.startswith(archive.members):
                        tar.extract(member, tmp, **safe)
            while reader.read(_CHUNK):  # the rest of the file (tar padding) for the MD5
                pass
        got = reader.md5.hexdigest()
        if got != archive.md5:
            raise SourceFailed(f"MD5 {got} is not the expected {archive.md5}")
        _move_into(tmp, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise SourceFailed(f"unreadable archive ({_reason(e)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def obtain(archive: Archive, dest: pathlib.Path, *, sources: Sequence[str] | None = None,
           archive_dir: pathlib.Path | None = None, keep: bool = False, progress: bool = True) -> None:
    """Extract ``archive`` into ``dest`` from the first source that works (see :func:`sources_for`).

    A verified copy already in ``archive_dir`` (default ``dest``) is used first; downloads are stored
    there and deleted after extraction unless ``keep``. Local sources are read in place.

    Raises:
        VOCDownloadError: no source worked; one line names each source tried and why it failed.
    """
    dest = pathlib.Path(dest)
    store = pathlib.Path(archive_dir) if archive_dir is not None else dest
    stored = store / archive.filename
    tried = ([str(stored)] if stored.is_file() else []) + sources_for(archive, sources)
    tried = list(dict.fromkeys(tried))  # each source once
    failures = []
    for source in tried:
        path = None
        try:
            if _is_url(source):
                path = fetch(source, stored, archive.md5, progress=progress)
            else:
                path = _local_path(source)
                if not path.is_file():
                    raise SourceFailed("no such file")
            extract_verified(path, archive, dest, progress=progress)
        except SourceFailed as e:
            failures.append(f"{source} ({e})")
            if path == stored and stored.is_file():  # our own copy is bad: drop it
                stored.unlink()
            continue
        if path == stored and not keep:
            stored.unlink()
        return
    raise VOCDownloadError(
        f"could not get {archive.filename} ({archive.title}, about {archive.gigabytes:g} GB) from any of its "
        f"{len(tried)} sources: {'; '.join(failures) or f'none given ({SOURCES_ENV} is empty)'}. Set {ENV_VAR} to an existing copy of VOC 2012 (the folder "
        f"holding VOCdevkit/), or add a mirror URL, a folder or the archive's own path to {SOURCES_ENV} "
        f"(';'-separated, tried first)."
    )


# --------------------------------------------------------------------------- SBD -> SegmentationClassAug
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


def prepare_voc(root: str | os.PathLike, progress: bool = True, *, sources: Sequence[str] | None = None,
                archive_dir: str | os.PathLike | None = None, keep_archives: bool = False,
                archives: tuple[Archive, Archive] | None = None) -> pathlib.Path:
    """Make ``root`` hold VOC 2012 + ``SegmentationClassAug`` + ``train_aug.txt``; fetch what is missing.

    Idempotent: what is already in place is kept and nothing is fetched again.

    Args:
        root: the folder that receives ``VOCdevkit/`` (and SBD's ``benchmark_RELEASE/``).
        sources: tried before the public hosts (default ``$SGWSSS_VOC_SOURCES``), see :func:`sources_for`.
        archive_dir: where downloaded archives are stored, and looked for first (default ``root``).
        keep_archives: keep them after extraction (e.g. on Google Drive, for the next Colab runtime).
        archives: the (VOC, SBD) :class:`Archive` pair (default :data:`VOC2012_TRAINVAL`, :data:`SBD_ARCHIVE`).

    Returns:
        The ``root/VOCdevkit/VOC2012`` folder.

    Raises:
        VOCDownloadError: no source of an archive worked (the message lists them).
    """
    root = pathlib.Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    voc_archive, sbd_archive = archives or (VOC2012_TRAINVAL, SBD_ARCHIVE)
    where = {"sources": sources, "archive_dir": archive_dir, "keep": keep_archives, "progress": progress}
    voc_dir = root / "VOCdevkit" / "VOC2012"
    if not (voc_dir / "JPEGImages").is_dir():
        obtain(voc_archive, root, **where)
    need_aug = not (voc_dir / "SegmentationClassAug").is_dir()
    need_list = not (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()
    if need_aug or need_list:
        sbd_dir = root / "benchmark_RELEASE" / "dataset"
        if not (sbd_dir / "cls").is_dir():
            obtain(sbd_archive, root, **where)
        if need_aug:
            build_segmentation_class_aug(voc_dir, sbd_dir, progress=progress)
        if need_list:
            build_train_aug_list(voc_dir, sbd_dir)
    return voc_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sgwsss.data.download [--root DIR]``: prepare the data the book reads."""
    from sgwsss.data.voc import cache_dir, resolve_root

    ap = argparse.ArgumentParser(prog="python -m sgwsss.data.download", description=main.__doc__)
    ap.add_argument("--root", type=pathlib.Path, default=None,
                    help=f"prepare this folder (default: ${ENV_VAR} when set -- then only checked -- else the "
                         f"cache folder {cache_dir()})")
    args = ap.parse_args(argv)
    try:
        if args.root is None and os.environ.get(ENV_VAR):
            voc = resolve_root()
            print(f"data: {ENV_VAR}={os.environ[ENV_VAR]} ({voc}); nothing to download")
            return 0
        voc = prepare_voc(args.root if args.root is not None else cache_dir())
    except VOCDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"data: {voc} is ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
