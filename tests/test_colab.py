"""The reader's Colab path: the travelling checkpoint (sgwsss.book.pretrained), book.train_run's
choice between a finished run, the travelling model and training, and a simulated Colab runtime
(tests/colab_standin.py): every chapter's first cell installing sgwsss from a local clone, the data
from a local mirror (tests/voc_mirror.py), Google Drive present (two runtimes: the second reuses
the data archives and the runs, and chapter 8 resumes from its Drive checkpoint) and absent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgwsss import book
from sgwsss.book import pretrained
from sgwsss.data import download as dl
from sgwsss.train import get_config, read_checkpoint

from voc_mirror import Mirror, build_archives

REPO = Path(__file__).resolve().parents[1]
BUDGET = "0.5"  # smoke: 2 + 2 iterations


@pytest.fixture(scope="module")
def tiny(voc_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("archives")
    t = build_archives(voc_root, folder)
    root = tmp_path_factory.mktemp("tinyvoc")
    dl.prepare_voc(root, progress=False, sources=[str(folder)], archives=t.archives)
    return folder, t, root


@pytest.fixture(scope="module")
def smoke_bundle(tiny, tmp_path_factory):
    """A finished smoke run on the tiny data and its bundle in a weights folder of its own."""
    from sgwsss.train import train

    run = tmp_path_factory.mktemp("smoke") / "run"
    train(get_config("smoke", budget=float(BUDGET)), voc_root=tiny[2], work_dir=run, progress=False)
    weights = tmp_path_factory.mktemp("weights")
    return run, pretrained.pack(run, weights)


@pytest.fixture()
def colab(monkeypatch, smoke_bundle, tmp_path):
    """In-process 'Colab': a google.colab stand-in, no Drive, the smoke bundle as the package's weights."""
    import types

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", smoke_bundle[1].parent)
    monkeypatch.setattr(book, "COLAB_DRIVE", tmp_path / "no-drive")
    monkeypatch.setattr(book, "_said", set())
    monkeypatch.setenv("SGWSSS_BUDGET", BUDGET)
    monkeypatch.setenv("SGWSSS_WORK_DIR", str(tmp_path / "work"))
    trained = []

    def fake_train(cfg, voc_root=None, work_dir=None, resume=False, **kw):
        trained.append(cfg)
        shutil.copytree(smoke_bundle[0], work_dir, dirs_exist_ok=True)

    monkeypatch.setattr("sgwsss.train.train", fake_train)
    monkeypatch.setattr(book, "voc_root", lambda *a, **k: None)
    return trained


# ----------------------------------------------------------------------------- the bundle
def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_bundle_holds_both_networks_in_half_precision_checked_on_load(smoke_bundle, tmp_path):
    run, path = smoke_bundle
    info = pretrained.manifest("smoke", path.parent)
    assert info["sha256"] == pretrained.sha256(path) and info["bytes"] == path.stat().st_size
    assert info["config"] == get_config("smoke", budget=float(BUDGET)).to_dict()
    bundle = torch.load(path, weights_only=True)
    step1, final = (bundle["networks"][n]["model"] for n in pretrained.NETWORKS)
    floats = [k for k, v in step1.items() if v.is_floating_point()]
    assert floats and all(step1[k].dtype == torch.float16 for k in floats)
    shared = [k for k in floats if final[k].untyped_storage().data_ptr() == step1[k].untyped_storage().data_ptr()]
    assert shared and len(shared) < len(floats)  # frozen BN statistics stored once; trained weights twice
    fp32 = sum(v.numel() * 4 for v in step1.values() if v.is_floating_point())
    assert path.stat().st_size < 2 * fp32 / 2 * 1.05  # two half-precision networks at most

    out = pretrained.materialize(info, tmp_path / "work")
    for rel in pretrained.NETWORKS:
        model, meta = book.load_model(out, "final" if rel == "final.pt" else "step1")
        original = read_checkpoint(run / rel)["model"]
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v.cpu(), original[k].to(v.dtype), rtol=1e-3, atol=1e-4)  # fp16 rounding
    assert (out / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    stamp = (out / pretrained.STAMP).stat().st_mtime_ns
    assert pretrained.materialize(info, tmp_path / "work") == out and (out / pretrained.STAMP).stat().st_mtime_ns == stamp

    # a changed byte anywhere is caught: in the bundle, and in a written-out network
    flip_a_byte(out / "final.pt")
    with pytest.raises(pretrained.PretrainedError, match="final.pt .*fails its SHA-256 check"):
        book.load_model(out, "final")
    bad = tmp_path / "bad"
    shutil.copytree(path.parent, bad)
    flip_a_byte(bad / path.name)
    with pytest.raises(pretrained.PretrainedError, match=r"fails its SHA-256 check \(expected [0-9a-f]{64}, got"):
        pretrained.materialize(pretrained.manifest("smoke", bad), tmp_path / "work2")


def test_pack_command_and_errors(smoke_bundle, tmp_path, capsys):
    run, _ = smoke_bundle
    assert pretrained.main([str(run), "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "smoke.pt").is_file()
    assert pretrained.main([str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "is not a finished run: missing checkpoints/round1_step1.pt, final.pt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- book.train_run's choice
def test_colab_uses_the_travelling_model_and_training_is_one_call_away(colab, capsys):
    run = book.train_run("smoke")
    assert colab == [] and run.name.startswith("pretrained-smoke-") and (run / "final.pt").is_file()
    assert "Using the trained 'smoke' model that comes with sgwsss" in capsys.readouterr().out
    assert book.train_run("smoke") == run  # later chapters: the same folder, said once
    assert capsys.readouterr().out == ""
    own = book.train_run("smoke", pretrained=False)  # the one call that trains
    assert [c.name for c in colab] == ["smoke"] and own.name == book.run_name(colab[0])
    assert book.train_run("smoke") == own  # ... and later chapters use it
    assert len(colab) == 1


def test_a_stale_travelling_model_is_not_used(colab, monkeypatch, capsys):
    monkeypatch.setenv("SGWSSS_BUDGET", "0.25")  # another configuration than the bundle's
    with pytest.raises(pretrained.PretrainedError, match="trained with another configuration"):
        book.train_run("smoke", pretrained=True)
    run = book.train_run("smoke")
    assert "trained with another configuration (another SGWSSS_BUDGET" in capsys.readouterr().out
    assert len(colab) == 1 and run.name.startswith("smoke-budget0.25-")


def test_outside_colab_the_book_trains_and_cpu_means_gpu_on_cuda(colab, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab")
    assert book.train_run("smoke").name.startswith("smoke-budget0.5-") and len(colab) == 1
    assert book.book_config("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (book.book_config("cpu"), book.book_config("smoke"), book.book_config("paper")) == ("gpu", "smoke", "paper")


# ----------------------------------------------------------------------------- a simulated Colab runtime
@pytest.fixture(scope="module")
def clone(smoke_bundle, tmp_path_factory):
    """A clone of this repository's HEAD with the smoke bundle committed as package data (as the lead
    will commit cpu.pt), so the install carries it; the pip spec of the chapters' first cell for it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    path = tmp_path_factory.mktemp("clone") / "sgwsss"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-C", str(path)]
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()],
        check=True)
    weights = path / "sgwsss" / "book" / "weights"
    for p in smoke_bundle[1].parent.iterdir():
        shutil.copy(p, weights / p.name)
    subprocess.run([*git, "add", "-f", "sgwsss/book/weights"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the smoke bundle"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    return f"sgwsss @ git+file://localhost{path}@{sha}"  # a PEP 508 URL needs a host


def runtime(tmp: Path, name: str, clone: str, mirror: Mirror, tiny, drive: bool, steps):
    """One fresh 'Colab runtime' (own home and cache; the install and the Drive folder are shared)."""
    home = tmp / name
    home.mkdir()
    plan = {"chapters": [str(p) for p in sorted((REPO / "book").glob("[0-9][0-9]_*.ipynb"))],
            "target": str(tmp / "site-packages"), "drive": drive,
            "drive_root": str(tmp / ("drive" if drive else f"unmounted-{name}")),
            "voc_md5": tiny.voc.md5, "sbd_md5": tiny.sbd.md5, "steps": steps}
    (home / "plan.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGWSSS_") and k not in ("PYTHONPATH",
                                                                                           "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=plan["target"], SGWSSS_PIP_SPEC=clone, SGWSSS_BUDGET=BUDGET,
               SGWSSS_VOC_SOURCES=mirror.url("good"), CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, str(REPO / "tests" / "colab_standin.py"), str(home / "plan.json")],
                         cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = res.stdout
    return json.loads(out.rsplit("RESULT ", 1)[1]), out, home


def test_colab_runtimes_with_and_without_drive(clone, tiny, tmp_path):
    folder, t, _ = tiny
    mirror = Mirror(folder)
    try:
        # 1. Drive mounted: data from the mirror, archives kept on Drive; the travelling model; chapter 8
        #    trains on Drive and the runtime disconnects early in step 2
        a, out, home = runtime(tmp_path, "a", clone, mirror, t, True, ["train_run", "ch8-disconnect"])
        drive = tmp_path / "drive" / "MyDrive" / "sgwsss"
        assert a["pip"] == [f'install -q "{clone}"'] * 10  # 9 first cells + chapter 8's again, the spec expanded
        voc = home / ".cache" / "sgwsss" / "VOCdevkit" / "VOC2012"
        assert set(a["roots"].values()) == {str(voc), None} and a["roots"]["09_results"] is None
        assert sorted(p.name for p in (drive / "archives").iterdir()) == sorted([t.sbd.filename, t.voc.filename])
        assert [n for _, n, _ in mirror.requests] == [t.voc.filename, t.sbd.filename]
        assert out.count("Google Drive: the downloaded archives stay in") == 1
        assert a["train_run"]["config"] == "smoke" and a["train_run"]["work_dir"] == str(drive)
        assert Path(a["train_run"]["run"]).parent == drive and Path(a["train_run"]["run"]).name.startswith(
            "pretrained-smoke-")
        assert a["ch8"]["interrupted"] and Path(a["ch8"]["work"]).parent == drive
        assert (Path(a["ch8"]["work"]) / "checkpoints" / "last.pt").is_file()
        assert not (Path(a["ch8"]["work"]) / "final.pt").exists()

        # 2. a new runtime with the same Drive: nothing downloaded, the same runs; chapter 8 resumes
        mirror.requests.clear()
        b, out, home = runtime(tmp_path, "b", clone, mirror, t, True, ["train_run", "ch8"])
        assert mirror.requests == [] and (home / ".cache" / "sgwsss" / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()
        assert b["train_run"]["run"] == a["train_run"]["run"]
        assert b["ch8"]["work"] == a["ch8"]["work"] and Path(b["ch8"]["final"]).is_file()
        assert b["ch8"]["resumed_from"]["step"] == 1  # from step 1's last checkpoint, on Drive

        # 3. no Drive (the reader declines): downloaded into this runtime, said once what the first run costs
        c, out, home = runtime(tmp_path, "c", clone, mirror, t, False, ["train_run"])
        assert len(c["mounts"]) == 1 and len(mirror.requests) == 2  # asked once, declined
        assert out.count("No Google Drive: this runtime downloads VOC 2012 + SBD (3.4 GB") == 1
        assert "minutes" in out.split("No Google Drive:")[1].splitlines()[0]
        cache = home / ".cache" / "sgwsss"
        assert not list(cache.glob("*.tar")) and not list(cache.glob("*.tgz"))
        assert Path(c["train_run"]["run"]).parent == cache / "work"
    finally:
        mirror.close()
