"""A local stand-in for the VOC and SBD hosts, for tests that must run offline.

:func:`build_archives` writes two small archives in the real layouts from a few images of the
VOC sample (``../shared/voc-sample``): ``VOCtrainval_11-May-2012.tar`` with
``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}`` and SBD's
``benchmark.tgz`` with ``benchmark_RELEASE/dataset/{cls/*.mat, img/, train.txt, val.txt}`` (the
``.mat`` masks in SBD's ``GTcls.Segmentation`` form). :class:`Mirror` serves them over HTTP on
127.0.0.1 (HTTP ``Range`` supported) under ``/<mode>/<file name>``, where the mode says how the
server behaves: ``good``, ``down`` (503), ``corrupt`` (wrong bytes), ``slow`` (throttled),
``drop`` (closes the connection half-way) and ``norange`` (ignores ``Range``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
import tarfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from sgwsss.data import download as dl


@dataclass
class TinyVOC:
    """What the archives hold, to check a prepared copy against."""

    voc: dl.Archive
    sbd: dl.Archive
    train: list
    val: list
    sbd_train: list
    sbd_val: list
    sbd_masks: dict  # id -> (H, W) uint8, as written into cls/<id>.mat
    official: dict  # id -> (H, W) uint8 of SegmentationClass

    @property
    def archives(self):
        return self.voc, self.sbd

    @property
    def train_aug(self):
        return sorted((set(self.sbd_train) | set(self.sbd_val) | set(self.train)) - set(self.val))


def _smallest(voc: Path, ids, n, exclude=()):
    """The ``n`` images of ``ids`` with the fewest pixels (fast to train on and label)."""
    ids = [i for i in ids if i not in exclude]
    pixels = {}
    for i in ids:
        with Image.open(voc / "JPEGImages" / f"{i}.jpg") as im:  # reads the header only
            pixels[i] = im.size[0] * im.size[1]
    return sorted(ids, key=lambda i: (pixels[i], i))[:n]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _mat_bytes(mask: np.ndarray) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": mask, "Boundaries": np.empty((0,), object),
                            "CategoriesPresent": np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)}})
    return buf.getvalue()


def build_archives(sample_root: Path, out: Path) -> TinyVOC:
    """Write the two archives into ``out`` from the VOC sample at ``sample_root``; see the module docstring.

    Official VOC lists: 3 ``train`` and 2 ``val`` images. SBD: 4 images of its own, plus one VOC
    ``train`` image (with a different mask: the official one must win) and one VOC ``val`` image
    (which ``train_aug`` must leave out).
    """
    src = Path(sample_root) / "VOCdevkit" / "VOC2012"
    lists = src / "ImageSets" / "Segmentation"
    read = lambda name: (lists / name).read_text().split()  # noqa: E731
    train, val = _smallest(src, read("train.txt"), 3), _smallest(src, read("val.txt"), 2)
    sbd_only = _smallest(src, read("train_aug.txt"), 4, exclude=set(read("train.txt")))
    sbd_train, sbd_val = sbd_only[:2] + [train[0], val[0]], sbd_only[2:]
    mask = lambda i: np.array(Image.open(src / "SegmentationClassAug" / f"{i}.png"))  # noqa: E731
    official = {i: np.array(Image.open(src / "SegmentationClass" / f"{i}.png")) for i in train + val}
    sbd_masks = {i: mask(i) for i in sbd_only}
    sbd_masks[train[0]] = np.zeros_like(official[train[0]])
    sbd_masks[val[0]] = mask(val[0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    voc_path = out / dl.VOC2012_TRAINVAL.filename
    with tarfile.open(voc_path, "w") as tar:
        base = "VOCdevkit/VOC2012"
        for i in sorted(set(train + val + sbd_only)):
            _add(tar, f"{base}/JPEGImages/{i}.jpg", (src / "JPEGImages" / f"{i}.jpg").read_bytes())
        for i in train + val:
            _add(tar, f"{base}/SegmentationClass/{i}.png", (src / "SegmentationClass" / f"{i}.png").read_bytes())
        for name, ids in (("train", train), ("val", val), ("trainval", train + val)):
            _add(tar, f"{base}/ImageSets/Segmentation/{name}.txt", "".join(f"{i}\n" for i in ids).encode())
    sbd_path = out / dl.SBD_ARCHIVE.filename
    with tarfile.open(sbd_path, "w:gz") as tar:
        base = "benchmark_RELEASE/dataset"
        for i, m in sbd_masks.items():
            _add(tar, f"{base}/cls/{i}.mat", _mat_bytes(m))
        _add(tar, f"{base}/img/{sbd_only[0]}.jpg", (src / "JPEGImages" / f"{sbd_only[0]}.jpg").read_bytes())
        _add(tar, f"{base}/train.txt", "".join(f"{i}\n" for i in sbd_train).encode())
        _add(tar, f"{base}/val.txt", "".join(f"{i}\n" for i in sbd_val).encode())
    md5 = lambda p: hashlib.md5(p.read_bytes()).hexdigest()  # noqa: E731
    voc = dataclasses.replace(dl.VOC2012_TRAINVAL, md5=md5(voc_path), urls=(), gigabytes=0.001)
    sbd = dataclasses.replace(dl.SBD_ARCHIVE, md5=md5(sbd_path), urls=(), gigabytes=0.001)
    return TinyVOC(voc, sbd, train, val, sbd_train, sbd_val, sbd_masks, official)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, data: bytes, mode: str) -> None:
        start, rng = 0, self.headers.get("Range")
        if rng and mode != "norange":
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "drop":
            body = body[: len(body) // 2]
            self.close_connection = True
        step = 8 * 1024 if mode == "slow" else len(body) or 1
        for k in range(0, len(body), step):
            self.wfile.write(body[k:k + step])
            if mode == "slow":
                self.wfile.flush()
                time.sleep(0.02)

    def do_GET(self):
        mode, _, name = self.path.lstrip("/").partition("/")
        self.server.requests.append((mode, name, self.headers.get("Range")))
        data = self.server.files.get(name)
        if mode == "down":
            self.send_error(503, "Service Unavailable")
        elif data is None or mode not in ("good", "corrupt", "slow", "drop", "norange"):
            self.send_error(404, "Not Found")
        else:
            if mode == "corrupt":
                data = bytes(b ^ 0xFF for b in data[:4096]) + data[4096:]
            try:
                self._send(data, mode)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (a killed download)
                pass


class Mirror:
    """The files of ``folder`` served on 127.0.0.1 until :meth:`close`; ``requests`` logs
    ``(mode, file name, Range header)`` of every request."""

    def __init__(self, folder: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list:
        return self.server.requests

    def url(self, mode: str = "good") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/voc/"
