"""The data download (sgwsss.data.download) against a local mirror on 127.0.0.1 (tests/voc_mirror.py):
sources in order, checksum mismatch, a killed download resumed, no source reachable, the
``python -m sgwsss.data.download`` step that ``make book`` runs first."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sgwsss.data import download as dl
from sgwsss.data.voc import VOCSegmentation, read_mask, read_split, resolve_root

from voc_mirror import Mirror, build_archives, refused_url

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(voc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("archives")
    return out, build_archives(voc_root, out)


@pytest.fixture()
def mirror(tiny):
    m = Mirror(tiny[0])
    yield m
    m.close()


def check_prepared(voc: Path, tiny) -> None:
    """The copy under ``voc`` is what the archives hold, with SegmentationClassAug and train_aug built."""
    assert read_split(voc, "train_aug") == tiny.train_aug
    assert tiny.val[0] in read_split(voc, "val") and tiny.val[0] not in tiny.train_aug  # SBD lists it: left out
    aug = voc / "SegmentationClassAug"
    for i, m in tiny.sbd_masks.items():
        expected = tiny.official.get(i, m)  # the official mask wins over SBD's
        np.testing.assert_array_equal(read_mask(aug / f"{i}.png"), expected)
    ds = VOCSegmentation(voc.parent.parent, split="train_aug", with_mask=True)
    assert len(ds) == len(tiny.train_aug) and ds.labels.sum() > 0
    root = voc.parent.parent
    assert not list(root.rglob("*.part")) and not list(root.glob(".*.partial"))
    assert not (root / "benchmark_RELEASE" / "dataset" / "img").exists()  # only the SBD members used


def test_archive_constants_match_torchvision():
    from torchvision.datasets import SBDataset
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    voc = DATASET_YEAR_DICT["2012"]
    assert (dl.VOC2012_TRAINVAL.filename, dl.VOC2012_TRAINVAL.md5) == (voc["filename"], voc["md5"])
    assert voc["url"] in dl.VOC2012_TRAINVAL.urls
    assert (dl.SBD_ARCHIVE.filename, dl.SBD_ARCHIVE.md5) == (SBDataset.filename, SBDataset.md5)
    assert SBDataset.url in dl.SBD_ARCHIVE.urls


def test_one_setting_adds_mirrors_folders_and_archives_in_order(monkeypatch):
    monkeypatch.setenv(dl.SOURCES_ENV, " https://m.example/voc/ ;/data/archives\n/x/benchmark.tgz;"
                                       "file:///y/VOCtrainval_11-May-2012.tar;")
    voc, sbd = dl.VOC2012_TRAINVAL, dl.SBD_ARCHIVE
    assert dl.sources_for(voc) == ["https://m.example/voc/VOCtrainval_11-May-2012.tar",
                                   "/data/archives/VOCtrainval_11-May-2012.tar",
                                   "file:///y/VOCtrainval_11-May-2012.tar", *voc.urls]
    assert dl.sources_for(sbd) == ["https://m.example/voc/benchmark.tgz", "/data/archives/benchmark.tgz",
                                   "/x/benchmark.tgz", *sbd.urls]
    assert dl.sources_for(voc, sources=[]) == list(voc.urls)


def test_first_source_down_second_good_then_nothing_fetched_again(tiny, mirror, tmp_path):
    folder, t = tiny
    sources = [refused_url(), mirror.url("down"), mirror.url("good")]
    voc = dl.prepare_voc(tmp_path / "root", progress=False, sources=sources, archives=t.archives)
    assert voc == tmp_path / "root" / "VOCdevkit" / "VOC2012"
    assert [(m, n) for m, n, _ in mirror.requests] == [("down", t.voc.filename), ("good", t.voc.filename),
                                                       ("down", t.sbd.filename), ("good", t.sbd.filename)]
    check_prepared(voc, t)
    assert not list((tmp_path / "root").glob("*.tar")) and not list((tmp_path / "root").glob("*.tgz"))
    mirror.requests.clear()
    assert dl.prepare_voc(tmp_path / "root", progress=False, sources=sources, archives=t.archives) == voc
    assert mirror.requests == []


def test_checksum_mismatch_is_never_used(tiny, mirror, tmp_path):
    folder, t = tiny
    root = tmp_path / "root"
    with pytest.raises(dl.VOCDownloadError, match=rf"{mirror.url('corrupt')}\S+ \(MD5 [0-9a-f]{{32}} is not "
                                                  rf"the expected {t.voc.md5}"):
        dl.prepare_voc(root, progress=False, sources=[mirror.url("corrupt")], archives=t.archives)
    assert sorted(p.name for p in root.iterdir()) == []  # no .part, no archive, no VOCdevkit
    # a local copy with the right name but wrong bytes: rejected while extracting, nothing left behind
    bad = tmp_path / "mine" / t.voc.filename
    bad.parent.mkdir()
    data = (folder / t.voc.filename).read_bytes()
    mid = len(data) // 2
    bad.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:])
    with pytest.raises(dl.VOCDownloadError, match=rf"{bad} \(MD5 [0-9a-f]{{32}} is not the expected"):
        dl.prepare_voc(root, progress=False, sources=[str(bad)], archives=t.archives)
    assert sorted(p.name for p in root.iterdir()) == []
    # the corrupt mirror first, a good one second: the good one is used
    voc = dl.prepare_voc(root, progress=False, sources=[mirror.url("corrupt"), mirror.url("good")],
                         archives=t.archives)
    check_prepared(voc, t)


def test_download_killed_half_way_then_resumed(tiny, mirror, tmp_path):
    folder, t = tiny
    root, total = tmp_path / "root", (folder / t.voc.filename).stat().st_size
    part = root / f"{t.voc.filename}.part"
    script = ("import sys, dataclasses; from sgwsss.data import download as dl\n"
              "voc = dl.Archive(*sys.argv[1:4], urls=(), gigabytes=0.001)\n"
              "dl.obtain(voc, sys.argv[4], sources=[sys.argv[5]], progress=False)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, t.voc.title, t.voc.filename, t.voc.md5, str(root),
                             mirror.url("slow")], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 0.4 * total):
            assert proc.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs
    finally:
        proc.wait(timeout=30)
    kept = part.stat().st_size
    assert 0 < kept < total
    assert not (root / t.voc.filename).exists() and not (root / "VOCdevkit").exists()
    mirror.requests.clear()
    voc = dl.prepare_voc(root, progress=False, sources=[mirror.url("good")], archives=t.archives)
    assert mirror.requests[0] == ("good", t.voc.filename, f"bytes={kept}-")  # resumed where it stopped
    check_prepared(voc, t)


def test_dropped_connection_keeps_part_and_a_server_ignoring_range_restarts(tiny, mirror, tmp_path):
    folder, t = tiny
    root = tmp_path / "root"
    with pytest.raises(dl.VOCDownloadError, match=r"connection closed after [\d,]+ of [\d,]+ bytes; "
                                                  r"VOCtrainval_11-May-2012.tar.part is kept and the next run resumes"):
        dl.prepare_voc(root, progress=False, sources=[mirror.url("drop")], archives=t.archives)
    assert (root / f"{t.voc.filename}.part").stat().st_size == (folder / t.voc.filename).stat().st_size // 2
    check_prepared(dl.prepare_voc(root, progress=False, sources=[mirror.url("norange")], archives=t.archives), t)


def test_no_source_reachable_says_what_was_tried_in_one_line(tiny, mirror, tmp_path):
    folder, t = tiny
    refused, missing = refused_url(), tmp_path / "nowhere"
    with pytest.raises(dl.VOCDownloadError) as e:
        dl.prepare_voc(tmp_path / "root", progress=False, sources=[refused, mirror.url("gone"), str(missing)],
                       archives=t.archives)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"could not get {t.voc.filename} (PASCAL VOC 2012 trainval, about 0.001 GB) "
                          "from any of its 3 sources: ")
    assert f"{refused}{t.voc.filename} (unreachable: " in msg
    assert f"{mirror.url('gone')}{t.voc.filename} (HTTP 404 " in msg
    assert f"{missing / t.voc.filename} (no such file)" in msg
    assert "Set SGWSSS_VOC_ROOT to an existing copy" in msg and "SGWSSS_VOC_SOURCES" in msg


def test_data_step_fills_the_cache_without_a_root_and_only_checks_one(tiny, mirror, tmp_path, monkeypatch,
                                                                     capsys, voc_root):
    """What ``make book`` runs first: ``python -m sgwsss.data.download``."""
    folder, t = tiny
    monkeypatch.setattr(dl, "VOC2012_TRAINVAL", t.voc)
    monkeypatch.setattr(dl, "SBD_ARCHIVE", t.sbd)
    monkeypatch.setenv(dl.SOURCES_ENV, mirror.url("good"))
    monkeypatch.setenv("SGWSSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SGWSSS_VOC_ROOT", str(voc_root))  # set: checked, nothing downloaded
    assert dl.main([]) == 0
    assert "nothing to download" in capsys.readouterr().out and mirror.requests == []
    monkeypatch.delenv("SGWSSS_VOC_ROOT")  # unset, nothing in the cache: downloaded there
    assert dl.main([]) == 0
    check_prepared(resolve_root(), t)
    assert resolve_root() == tmp_path / "cache" / "VOCdevkit" / "VOC2012"
    monkeypatch.setenv(dl.SOURCES_ENV, refused_url())
    assert dl.main(["--root", str(tmp_path / "elsewhere")]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of the download above
    assert last.startswith("error: could not get VOCtrainval_11-May-2012.tar") and "SGWSSS_VOC_ROOT" in last


def test_make_book_and_test_run_the_data_step_first():
    res = subprocess.run(["make", "-n", "-C", str(REPO), "book", "test"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    data = [i for i, line in enumerate(lines) if "-m sgwsss.data.download" in line]
    build = [i for i, line in enumerate(lines) if "jupyter-book build" in line]
    tests = [i for i, line in enumerate(lines) if "-m pytest" in line]
    assert data and build and tests and data[0] < build[0] and data[0] < tests[0]
