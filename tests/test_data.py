"""Tests of sgwsss.data: VOC loading, labels, palette, transforms, errors (the download: tests/test_download.py)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sgwsss.data.transforms import IMAGENET_MEAN, EvalTransform, TrainTransform
from sgwsss.data.voc import (
    CLASSES,
    PALETTE,
    VOCDataError,
    VOCFormatError,
    VOCMissingError,
    VOCSegmentation,
    cache_dir,
    collate_eval,
    colorize,
    label_to_names,
    names_to_label,
    read_mask,
    read_split,
    resolve_root,
    save_mask,
)


# --------------------------------------------------------------------------- helpers
def make_voc(base: pathlib.Path, classes=None, size=(24, 32), mask_folder="SegmentationClassAug",
             splits=None) -> pathlib.Path:
    """Tiny synthetic VOC tree under ``base``; returns the VOC2012 folder.

    ``classes`` maps id -> list of foreground class indices drawn as stripes in its mask.
    """
    classes = classes if classes is not None else {"img_a": [8], "img_b": [12, 15], "img_c": [], "img_d": [1]}
    voc = base / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = size
    for i, cls in classes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg",
                                                                              quality=95)
        if mask_folder is not None:
            mask = np.zeros((h, w), np.uint8)
            for k, c in enumerate(cls):
                mask[2 + 4 * k: 5 + 4 * k, 3:20] = c
            mask[-1, :] = 255
            save_mask(voc / mask_folder / f"{i}.png", mask)
    ids = list(classes)
    splits = splits if splits is not None else {"train": ids[:3], "val": ids[3:]}
    for name, lst in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in lst))
    return voc


def naive_label(mask: np.ndarray) -> np.ndarray:
    """Reference image-level label: np.unique over the mask, float64."""
    out = np.zeros(20)
    for v in np.unique(mask):
        if 1 <= v <= 20:
            out[v - 1] = 1.0
    return out


# --------------------------------------------------------------------------- classes / palette
def test_classes_and_label_round_trip():
    assert len(CLASSES) == 21 and CLASSES[0] == "background" and CLASSES[15] == "person"
    assert CLASSES[20] == "tvmonitor" and CLASSES[11] == "diningtable"
    lab = names_to_label(["dog", "person", "dog"])
    assert lab.shape == (20,) and lab.dtype == np.float32
    assert np.flatnonzero(lab).tolist() == [11, 14]
    assert label_to_names(lab) == ["dog", "person"]
    assert label_to_names(torch.from_numpy(lab)) == ["dog", "person"]
    assert names_to_label([]).sum() == 0


def test_names_to_label_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown class name 'doggo'.*aeroplane.*tvmonitor"):
        names_to_label(["cat", "doggo"])
    with pytest.raises(ValueError, match="shape"):
        label_to_names(np.zeros(21))


def test_palette_reference_values():
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert PALETTE[0].tolist() == [0, 0, 0]
    assert PALETTE[1].tolist() == [128, 0, 0]
    assert PALETTE[12].tolist() == [64, 0, 128]
    assert PALETTE[15].tolist() == [192, 128, 128]
    assert PALETTE[255].tolist() == [224, 224, 192]  # ignore: light
    assert len({tuple(c) for c in PALETTE[:21]}) == 21


def test_colorize_and_save_mask_round_trip(tmp_path):
    mask = np.array([[0, 1, 15], [20, 255, 3]], dtype=np.uint8)
    rgb = colorize(torch.from_numpy(mask.astype(np.int64)))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    save_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.convert("RGB")), rgb)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[0, 256]]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((2, 2, 3), np.int64))


def test_read_mask_rejects_rgb(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(VOCFormatError, match="mode 'RGB'"):
        read_mask(tmp_path / "rgb.png")


# --------------------------------------------------------------------------- real sample
def test_split_sizes(voc_root):
    for split, n in (("train", 437), ("train_aug", 937), ("val", 200)):
        ds = VOCSegmentation(voc_root, split=split)
        assert len(ds) == n == len(ds.ids) == ds.labels.shape[0]
        assert ds.labels.shape == (n, 20) and ds.labels.dtype == np.float32
        assert ds.split == split and (ds.root / "JPEGImages").is_dir()
    assert not set(read_split(ds.root, "val")) & set(read_split(ds.root, "train_aug"))


def test_labels_equal_classes_in_masks(voc_root):
    ds = VOCSegmentation(voc_root, split="train_aug")
    rng = np.random.default_rng(1)
    for k in rng.choice(len(ds), 60, replace=False):
        mask = np.array(Image.open(ds.mask_path(k)))
        np.testing.assert_array_equal(ds.labels[k], naive_label(mask), err_msg=ds.ids[k])
    assert (ds.labels.sum(1) >= 1).mean() > 0.95
    counts = ds.class_counts()
    assert counts.shape == (20,) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, (ds.labels > 0).sum(0))
    assert counts[CLASSES.index("dog") - 1] > counts[CLASSES.index("aeroplane") - 1]


def test_item_shapes_dtypes_and_values(voc_root, voc_small_dataset):
    ds = voc_small_dataset
    assert len(ds) == 4
    for k in range(len(ds)):
        item = ds[k]
        assert set(item) == {"image", "label", "id", "mask"}
        img, mask = item["image"], item["mask"]
        assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
        assert 0.0 <= img.min() and img.max() <= 1.0
        with Image.open(ds.image_path(k)) as pil:
            ref = np.asarray(pil.convert("RGB"), dtype=np.float64) / 255.0
        np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), ref, atol=1e-6)
        assert mask.dtype == torch.int64 and mask.shape == img.shape[1:]
        assert item["label"].dtype == torch.float32 and item["label"].shape == (20,)
        np.testing.assert_array_equal(item["label"].numpy(), naive_label(mask.numpy()))
        assert item["id"] == ds.ids[k]
    no_mask = VOCSegmentation(voc_root, split="train", ids=ds.ids[:1])
    assert "mask" not in no_mask[0]


def test_palette_pngs_read_as_indices(voc_root):
    ds = VOCSegmentation(voc_root, split="val", with_mask=True)
    for k in range(0, len(ds), 40):
        path = ds.mask_path(k)
        with Image.open(path) as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.array(PALETTE[:21]).reshape(-1),
                                          np.array(im.getpalette()[:63]))
            rgb = np.array(im.convert("RGB"))
        mask = read_mask(path)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255} and 255 in values
        np.testing.assert_array_equal(colorize(mask), rgb)


def test_root_given_as_voc2012_folder_and_env(voc_root, monkeypatch):
    voc = resolve_root(voc_root)
    assert voc.name == "VOC2012"
    assert resolve_root(voc) == voc
    monkeypatch.setenv("SGWSSS_VOC_ROOT", str(voc_root))
    assert resolve_root() == voc


def test_train_transform_on_real_items(voc_root, voc_small):
    torch.manual_seed(0)
    ds = VOCSegmentation(voc_root, split="train", ids=voc_small, with_mask=True, transform=TrainTransform())
    for k in range(len(ds)):
        item = ds[k]
        assert item["image"].shape == (3, 321, 321) and item["mask"].shape == (321, 321)
        assert type(item["image"]) is torch.Tensor and type(item["mask"]) is torch.Tensor
        assert item["mask"].dtype == torch.int64
        assert set(torch.unique(item["mask"]).tolist()) <= set(range(21)) | {255}
        assert item["label"].shape == (20,)
    ev = VOCSegmentation(voc_root, split="train", ids=voc_small, transform=EvalTransform())
    raw = VOCSegmentation(voc_root, split="train", ids=voc_small)
    assert torch.equal(ev[0]["image"], raw[0]["image"])


def test_collate_eval_variable_sizes(voc_root):
    ds = VOCSegmentation(voc_root, split="val", with_mask=True)
    sizes = [tuple(ds[k]["image"].shape) for k in range(6)]
    assert len(set(sizes)) > 1, "sample should hold images of different sizes"
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(6)), batch_size=3,
                                         collate_fn=collate_eval)
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3]
    assert [tuple(it["image"].shape) for b in batches for it in b] == sizes
    assert all(it["mask"].shape == it["image"].shape[1:] for b in batches for it in b)


# --------------------------------------------------------------------------- transforms (synthetic)
def _coded_item(h, w, seed=0, with_mask=True):
    """Image whose channel 0 encodes the mask (mask / 20) so image/mask alignment is checkable."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 21, (h, w), generator=g)
    image = torch.rand(3, h, w, generator=g)
    image[0] = mask.float() / 20.0
    item = {"image": image, "label": torch.zeros(20), "id": "x"}
    if with_mask:
        item["mask"] = mask
    return item


def test_train_transform_pads_mask_with_ignore():
    item = _coded_item(100, 80)
    item["mask"] = torch.full((100, 80), 3, dtype=torch.int64)
    t = TrainTransform(crop_size=321, scale=(1.0, 1.0))
    torch.manual_seed(0)
    out = t(item)
    assert out["image"].shape == (3, 321, 321) and out["mask"].shape == (321, 321)
    pad = out["mask"] == 255
    assert int(pad.sum()) == 321 * 321 - 100 * 80
    assert int((out["mask"] == 3).sum()) == 100 * 80
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1)
    torch.testing.assert_close(out["image"][:, pad], fill.expand(3, int(pad.sum())))
    # the unpadded block is the original image (possibly flipped)
    rows, cols = torch.nonzero(~pad, as_tuple=True)
    block = out["image"][:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert torch.equal(block, item["image"]) or torch.equal(block, item["image"].flip(-1))
    assert out["id"] == "x" and torch.equal(out["label"], item["label"])


def test_train_transform_flip_consistency():
    item = _coded_item(40, 50, seed=3)
    t = TrainTransform(crop_size=32, scale=(1.0, 1.0), hflip=True)
    flipped = unflipped = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out = t(item)
        img, mask = out["image"], out["mask"]
        assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and not (mask == 255).any()
        torch.testing.assert_close(img[0] * 20, mask.float())  # image and mask moved together
        for src, counter in ((item["image"], "unflipped"), (item["image"].flip(-1), "flipped")):
            found = any(torch.equal(img, src[:, r:r + 32, c:c + 32]) for r in range(9) for c in range(19))
            if found:
                if counter == "flipped":
                    flipped += 1
                else:
                    unflipped += 1
                break
        else:
            raise AssertionError(f"seed {seed}: output is no crop of the (flipped) input")
    assert flipped > 0 and unflipped > 0


def test_train_transform_rescale_seeded_and_without_mask():
    item = _coded_item(50, 40, seed=1)
    t = TrainTransform(crop_size=64, scale=(2.0, 2.0), hflip=False)
    torch.manual_seed(0)
    out = t(item)
    # 2x nearest upsampling of the mask then a crop: every mask pixel repeats in 2x2 blocks
    m = out["mask"]
    assert set(torch.unique(m).tolist()) <= set(torch.unique(item["mask"]).tolist())
    rows, cols = (m[:, :-1] == m[:, 1:]).float().mean(), (m[:-1] == m[1:]).float().mean()
    assert rows > 0.45 and cols > 0.45
    t2 = TrainTransform(crop_size=33, scale=(0.5, 1.5))
    torch.manual_seed(5)
    a = t2(item)
    torch.manual_seed(5)
    b = t2(item)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    nomask = _coded_item(20, 30, with_mask=False)
    out = t2(nomask)
    assert out["image"].shape == (3, 33, 33) and "mask" not in out
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_train_transform_bad_args():
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(crop_size=0)
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(scale=(1.5, 0.5))
    with pytest.raises(ValueError, match="mask"):
        TrainTransform()({"image": torch.rand(3, 10, 10), "mask": torch.zeros(9, 10, dtype=torch.int64)})


# --------------------------------------------------------------------------- bad input (synthetic trees)
def test_root_missing(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(VOCMissingError, match=r"nope.*does not exist.*SGWSSS_VOC_ROOT") as e:
        resolve_root(missing)
    assert isinstance(e.value, FileNotFoundError)
    monkeypatch.setenv("SGWSSS_VOC_ROOT", str(missing))
    with pytest.raises(VOCMissingError, match=r"SGWSSS_VOC_ROOT"):
        VOCSegmentation(split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VOCMissingError, match=r"no VOCdevkit/VOC2012"):
        resolve_root(tmp_path / "empty")
    (tmp_path / "half" / "VOCdevkit").mkdir(parents=True)
    with pytest.raises(VOCMissingError, match=r"VOCdevkit.VOC2012"):
        resolve_root(tmp_path / "half")


def test_root_incomplete_names_missing_folder_and_list(tmp_path):
    voc = make_voc(tmp_path)
    assert resolve_root(tmp_path) == voc
    os.rename(voc / "JPEGImages", voc / "JPEGImages_gone")
    with pytest.raises(VOCMissingError, match=r"missing folder .*JPEGImages\b.*SGWSSS_VOC_ROOT"):
        resolve_root(tmp_path)
    os.rename(voc / "JPEGImages_gone", voc / "JPEGImages")
    os.rename(voc / "SegmentationClassAug", voc / "x")
    with pytest.raises(VOCMissingError, match="SegmentationClassAug, SegmentationClass, Annotations"):
        resolve_root(tmp_path)
    os.rename(voc / "x", voc / "SegmentationClassAug")
    with pytest.raises(VOCMissingError, match=r"train_aug\.txt not found.*available splits: \['train', 'val'\]"):
        VOCSegmentation(tmp_path, split="train_aug")


def test_listed_id_without_image(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "JPEGImages" / "img_b.jpg").unlink()
    with pytest.raises(VOCMissingError, match=r"no image.*JPEGImages.img_b\.jpg"):
        VOCSegmentation(tmp_path, split="train")
    VOCSegmentation(tmp_path, split="val")  # other split unaffected


def test_truncated_jpeg_raises_at_load(tmp_path, monkeypatch):
    voc = make_voc(tmp_path, size=(64, 96))
    path = voc / "JPEGImages" / "img_a.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    ds = VOCSegmentation(tmp_path, split="train")  # construction does not decode images
    with pytest.raises(VOCFormatError, match=r"truncated.*img_a\.jpg"):
        ds[0]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # even if someone set it globally
    with pytest.raises(VOCFormatError, match=r"img_a\.jpg"):
        ds[0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(VOCFormatError, match=r"img_a\.jpg"):
        ds[0]
    assert ds[1]["image"].shape == (3, 64, 96)


def test_mask_size_mismatch(tmp_path):
    voc = make_voc(tmp_path, size=(24, 32))
    save_mask(voc / "SegmentationClassAug" / "img_b.png", np.zeros((20, 30), np.uint8))
    ds = VOCSegmentation(tmp_path, split="train", with_mask=True)
    ds[0]
    with pytest.raises(VOCFormatError, match=r"'img_b'.*30x20.*32x24"):
        ds[1]


def test_mask_without_foreground_kept_with_zero_label(tmp_path):
    make_voc(tmp_path)
    ds = VOCSegmentation(tmp_path, split="train", with_mask=True)
    k = ds.ids.index("img_c")
    item = ds[k]
    assert item["label"].sum() == 0 and ds.labels[k].sum() == 0
    assert set(torch.unique(item["mask"]).tolist()) == {0, 255}
    assert label_to_names(ds.labels[ds.ids.index("img_b")]) == ["dog", "person"]


def test_ids_subset_and_unknown_ids(tmp_path):
    make_voc(tmp_path)
    ds = VOCSegmentation(tmp_path, split="train", ids=["img_c", "img_a"])
    assert ds.ids == ["img_c", "img_a"] and len(ds) == 2
    np.testing.assert_array_equal(ds.labels[1], names_to_label(["cat"]))
    with pytest.raises(ValueError, match=r"not in split 'train'.*img_d"):
        VOCSegmentation(tmp_path, split="train", ids=["img_a", "img_d"])


def test_mask_dir_pseudo_labels(tmp_path):
    make_voc(tmp_path)
    pseudo = tmp_path / "pseudo"
    for i, v in (("img_a", 7), ("img_b", 0), ("img_c", 9)):
        save_mask(pseudo / f"{i}.png", np.full((24, 32), v, np.uint8))
    ds = VOCSegmentation(tmp_path, split="train", mask_dir=pseudo)
    item = ds[0]
    assert torch.equal(item["mask"], torch.full((24, 32), 7, dtype=torch.int64))
    np.testing.assert_array_equal(item["label"].numpy(), names_to_label(["cat"]))  # GT label, not pseudo
    (pseudo / "img_c.png").unlink()
    with pytest.raises(VOCMissingError, match=r"pseudo.img_c\.png"):
        VOCSegmentation(tmp_path, split="train", mask_dir=pseudo)
    save_mask(pseudo / "img_c.png", np.full((24, 32), 40, np.uint8))
    with pytest.raises(VOCFormatError, match=r"outside 0..20"):
        VOCSegmentation(tmp_path, split="train", mask_dir=pseudo)[2]


def test_annotation_xml_fallback_and_segmentationclass(tmp_path):
    voc = make_voc(tmp_path, mask_folder="SegmentationClass")
    (voc / "SegmentationClass" / "img_d.png").unlink()
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "img_d.xml").write_text(
        "<annotation><object><name>horse</name></object><object><name>person</name></object>"
        "<object><name>horse</name></object></annotation>"
    )
    ds = VOCSegmentation(tmp_path, split="val")
    assert label_to_names(ds.labels[0]) == ["horse", "person"]
    assert "mask" not in ds[0]
    with pytest.raises(VOCMissingError, match=r"with_mask=True.*'img_d'"):
        VOCSegmentation(tmp_path, split="val", with_mask=True)
    tr = VOCSegmentation(tmp_path, split="train", with_mask=True)  # masks from SegmentationClass
    assert label_to_names(tr.labels[1]) == ["dog", "person"]
    (voc / "Annotations" / "img_d.xml").unlink()
    with pytest.raises(VOCMissingError, match=r"'img_d'.*no label source"):
        VOCSegmentation(tmp_path, split="val")


def test_label_cache_on_disk_outside_root(tmp_path, monkeypatch):
    from sgwsss.data import voc as vocmod

    monkeypatch.setenv("SGWSSS_CACHE_DIR", str(tmp_path / "cache"))
    voc = make_voc(tmp_path / "data")
    before = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    ds = VOCSegmentation(tmp_path / "data", split="train")
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == before
    files = list((cache_dir() / "labels").glob("train-*.npz"))
    assert cache_dir() == tmp_path / "cache" and len(files) == 1
    # the disk cache is used: tamper with it, clear the memory cache
    with np.load(files[0]) as z:
        ids, labels = z["ids"], z["labels"].copy()
    labels[:] = 1.0
    np.savez(files[0], ids=ids, labels=labels)
    monkeypatch.setattr(vocmod, "_LABEL_CACHE", {})
    assert VOCSegmentation(tmp_path / "data", split="train").labels.sum() == 60
    # a changed list file invalidates it
    lst = voc / "ImageSets" / "Segmentation" / "train.txt"
    os.utime(lst, ns=(lst.stat().st_atime_ns, lst.stat().st_mtime_ns + 10**9))
    np.testing.assert_array_equal(VOCSegmentation(tmp_path / "data", split="train").labels, ds.labels)
