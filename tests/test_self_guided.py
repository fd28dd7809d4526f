"""The self-guided refinement's two paths (fused numba kernels, torch) against a reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import threshold_otsu

from sgwsss.refine import _cpu_kernels
from sgwsss.refine.guided_filter import guided_filter
from sgwsss.refine.self_guided import TIMING_PARTS, self_guided_refine

pytestmark = pytest.mark.usefixtures("cpu_path")  # both CPU paths: fused numba kernels and torch


def _reference(image, maps, iterations, radius, eps, feedback="binary", threshold=None):
    """skimage's Otsu (or a fixed threshold) + the (separately tested) guided filter, one map at a time."""
    out = np.zeros(maps.shape, np.float32)
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            q = maps[b, k].numpy()
            for t in range(iterations):
                if t == 0 or feedback == "binary":
                    q = (q > (threshold_otsu(q) if threshold is None else threshold)).astype(np.float32)
                src = torch.from_numpy(q)[None, None]
                q = guided_filter(image[b : b + 1], src, radius, eps, backend="torch")[0, 0].numpy()
            out[b, k] = q
    return torch.from_numpy(out)


def _scene(seed, h=90, w=120, k=3):
    """A guide with edges and k blobs of different sizes (small ones exercise the skip_constant crops)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=g) * 0.2
    image[:, :, 20:60, 30:70] += 0.6
    image[:, 1, :, 90:] += 0.3
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    centres = [(40, 50, 150), (15, 100, 40), (70, 20, 400)]
    maps = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / s) for cy, cx, s in centres[:k]])[None]
    return image, maps + 0.05 * torch.rand(maps.shape, generator=g)


@pytest.mark.parametrize("split", ["0", "1"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_reference_loop_for_1_to_3_maps_and_threads(threads, k, split, monkeypatch):
    """1-3 maps at 1 and 2 threads: one map per thread, and (split) a leftover map in bands over the threads."""
    monkeypatch.setenv("SGWSSS_SPLIT_MAPS", split)
    image, maps = _scene(k, k=k)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for skip in (True, False):
            got = self_guided_refine(image, maps, iterations=4, radius=5, eps=1e-4, skip_constant=skip)
            torch.testing.assert_close(got, _reference(image, maps, 4, 5, 1e-4), rtol=0, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("feedback,threshold", [("binary", 0.4), ("filtered", None), ("filtered", 0.3)])
def test_feedback_modes_and_fixed_threshold_match_reference(feedback, threshold):
    image, maps = _scene(7)
    got = self_guided_refine(image, maps, iterations=3, radius=6, eps=1e-3, feedback=feedback, threshold=threshold)
    want = _reference(image, maps, 3, 6, 1e-3, feedback, threshold)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_constant_and_saturated_maps():
    """All-zero maps stay 0; an all-ones mask is constant, so its next Otsu threshold (its value) empties it."""
    image, maps = _scene(8, k=3)
    maps[0, 0] = 0.0
    maps[0, 1] = 1.0
    maps[0, 2] = torch.where(maps[0, 2] > 0.2, 1.0, 0.9)  # two values: the mask is the blob
    for iterations in (1, 2, 3):
        got = self_guided_refine(image, maps, iterations=iterations, radius=5, eps=1e-4)
        want = _reference(image, maps, iterations, 5, 1e-4)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert got[0, 0].abs().max() == 0 and got[0, 1].abs().max() == 0
    low = self_guided_refine(image, maps, iterations=2, radius=5, eps=1e-4, threshold=-1.0)  # every pixel above
    torch.testing.assert_close(low[0, :2], torch.ones_like(low[0, :2]), rtol=0, atol=1e-5)


def test_voc_image_15_iterations_paths_agree(voc_root, cpu_path):
    """G-iter15 at the paper's settings on a real photograph: within 1e-4 of the torch path (the masks agree)."""
    voc = voc_root / "VOCdevkit" / "VOC2012"
    name = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[3]
    image = torch.from_numpy(np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"),
                                        dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    mask = torch.from_numpy(np.array(Image.open(voc / "SegmentationClassAug" / f"{name}.png")).astype(np.int64))
    classes = [c for c in mask.unique().tolist() if 0 < c < 255][:2]
    maps = torch.zeros(1, 20, *mask.shape)
    labels = torch.zeros(1, 20)
    for c in classes:
        blurred = torch.nn.functional.avg_pool2d((mask == c).float()[None, None], 31, 1, 15, count_include_pad=False)
        maps[0, c - 1] = blurred[0, 0]
        labels[0, c - 1] = 1
    timings = {}
    got = self_guided_refine(image, maps, iterations=15, labels=labels, timings=timings)
    assert set(timings) == set(TIMING_PARTS) and all(v >= 0 for v in timings.values())
    if cpu_path == "numba":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_cpu_kernels, "available", lambda: False)
            want = self_guided_refine(image, maps, iterations=15, labels=labels)
        assert (got - want).abs().max() < 1e-4
    assert got[labels == 0].abs().max() == 0
    assert ((got[labels != 0] > 0.5).float().mean() - 0.5).abs() < 0.5  # not empty, not everything


# ----------------------------------------------------------------------------- non-finite inputs (issue 16)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_image_and_maps_are_rejected(bad):
    image, maps = _scene(9, k=2)
    labels = torch.tensor([[1.0, 0.0]])
    broken = image.clone()
    broken[0, 1, 5, 7] = bad  # one image pixel used to turn the whole refined map into NaN
    with pytest.raises(ValueError, match="image must be finite"):
        self_guided_refine(broken, maps, iterations=2, radius=5, eps=1e-4)
    broken = maps.clone()
    broken[0, 0, 40, 50] = bad
    with pytest.raises(ValueError, match=r"maps must be finite: map \(b, c\) = \(0, 0\)"):
        self_guided_refine(image, broken, iterations=2, radius=5, eps=1e-4, labels=labels)
    with pytest.raises(ValueError, match="maps must be finite"):  # a fixed threshold reads the map too
        self_guided_refine(image, broken, iterations=1, radius=5, eps=1e-4, labels=labels, threshold=0.5)
    broken = maps.clone()
    broken[0, 1] = bad  # an absent class's map is not read: documented, and its output is 0
    out = self_guided_refine(image, broken, iterations=2, radius=5, eps=1e-4, labels=labels)
    assert torch.isfinite(out).all() and out[0, 1].abs().max() == 0


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), 0.0, -1.0])
def test_eps_and_threshold_must_be_finite(eps):
    image, maps = _scene(10, k=1)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        self_guided_refine(image, maps, eps=eps)
    with pytest.raises(ValueError, match="threshold must be None"):
        self_guided_refine(image, maps, threshold=float("nan"))


def test_map_whose_range_is_below_float32_resolution():
    """A map spanning only a few float32 steps (a smoke run's map of a class it never saw: 0.5285053..0.5285076)
    leaves Otsu's end bins empty. numpy gives 0/0 = NaN there and argmax takes the first NaN (skimage itself
    refuses such a map: "Too many bins for data range"); the fused kernel used to raise ZeroDivisionError inside
    numba. It now gives what sgwsss.refine.otsu's numpy search gives, then filters as the reference loop."""
    from sgwsss.refine.otsu import otsu_threshold

    image, _ = _scene(9, k=1)
    lo = np.float32(0.5285053)
    steps = np.arange(image.shape[-1], dtype=np.float32) % 20
    row = np.array([np.nextafter(lo, np.float32(1)) if s == 0 else lo for s in steps], np.float32)
    q = np.tile(row + np.float32(2.4e-6) * (steps / 19).astype(np.float32), (image.shape[-2], 1)).astype(np.float32)
    maps = torch.from_numpy(q)[None, None]
    t = float(otsu_threshold(maps)[0, 0])
    src = (maps > t).float()
    want = guided_filter(image, src, 4, 1e-6, backend="torch")
    got = self_guided_refine(image, maps, iterations=1, radius=4, eps=1e-6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
