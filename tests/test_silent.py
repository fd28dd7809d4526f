"""Nothing silent (issue 16): stale outputs, stale caches, leftover temp files, NaN, errors that drop detail.

Each test builds a tiny VOC copy (a few of the sample's smallest images, JPEGs linked, masks copied)
and a random-init ``smoke`` checkpoint, and drives the command line in process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgwsss.cli import main

VOC = Path("VOCdevkit") / "VOC2012"


@pytest.fixture(scope="module")
def sample_ids(voc_root):
    """3 train and 2 val ids of the sample with the fewest pixels (fast to label)."""
    from sgwsss.data.voc import read_split, resolve_root

    voc = resolve_root(voc_root)

    def smallest(split, n):
        ids = read_split(voc, split)[:60]
        size = {i: np.prod(Image.open(voc / "JPEGImages" / f"{i}.jpg").size) for i in ids}
        return sorted(ids, key=lambda i: size[i])[:n]

    return voc, smallest("train", 3), smallest("val", 2)


def make_voc(base: Path, sample_ids, images: bool = True, masks: str = "SegmentationClassAug") -> Path:
    """A VOC copy under ``base`` (``base/VOCdevkit/VOC2012``); returns ``base``."""
    src, train, val = sample_ids
    voc = base / VOC
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / masks).mkdir()
    if images:
        (voc / "JPEGImages").mkdir()
    for i in train + val:
        if images:
            os.symlink(src / "JPEGImages" / f"{i}.jpg", voc / "JPEGImages" / f"{i}.jpg")
        shutil.copy(src / "SegmentationClassAug" / f"{i}.png", voc / masks / f"{i}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    return base


@pytest.fixture
def voc(tmp_path, sample_ids):
    return make_voc(tmp_path / "voc", sample_ids)


def _checkpoint(path: Path, seed: int = 0, edit=None) -> Path:
    from sgwsss.train import get_config
    from sgwsss.train.checkpoint import atomic_save, make_checkpoint, network_for

    cfg = get_config("smoke", budget=1.0, train_split="train")
    torch.manual_seed(seed)
    ckpt = make_checkpoint(network_for(cfg, pretrained=False), cfg, {"round": 1, "step": 2, "iteration": 3,
                                                                     "iters": 3}, kind="final", with_rng=False)
    if edit is not None:
        edit(ckpt["model"])
    return atomic_save(ckpt, path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "final.pt")


def cli(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``sgwsss *argv``."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sgwsss: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- 1. provenance of --out
def test_pseudo_labels_out_reused_only_with_the_same_checkpoint_and_settings(capsys, tmp_path, voc, ckpt):
    out = tmp_path / "pl"
    base = ["pseudo-labels", "--checkpoint", ckpt, "--voc-root", voc, "--split", "train", "--out", out]
    rc, stdout, _ = cli(capsys, *base, "--stage", "A")
    assert rc == 0 and json.loads(stdout)["written"] == 3
    record = json.loads((out / "provenance.json").read_text())
    assert record["settings"]["stage"] == "A" and len(record["checkpoint"]["sha256"]) == 64
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}

    rc, stdout, _ = cli(capsys, *base, "--stage", "A")  # the same: resume, nothing to write
    assert rc == 0 and json.loads(stdout)["written"] == 0

    rc, _, err = cli(capsys, *base, "--stage", "R")  # another stage: refused, PNGs untouched
    line = one_error(err)
    assert rc == 2 and "stage 'A' -> 'R'" in line and "--overwrite" in line, line
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == first

    other = _checkpoint(tmp_path / "other.pt", seed=1)  # another checkpoint: refused
    rc, _, err = cli(capsys, "pseudo-labels", "--checkpoint", other, "--voc-root", voc, "--split", "train",
                     "--out", out, "--stage", "A")
    line = one_error(err)
    assert rc == 2 and f"checkpoint {ckpt.resolve()} -> {other.resolve()}" in line, line

    rc, stdout, _ = cli(capsys, *base, "--stage", "R", "--overwrite")  # asked: replaced
    assert rc == 0 and json.loads(stdout)["written"] == 3
    assert json.loads((out / "provenance.json").read_text())["settings"]["stage"] == "R"


def test_predict_follows_the_same_rule_and_pngs_without_record_are_refused(capsys, tmp_path, voc, ckpt):
    out = tmp_path / "pred"
    base = ["predict", "--checkpoint", ckpt, "--voc-root", voc, "--out", out]
    rc, stdout, _ = cli(capsys, *base)
    assert rc == 0 and json.loads(stdout)["written"] == 2
    rc, stdout, _ = cli(capsys, *base)
    assert rc == 0 and json.loads(stdout)["written"] == 0
    rc, _, err = cli(capsys, *base, "--crf")
    assert rc == 2 and "crf False -> True" in one_error(err)

    (out / "provenance.json").unlink()  # PNGs of unknown origin
    rc, _, err = cli(capsys, *base)
    assert rc == 2 and "holds 2 PNG(s) but no provenance.json" in one_error(err)


def test_help_and_readme_describe_the_rule(capsys):
    with pytest.raises(SystemExit):
        main(["pseudo-labels", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "provenance.json" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "provenance.json" in readme and "--overwrite" in readme


# ----------------------------------------------------------------------------- 2. label cache
def test_label_cache_follows_each_mask_file(tmp_path, sample_ids):
    from sgwsss.data import VOCFormatError, VOCSegmentation, read_mask, save_mask

    root = make_voc(tmp_path / "voc", sample_ids)
    masks = root / VOC / "SegmentationClassAug"
    first = sample_ids[1][0]
    before = VOCSegmentation(root, split="train").labels
    assert before[0].sum() > 0

    save_mask(masks / f"{first}.png", np.zeros_like(read_mask(masks / f"{first}.png")))  # edited in place
    after = VOCSegmentation(root, split="train").labels
    assert after[0].sum() == 0 and (after[1:] == before[1:]).all()

    rgb = np.zeros((*read_mask(masks / f"{first}.png").shape, 3), np.uint8)  # an RGB mask copied over it
    Image.fromarray(rgb).save(masks / f"{first}.png")
    with pytest.raises(VOCFormatError, match="mode 'RGB'"):
        VOCSegmentation(root, split="train")

    # a mask added to SegmentationClassAug takes over from SegmentationClass
    root2 = make_voc(tmp_path / "voc2", sample_ids, masks="SegmentationClass")
    assert VOCSegmentation(root2, split="train").labels[0].sum() > 0
    (root2 / VOC / "SegmentationClassAug").mkdir()
    save_mask(root2 / VOC / "SegmentationClassAug" / f"{first}.png",
              np.zeros_like(read_mask(root2 / VOC / "SegmentationClass" / f"{first}.png")))
    os.utime(root2 / VOC / "SegmentationClassAug", ns=(0, 0))  # the folder's mtime says nothing
    assert VOCSegmentation(root2, split="train").labels[0].sum() == 0


# ----------------------------------------------------------------------------- 3. stale temp files
WRITER = """
import sys, time
from sgwsss.files import atomic_open
with atomic_open(sys.argv[1], "wb") as fh:
    fh.write(b"partial"); fh.flush()
    print("ready", flush=True)
    time.sleep(60)
"""


def killed_writer(target: Path) -> Path:
    """Run a writer of ``target`` in a subprocess, SIGKILL it mid-write; returns its temp file."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temp = target.with_name(f".{target.name}.tmp{proc.pid}")
    assert temp.is_file() and not target.exists()
    return temp


def test_stale_temp_files_of_killed_writers_are_removed_by_the_next_run(capsys, tmp_path, voc, ckpt, sample_ids):
    from sgwsss.files import remove_stale_temps

    out = tmp_path / "pl"
    out.mkdir()
    png_temp = killed_writer(out / f"{sample_ids[1][0]}.png")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_temp = out / f".other.png.tmp{live.pid}"  # a live writer's (another rank's) temp is kept
        live_temp.write_bytes(b"")
        rc, _, _ = cli(capsys, "pseudo-labels", "--checkpoint", ckpt, "--voc-root", voc, "--out", out,
                       "--stage", "A")
        assert rc == 0 and not png_temp.exists() and live_temp.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(out) == [live_temp]

    # a work dir: the next train (resume) run removes a killed checkpoint writer's temp
    from sgwsss.train import get_config, train

    work = tmp_path / "work"
    ckpt_temp = killed_writer(work / "checkpoints" / "last.pt")

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    with pytest.raises(Stop):
        train(get_config("smoke", budget=1.0, train_split="train"), voc_root=voc, work_dir=work, resume=True,
              progress=False,
              callback=stop)
    assert not ckpt_temp.exists()
    assert not list(work.rglob(".*.tmp*"))


# ----------------------------------------------------------------------------- 4. NaN
def test_nan_checkpoint_is_refused_naming_it(capsys, tmp_path, voc):
    def poison(state):
        next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")

    bad = _checkpoint(tmp_path / "nan.pt", edit=poison)
    rc, _, err = cli(capsys, "pseudo-labels", "--checkpoint", bad, "--voc-root", voc, "--out", tmp_path / "pl",
                     "--stage", "A")
    line = one_error(err)
    assert rc == 2 and f"checkpoint {bad} holds non-finite weights" in line, line


def test_non_finite_network_outputs_are_refused_naming_the_checkpoint(capsys, tmp_path, voc, ckpt, monkeypatch,
                                                                      sample_ids):
    import sgwsss.train as train_pkg

    real = train_pkg.load_checkpoint

    def overflowing(*a, **kw):  # finite weights whose outputs overflow
        model, meta = real(*a, **kw)
        model.register_forward_pre_hook(lambda m, inp: (inp[0] * 1e38 * 1e38,))
        return model, meta

    monkeypatch.setattr(train_pkg, "load_checkpoint", overflowing)
    for cmd in ("pseudo-labels", "predict"):
        rc, _, err = cli(capsys, cmd, "--checkpoint", ckpt, "--voc-root", voc, "--split", "train",
                         "--out", tmp_path / cmd)
        line = one_error(err)
        assert rc == 2 and f"checkpoint {ckpt} gives non-finite (NaN or inf) network outputs on image " \
                           f"'{sample_ids[1][0]}'" in line, line
        assert not list((tmp_path / cmd).glob("*.png"))


@pytest.mark.parametrize("case", ["guide", "src", "eps"])
def test_operators_reject_non_finite_inputs(case, monkeypatch):
    from sgwsss.refine import _cpu_kernels
    from sgwsss.refine.guided_filter import guided_filter

    monkeypatch.setattr(_cpu_kernels, "available", lambda: False)  # the checks come first; no JIT compile
    from sgwsss.refine.otsu import otsu_threshold
    from sgwsss.refine.self_guided import self_guided_refine

    image, maps = torch.rand(1, 3, 16, 16), torch.rand(1, 2, 16, 16)
    kw = {"eps": float("inf")} if case == "eps" else {}
    if case == "guide":
        image[0, 0, 3, 3] = float("nan")
    if case == "src":
        maps[0, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match={"guide": "guide", "src": "src", "eps": "eps"}[case]):
        guided_filter(image, maps, radius=2, **kw)
    with pytest.raises(ValueError, match={"guide": "image", "src": "maps", "eps": "eps"}[case]):
        self_guided_refine(image, maps, radius=2, **kw)
    if case == "src":
        maps[0, 1, 3, 3] = float("inf")
        with pytest.raises(ValueError, match="maps"):
            otsu_threshold(maps)


# ----------------------------------------------------------------------------- 5. errors that name the file
def test_checkpoint_errors_name_the_file_and_key(capsys, tmp_path, voc):
    def drop(state):
        del state[next(iter(state))]

    def reshape(state):
        k = next(k for k, v in state.items() if v.ndim == 4)
        state[k] = state[k][:1]

    base = ["pseudo-labels", "--voc-root", voc, "--out", tmp_path / "pl", "--checkpoint"]
    missing = _checkpoint(tmp_path / "missing.pt", edit=drop)
    line = one_error(cli(capsys, *base, missing)[2])
    assert f"checkpoint {missing} does not fit" in line and "missing key '" in line, line
    shaped = _checkpoint(tmp_path / "shape.pt", edit=reshape)
    line = one_error(cli(capsys, *base, shaped)[2])
    assert f"checkpoint {shaped} does not fit" in line and "has shape (1," in line, line

    garbage = tmp_path / "garbage.pt"
    torch.save({"format": 1, "model": Path("x")}, garbage)  # a pickle that weights_only refuses
    line = one_error(cli(capsys, *base, garbage)[2])
    assert f"{garbage} is not a readable sgwsss checkpoint" in line and "weights_only" not in line, line
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(_checkpoint(tmp_path / "ok.pt")).read_bytes()[:5000])
    line = one_error(cli(capsys, *base, truncated)[2])
    assert f"{truncated} is not a readable sgwsss checkpoint" in line and "weights_only" not in line, line


def test_truncated_png_in_evaluate_names_the_file(capsys, tmp_path, voc, sample_ids):
    pred = tmp_path / "pred"
    shutil.copytree(voc / VOC / "SegmentationClassAug", pred)
    bad = pred / f"{sample_ids[2][0]}.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    rc, _, err = cli(capsys, "evaluate", "--voc-root", voc, "--pred", pred)
    assert rc == 2 and str(bad) in one_error(err)
    gt = voc / VOC / "SegmentationClassAug" / f"{sample_ids[2][1]}.png"
    gt.write_bytes(gt.read_bytes()[:200])
    rc, _, err = cli(capsys, "evaluate", "--voc-root", voc, "--pred", voc / VOC / "SegmentationClassAug")
    assert rc == 2 and str(gt) in one_error(err)


def test_interrupt_hint_names_only_real_flags(capsys, tmp_path, voc, ckpt, monkeypatch):
    import sgwsss.train as train_pkg

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_pkg, "generate_pseudo_labels", interrupted)
    rc, _, err = cli(capsys, "pseudo-labels", "--checkpoint", ckpt, "--voc-root", voc, "--out", tmp_path / "pl")
    assert rc == 130 and "--resume" not in err and "run the same command again" in err, err


# ----------------------------------------------------------------------------- 6. lesser
def test_empty_split_is_refused(capsys, tmp_path, voc):
    (voc / VOC / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    (tmp_path / "pred").mkdir()
    rc, _, err = cli(capsys, "evaluate", "--voc-root", voc, "--pred", tmp_path / "pred")
    assert rc == 2 and "is empty" in one_error(err)


def test_resume_with_other_data_is_refused(tmp_path, sample_ids):
    from sgwsss.train import get_config, train

    class Stop(Exception):
        pass

    def stop_at_2(info):
        if info["iteration"] == 2:
            raise Stop

    cfg = get_config("smoke", budget=1.0, train_split="train")
    a = make_voc(tmp_path / "a", sample_ids)
    src, train_ids, val_ids = sample_ids
    b = make_voc(tmp_path / "b", (src, train_ids[:2], val_ids))
    work = tmp_path / "work"
    with pytest.raises(Stop):
        train(cfg, voc_root=a, work_dir=work, progress=False, callback=stop_at_2)
    assert (work / "checkpoints" / "last.pt").is_file()
    with pytest.raises(ValueError, match=r"cannot resume .*trained on other data \(voc_root: .*num_ids: 3 -> 2"):
        train(cfg, voc_root=b, work_dir=work, resume=True, progress=False)


def test_mask_of_another_size_is_refused_by_pseudo_labels_and_train(capsys, tmp_path, voc, ckpt, sample_ids):
    from sgwsss.data import VOCFormatError, VOCSegmentation, read_mask, save_mask
    from sgwsss.train import get_config, train_transform

    first = sample_ids[1][0]
    path = voc / VOC / "SegmentationClassAug" / f"{first}.png"
    save_mask(path, read_mask(path)[:-3])
    rc, _, err = cli(capsys, "pseudo-labels", "--checkpoint", ckpt, "--voc-root", voc, "--out", tmp_path / "pl",
                     "--stage", "A")
    line = one_error(err)
    assert rc == 2 and f"mask {path} has size" in line, line
    ds = VOCSegmentation(voc, split="train", transform=train_transform(get_config("smoke")))
    with pytest.raises(VOCFormatError, match="has size"):
        ds[0]


def test_evaluate_needs_no_images(capsys, tmp_path, sample_ids):
    root = make_voc(tmp_path / "voc", sample_ids, images=False)
    rc, out, err = cli(capsys, "evaluate", "--voc-root", root, "--pred", root / VOC / "SegmentationClassAug")
    assert rc == 0, err
    assert json.loads(out)["miou"] == 1.0 and json.loads(out)["num_images"] == 2


def test_cli_data_root_errors_name_the_cli_option(capsys, tmp_path):
    (tmp_path / "pred").mkdir()
    rc, _, err = cli(capsys, "evaluate", "--voc-root", tmp_path / "nowhere", "--pred", tmp_path / "pred")
    line = one_error(err)
    assert rc == 2 and "--voc-root" in line and "root=" not in line and "download=True" not in line, line
    from sgwsss.data import VOCMissingError, resolve_root

    with pytest.raises(VOCMissingError, match="root="):  # the Python API keeps its own words
        resolve_root(tmp_path / "nowhere")


def test_a_file_given_as_a_folder_says_so(capsys, tmp_path, voc, ckpt):
    afile = tmp_path / "file"
    afile.write_text("x")
    rc, _, err = cli(capsys, "pseudo-labels", "--checkpoint", ckpt, "--voc-root", voc, "--out", afile)
    assert rc == 2 and f"--out {afile}: expected a folder, but it is a file" in one_error(err)
    rc, _, err = cli(capsys, "train", "--config", "smoke", "--voc-root", voc, "--work-dir", afile)
    assert rc == 2 and f"--work-dir {afile}: expected a folder, but it is a file" in one_error(err)
