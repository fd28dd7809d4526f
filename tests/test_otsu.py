"""Batched Otsu thresholds must equal skimage.filters.threshold_otsu exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import threshold_otsu

from sgwsss.refine.otsu import binarize, otsu_threshold


pytestmark = pytest.mark.usefixtures("cpu_path")  # both CPU paths: numba kernels and torch


def _assert_same_as_skimage(maps: np.ndarray, nbins: int = 256) -> None:
    got = otsu_threshold(torch.from_numpy(maps), nbins=nbins).numpy()
    assert got.shape == maps.shape[:2]
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            want = threshold_otsu(maps[b, k], nbins=nbins)
            assert got[b, k] == want, (b, k, got[b, k], want)
            assert got.dtype == np.asarray(want).dtype


def _random_maps(kind: str, rng, shape):
    if kind == "uniform":
        return rng.random(shape).astype(np.float32)
    if kind == "bimodal":
        lo = rng.normal(0.25, 0.06, shape)
        hi = rng.normal(0.7, 0.1, shape)
        return np.where(rng.random(shape) < 0.35, hi, lo).astype(np.float32)
    if kind == "quantised":  # many pixels exactly on bin edges
        return (rng.integers(0, 9, shape) / 8).astype(np.float32)
    if kind == "wide_float64":
        return rng.normal(3.0, 1e3, shape)
    if kind == "offset":  # large offset, small spread (bins still wider than one float32 step)
        return (1000.0 + 0.1 * rng.random(shape)).astype(np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["uniform", "bimodal", "quantised", "wide_float64", "offset"])
def test_equals_skimage_on_many_maps(kind):
    rng = np.random.default_rng(["uniform", "bimodal", "quantised", "wide_float64", "offset"].index(kind))
    maps = _random_maps(kind, rng, (3, 7, 33, 41))
    _assert_same_as_skimage(maps)


@pytest.mark.parametrize("nbins", [2, 17, 256])
def test_equals_skimage_for_other_bin_counts_and_flat_maps(nbins):
    rng = np.random.default_rng(nbins)
    maps = _random_maps("bimodal", rng, (2, 4, 1, 500))  # (B, K, H, W) with H = 1
    _assert_same_as_skimage(maps, nbins=nbins)
    flat = torch.from_numpy(maps).flatten(2)  # (B, K, N) input
    np.testing.assert_array_equal(
        otsu_threshold(flat, nbins=nbins).numpy(), otsu_threshold(torch.from_numpy(maps), nbins=nbins).numpy()
    )


def test_equals_skimage_on_real_looking_maps(voc_root):
    """Grey VOC photographs and blurred ground-truth masks (the maps the refinement sees)."""
    from scipy.ndimage import gaussian_filter

    voc = voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:3]
    maps = []
    for name in ids:
        grey = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("L"), dtype=np.float32) / 255
        mask = np.array(Image.open(voc / "SegmentationClassAug" / f"{name}.png"))
        obj = ((mask > 0) & (mask < 255)).astype(np.float32)
        h, w = 128, 160
        maps += [grey[:h, :w], gaussian_filter(obj, 6)[:h, :w], (0.3 * obj + 0.05 * grey)[:h, :w]]
    _assert_same_as_skimage(np.stack(maps)[None].astype(np.float32))


def test_constant_maps_return_their_value_without_nan():
    maps = torch.zeros(2, 3, 5, 6)
    maps[0, 1] = 0.4
    maps[1, 2] = torch.rand(5, 6)
    t = otsu_threshold(maps)
    assert not torch.isnan(t).any()
    assert t[0, 0] == 0 and t[0, 1] == pytest.approx(0.4) and t[1, 0] == 0
    assert t[1, 2] == threshold_otsu(maps[1, 2].numpy())
    # nothing is above a constant map's threshold
    assert binarize(maps)[0, :2].sum() == 0
    single = torch.full((1, 1, 1, 1), 3.0)
    assert otsu_threshold(single).item() == 3.0


def test_binarize_matches_skimage_threshold():
    rng = np.random.default_rng(5)
    maps = _random_maps("bimodal", rng, (2, 3, 20, 24))
    b = binarize(torch.from_numpy(maps)).numpy()
    for i in range(2):
        for k in range(3):
            np.testing.assert_array_equal(b[i, k], (maps[i, k] > threshold_otsu(maps[i, k])).astype(np.float32))
    with pytest.raises(ValueError, match="thresholds"):
        binarize(torch.from_numpy(maps), torch.zeros(2, 2))


def test_argument_errors():
    with pytest.raises(TypeError, match="floating"):
        otsu_threshold(torch.ones(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        otsu_threshold(torch.rand(4, 4))
    with pytest.raises(ValueError, match="nbins"):
        otsu_threshold(torch.rand(1, 1, 4, 4), nbins=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        otsu_threshold(np.zeros((1, 1, 4, 4)))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["bimodal", "quantised", "wide_float64"])
def test_large_maps_split_over_threads_match_skimage(kind, threads):
    """Maps of VOC size: the CPU kernels split each map's range and histogram into pieces per thread."""
    from sgwsss.refine import _cpu_kernels

    if not _cpu_kernels.available():
        pytest.skip("numba not installed")
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        rng = np.random.default_rng(7)
        maps = _random_maps(kind, rng, (1, 2, 333, 401))
        maps[0, 0, -1, -1] = maps[0, 0].max() + 1  # the maximum in the last piece
        maps[0, 1, 0, 0] = maps[0, 1].min() - 1  # the minimum in the first piece
        _assert_same_as_skimage(maps[:, :1])  # one map: split into pieces
        _assert_same_as_skimage(maps)
        lo, hi = _cpu_kernels.minmax(maps.reshape(2, -1))
        np.testing.assert_array_equal(lo, maps.reshape(2, -1).min(axis=1))
        np.testing.assert_array_equal(hi, maps.reshape(2, -1).max(axis=1))
    finally:
        numba.set_num_threads(before)


# ----------------------------------------------------------------------------- non-finite maps (issue 16)
@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_maps_are_rejected(bad, dtype):
    maps = torch.rand(2, 3, 30, 40, generator=torch.Generator().manual_seed(3), dtype=dtype)
    maps[1, 2, 7, 9] = bad  # one +Inf pixel used to return NaN, so the class vanished
    with pytest.raises(ValueError, match=r"maps must be finite: map \(1, 2\)"):
        otsu_threshold(maps)
    with pytest.raises(ValueError, match="maps must be finite"):
        binarize(maps)


# ----------------------------------------------------------------------------- the compiled search
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_search_is_bit_identical_to_numpy(dtype):
    """The fused refinement's Otsu search (numba) returns exactly what the numpy search returns."""
    from sgwsss.refine import _cpu_kernels
    from sgwsss.refine.otsu import _otsu_from_histograms

    if not _cpu_kernels.available():
        pytest.skip("numba not installed")
    rng = np.random.default_rng(11)
    for trial in range(200):
        nbins = int(rng.choice([2, 3, 17, 256]))
        counts = rng.integers(0, [1, 5, 1000, 200000][trial % 4], nbins)
        counts[0] += 1
        counts[-1] += 1  # as in a histogram over [min, max]
        lo, hi = sorted(rng.normal(0, [1, 1e-3, 1e3][trial % 3], 2).astype(dtype))
        hi = hi if hi > lo else lo + dtype(1)
        edges = np.linspace(lo, hi, nbins + 1, dtype=dtype)
        want = _otsu_from_histograms(counts[None], edges[None])[0]
        got = _cpu_kernels.otsu_search(counts, edges)
        assert got == want, (trial, got, want)  # numba returns a Python float holding the value exactly
