import sys

import numpy as np
import pytest
import torch

from sgwsss.crf import CRFParams, crf_labels, dense_crf, labels_to_probs

pytest.importorskip("pydensecrf.densecrf")


def two_region_scene(h=24, w=40, noise=1.6, seed=0):
    """Left half red, right half blue; probabilities = softmax(onehot + noise)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2:] = 1
    img = np.empty((h, w, 3), np.uint8)
    img[truth == 0] = (200, 40, 40)
    img[truth == 1] = (40, 40, 200)
    logits = np.stack([truth == 0, truth == 1]).astype(np.float64)
    logits += rng.normal(0.0, noise, logits.shape)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return img, probs.astype(np.float32), truth


def test_crf_cleans_noisy_two_region_probabilities():
    img, probs, truth = two_region_scene()
    acc_in = (probs.argmax(0) == truth).mean()
    lab = crf_labels(img, probs)
    acc_out = (lab == truth).mean()
    assert acc_in < 0.85  # the input really is noisy
    assert acc_out > 0.98
    assert acc_out > acc_in + 0.1


def test_output_shape_dtype_and_normalisation():
    img, probs, _ = two_region_scene(h=10, w=14)
    q = dense_crf(img, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert (q >= 0).all()
    lab = crf_labels(img, probs)
    assert lab.shape == (10, 14) and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, q.argmax(0))


def test_zero_iterations_is_softmax_of_negative_unary():
    # with no mean-field step, Q = softmax(-U) = normalised clipped probabilities
    img, probs, _ = two_region_scene(h=8, w=9)
    q = dense_crf(img, probs, CRFParams(iterations=0))
    ref = np.clip(probs.astype(np.float64), 1e-5, 1)
    ref /= ref.sum(0, keepdims=True)
    np.testing.assert_allclose(q, ref, atol=1e-5)


def test_non_contiguous_inputs_and_torch_inputs_match():
    img, probs, _ = two_region_scene(h=12, w=16)
    ref = dense_crf(img, probs)
    # non-contiguous views: (H,W,C) -> (C,H,W) transpose, reversed image view
    probs_hwc = np.ascontiguousarray(probs.transpose(1, 2, 0))
    img_rev = np.ascontiguousarray(img[:, ::-1])[:, ::-1]
    assert not probs_hwc.transpose(2, 0, 1).flags.c_contiguous and not img_rev.flags.c_contiguous
    np.testing.assert_allclose(dense_crf(img_rev, probs_hwc.transpose(2, 0, 1)), ref, atol=1e-6)
    # torch float image (3,H,W) in [0,1] and torch probabilities
    img_t = torch.from_numpy(img).permute(2, 0, 1).double() / 255.0
    np.testing.assert_allclose(dense_crf(img_t, torch.from_numpy(probs)), ref, atol=1e-6)


def test_bad_shapes_raise_value_error():
    img, probs, _ = two_region_scene(h=8, w=10)
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(img, probs[:, :7])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        dense_crf(img, probs[0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_crf(np.zeros((8, 10, 4), np.uint8), probs)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        dense_crf(img.astype(np.float32) / 255, probs)  # float must be channels-first
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dense_crf(torch.randn(3, 8, 10) * 3, probs)
    with pytest.raises(ValueError, match="non-negative"):
        dense_crf(img, -probs)


def test_missing_pydensecrf_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    img, probs, _ = two_region_scene(h=4, w=4)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(img, probs)


def test_labels_to_probs_restricted_to_present_classes():
    y = np.array([[0, 0, 3], [3, 255, 3]])
    p = labels_to_probs(y, 5, confidence=0.8)
    assert p.shape == (5, 2, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-6)
    # absent classes get nothing
    assert (p[[1, 2, 4]] == 0).all()
    # labelled pixels: 0.8 on their class, 0.2 on the other present class
    np.testing.assert_allclose(p[:, 0, 0], [0.8, 0, 0, 0.2, 0], atol=1e-6)
    np.testing.assert_allclose(p[:, 1, 2], [0.2, 0, 0, 0.8, 0], atol=1e-6)
    # ignore pixel: uniform over present classes
    np.testing.assert_allclose(p[:, 1, 1], [0.5, 0, 0, 0.5, 0], atol=1e-6)
    # explicit allowed classes (e.g. bg + image-level labels)
    p2 = labels_to_probs(torch.from_numpy(y), 5, confidence=0.8, classes=[0, 2, 3])
    np.testing.assert_allclose(p2[:, 0, 0], [0.8, 0, 0.1, 0.1, 0], atol=1e-6)
    np.testing.assert_allclose(p2[:, 1, 1], [1 / 3, 0, 1 / 3, 1 / 3, 0], atol=1e-6)
    # single class present: certain
    np.testing.assert_allclose(labels_to_probs(np.full((2, 2), 4), 5)[4], 1.0)
    with pytest.raises(ValueError, match="not in classes"):
        labels_to_probs(y, 5, classes=[0, 2])
    with pytest.raises(ValueError, match="outside"):
        labels_to_probs(y, 3)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        labels_to_probs(y[None], 5)


def test_crf_refines_hard_labels_without_inventing_classes():
    img, _, truth = two_region_scene(h=24, w=40)
    rng = np.random.default_rng(1)
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    noisy[flip] = 1 - noisy[flip]
    noisy = np.where(noisy == 1, 7, 2)  # classes 2 and 7 of 10
    noisy[rng.random(truth.shape) < 0.05] = 255
    lab = crf_labels(img, labels_to_probs(noisy, 10))
    assert set(np.unique(lab)) <= {2, 7}
    assert (lab == np.where(truth == 1, 7, 2)).mean() > 0.98
