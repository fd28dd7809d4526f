import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgwsss.evaluate import (VOC_CLASSES, ConfusionMeter, Evaluator, confusion_matrix, evaluate_folder, iou_per_class,
                             mean_iou, per_class_table)

VOC_ROOT = Path(os.environ.get("SGWSSS_VOC_ROOT",
                               Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"))
VOC = VOC_ROOT / "VOCdevkit" / "VOC2012"
needs_voc = pytest.mark.skipif(not (VOC / "ImageSets" / "Segmentation" / "val.txt").is_file(),
                               reason=f"VOC sample not found at {VOC_ROOT} (set SGWSSS_VOC_ROOT)")

# 3x3 hand-worked example, 3 classes, one ignore pixel
GT = np.array([[0, 0, 1],
               [1, 2, 255],
               [2, 2, 0]])
PRED = np.array([[0, 1, 1],
                 [1, 2, 0],
                 [2, 0, 0]])
# valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,2) (2,0) (0,0)
CONF = np.array([[2, 1, 0],
                 [0, 2, 0],
                 [1, 0, 2]])
# IoU_c = TP / (gt_c + pred_c - TP)
IOU = np.array([2 / (3 + 3 - 2), 2 / (2 + 3 - 2), 2 / (3 + 2 - 2)])  # 0.5, 2/3, 2/3


def test_hand_worked_confusion_matrix_and_iou():
    conf = confusion_matrix(PRED, GT, num_classes=3)
    assert conf.dtype == np.int64 and conf.shape == (3, 3)
    np.testing.assert_array_equal(conf, CONF)
    np.testing.assert_allclose(iou_per_class(conf), IOU)
    assert mean_iou(conf) == pytest.approx(11 / 18)
    # torch inputs and batched shapes give the same counts
    conf_t = confusion_matrix(torch.from_numpy(PRED)[None], torch.from_numpy(GT)[None], 3)
    np.testing.assert_array_equal(conf_t, CONF)


def test_confusion_matrix_matches_naive_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (13, 17))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, gt.shape)
    ref = np.zeros((5, 5), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 5), ref)


def test_nan_for_absent_class_excluded_from_mean():
    gt = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2])
    conf = confusion_matrix(pred, gt, num_classes=4)  # class 3 never occurs
    iou = iou_per_class(conf)
    assert math.isnan(iou[3])
    np.testing.assert_allclose(iou[:3], [1 / 2, 2 / 3, 1.0])
    assert mean_iou(conf) == pytest.approx((1 / 2 + 2 / 3 + 1.0) / 3)
    # a class predicted but absent from gt has IoU 0 and counts in the mean
    conf2 = confusion_matrix(np.array([0, 3]), np.array([0, 0]), 4)
    np.testing.assert_allclose(iou_per_class(conf2)[[0, 3]], [0.5, 0.0])
    assert mean_iou(conf2) == pytest.approx(0.25)
    assert math.isnan(mean_iou(np.zeros((3, 3), np.int64)))


def test_perfect_prediction_is_one():
    gt = np.array([[0, 5, 5], [20, 255, 0]])
    pred = np.where(gt == 255, 3, gt)  # pred under ignore pixels does not matter
    m = ConfusionMeter(21)
    m.update(pred, gt)
    assert m.miou() == 1.0
    d = m.as_dict()
    assert d["miou"] == 1.0
    assert d["iou"]["background"] == 1.0 and d["iou"]["tvmonitor"] == 1.0
    assert d["iou"]["bottle"] == 1.0
    assert d["iou"]["aeroplane"] is None and d["iou"]["bird"] is None
    json.dumps(d)


def test_meter_accumulates_and_resets():
    m = ConfusionMeter(3)
    m.update(PRED[:2], GT[:2])
    m.update(PRED[2:], GT[2:])
    np.testing.assert_array_equal(m.conf, CONF)
    np.testing.assert_allclose(m.iou(), IOU)
    d = m.as_dict(["a", "b", "c"])
    assert d == {"miou": pytest.approx(11 / 18), "iou": {"a": 0.5, "b": pytest.approx(2 / 3),
                                                         "c": pytest.approx(2 / 3)}}
    m.reset()
    assert m.conf.sum() == 0
    with pytest.raises(ValueError, match="class_names"):
        ConfusionMeter(3).as_dict(["a", "b"])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        confusion_matrix(PRED[:2], GT, 3)
    with pytest.raises(ValueError, match="pred contains values \\[3\\]"):
        confusion_matrix(np.where(PRED == 2, 3, PRED), GT, 3)
    with pytest.raises(ValueError, match="pred contains values \\[255\\]"):
        confusion_matrix(np.full_like(GT, 255), GT, 3)
    with pytest.raises(ValueError, match="gt contains"):
        confusion_matrix(PRED, np.where(GT == 2, 7, GT), 3)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(PRED.astype(np.float32), GT, 3)
    with pytest.raises(ValueError, match="square"):
        iou_per_class(np.zeros((3, 2)))


def test_per_class_table_format():
    results = {
        "ours": {"miou": 0.6111, "iou": {"bg": 0.5, "cat": 2 / 3, "dog": None}},
        "CAM": {"miou": float("nan"), "iou": [0.12345, float("nan"), 1.0]},
    }
    table = per_class_table(results, ["bg", "cat", "dog"])
    assert table.splitlines() == [
        "| Method | bg | cat | dog | mIoU |",
        "|---|---:|---:|---:|---:|",
        "| ours | 50.0 | 66.7 | - | 61.1 |",
        "| CAM | 12.3 | - | 100.0 | - |",
    ]
    # default VOC column order, works on ConfusionMeter.as_dict output
    m = ConfusionMeter(21)
    m.update(np.array([0, 8]), np.array([0, 8]))
    lines = per_class_table({"x": m.as_dict()}).splitlines()
    assert lines[0].split(" | ")[1:3] == ["background", "aeroplane"]
    assert lines[2] == "| x | 100.0 | " + " | ".join(["-"] * 7) + " | 100.0 | " + \
        " | ".join(["-"] * 12) + " | 100.0 |"


def _mini_voc(tmp_path, ids, sub="SegmentationClassAug"):
    """A VOC root with a val split of ``ids`` whose images and masks are copied from the sample, and an
    empty prediction folder: ``(root, VOC2012 folder, prediction folder)``."""
    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    for i in ids:
        for src, dst in ((VOC / "SegmentationClassAug" / f"{i}.png", voc / sub / f"{i}.png"),
                         (VOC / "JPEGImages" / f"{i}.jpg", voc / "JPEGImages" / f"{i}.jpg")):
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(src, dst)
    (tmp_path / "pred").mkdir()
    return root, voc, tmp_path / "pred"


def _val_ids(n=5):
    return (VOC / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:n]


@needs_voc
def test_evaluate_folder_perfect_and_one_pixel_changed(tmp_path):
    ids = _val_ids()
    root, voc, pred_dir = _mini_voc(tmp_path, ids)
    for i in ids:
        shutil.copy(VOC / "SegmentationClassAug" / f"{i}.png", pred_dir / f"{i}.png")
    res = evaluate_folder(root, "val", pred_dir, progress=False)
    assert res["miou"] == 1.0 and res["num_images"] == 5
    json.dumps(res)

    # change one labelled pixel of the first image to another class
    gts = [np.array(Image.open(voc / "SegmentationClassAug" / f"{i}.png")) for i in ids]
    pred0 = gts[0].copy()
    r, c = np.argwhere(pred0 != 255)[0]
    old = int(pred0[r, c])
    new = 15 if old != 15 else 0
    pred0[r, c] = new
    Image.fromarray(pred0.astype(np.uint8), mode="L").save(pred_dir / f"{ids[0]}.png")
    res = evaluate_folder(root, "val", pred_dir, progress=False)
    # reference: per-class intersection / union by boolean masks
    preds = [pred0] + gts[1:]
    iou_ref = {}
    for k, name in enumerate(VOC_CLASSES):
        inter = sum(((p == k) & (g == k) & (g != 255)).sum() for p, g in zip(preds, gts))
        union = sum((((p == k) | (g == k)) & (g != 255)).sum() for p, g in zip(preds, gts))
        iou_ref[name] = inter / union if union else None
    for name, v in iou_ref.items():
        assert (res["iou"][name] is None) == (v is None), name
        if v is not None:
            assert res["iou"][name] == pytest.approx(v)
    present = [v for v in iou_ref.values() if v is not None]
    assert res["miou"] == pytest.approx(np.mean(present))
    assert res["miou"] < 1.0
    assert res["iou"][VOC_CLASSES[new]] < 1.0 and res["iou"][VOC_CLASSES[old]] < 1.0


@needs_voc
def test_evaluate_folder_falls_back_to_segmentation_class(tmp_path):
    ids = _val_ids(2)
    root, _, pred_dir = _mini_voc(tmp_path, ids, sub="SegmentationClass")
    for i in ids:
        shutil.copy(VOC / "SegmentationClassAug" / f"{i}.png", pred_dir / f"{i}.png")
    # accepts the VOC2012 folder as root too
    assert evaluate_folder(root / "VOCdevkit" / "VOC2012", "val", pred_dir, progress=False)["miou"] == 1.0


@needs_voc
def test_evaluate_folder_errors(tmp_path):
    ids = _val_ids()
    root, _, pred_dir = _mini_voc(tmp_path, ids)
    shutil.copy(VOC / "SegmentationClassAug" / f"{ids[1]}.png", pred_dir / f"{ids[1]}.png")
    with pytest.raises(FileNotFoundError, match=f"4 of 5 .*{ids[0]}, {ids[2]}"):
        evaluate_folder(root, "val", pred_dir, progress=False)
    for i in ids:
        shutil.copy(VOC / "SegmentationClassAug" / f"{i}.png", pred_dir / f"{i}.png")
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(pred_dir / f"{ids[3]}.png")
    with pytest.raises(ValueError, match=ids[3]):
        evaluate_folder(root, "val", pred_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="split 'train': list file .*train.txt not found"):
        evaluate_folder(root, "train", pred_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        evaluate_folder(tmp_path / "nowhere", "val", pred_dir, progress=False)


@needs_voc
def test_evaluator_scores_any_subset_from_a_folder_or_from_memory(tmp_path):
    """One evaluator: a subset of ids (folder or in-memory masks) scores what a hand count over those ids says."""
    ids = _val_ids()
    root, voc, pred_dir = _mini_voc(tmp_path, ids)
    gts = {i: np.array(Image.open(voc / "SegmentationClassAug" / f"{i}.png")) for i in ids}
    preds = {i: np.where(g == 255, 0, g) for i, g in gts.items()}
    first = ids[0]
    preds[first] = np.zeros_like(preds[first])  # the first image all background
    subset = [ids[3], first]  # any order, any subset
    for i in subset:  # the folder holds the subset only: the others' absence must not matter
        Image.fromarray(preds[i].astype(np.uint8), mode="L").save(pred_dir / f"{i}.png")
    ref = ConfusionMeter()
    for i in subset:
        ref.update(preds[i], gts[i])
    from_folder = evaluate_folder(root, "val", pred_dir, ids=subset, progress=False)
    from_memory = Evaluator.of_split(root, "val", ids=subset).score({i: preds[i] for i in subset})
    assert from_folder == from_memory
    assert from_folder["num_images"] == 2 and from_folder["miou"] == pytest.approx(ref.miou())
    np.testing.assert_array_equal(np.array(from_folder["confusion"]), ref.conf)
    assert from_folder["miou"] < 1.0
    # the whole split is missing three predictions; unknown ids and mask_dir datasets are refused
    with pytest.raises(FileNotFoundError, match="3 of 5"):
        evaluate_folder(root, "val", pred_dir, progress=False)
    with pytest.raises(KeyError, match="not among the 2 ids"):
        Evaluator.of_split(root, "val", ids=subset).add(ids[1], preds[ids[1]])
    from sgwsss.data import VOCSegmentation

    with pytest.raises(ValueError, match="mask_dir"):
        Evaluator(VOCSegmentation(root, split="val", ids=subset, mask_dir=pred_dir))
