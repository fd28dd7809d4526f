"""Guided filter (Eqs. 6-10 of Ke & Hsu) against float64 references, OpenCV and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sgwsss.refine.guided_filter import GuidedFilter, box_sum, guide_statistics, guided_filter, window_counts
from sgwsss.refine.guided_filter_reference import reference_guided_filter


pytestmark = pytest.mark.usefixtures("cpu_path")  # both CPU paths: numba kernels and torch


# ----------------------------------------------------------------------------- references
def naive_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s filter by explicit window loops, float64. guide (C, H, W), src (H, W)."""
    guide = guide.astype(np.float64)
    src = src.astype(np.float64)
    c, h, w = guide.shape
    a = np.zeros((c, h, w))
    b = np.zeros((h, w))

    def window(y, x):
        return slice(max(y - radius, 0), min(y + radius + 1, h)), slice(max(x - radius, 0), min(x + radius + 1, w))

    for y in range(h):
        for x in range(w):
            ys, xs = window(y, x)
            iw = guide[:, ys, xs].reshape(c, -1)
            pw = src[ys, xs].reshape(-1)
            mu = iw.mean(1)
            centred = iw - mu[:, None]
            sigma = centred @ centred.T / pw.size
            cov = centred @ (pw - pw.mean()) / pw.size
            a[:, y, x] = np.linalg.solve(sigma + eps * np.eye(c), cov)
            b[y, x] = pw.mean() - a[:, y, x] @ mu
    q = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            ys, xs = window(y, x)
            q[y, x] = a[:, ys, xs].reshape(c, -1).mean(1) @ guide[:, y, x] + b[ys, xs].mean()
    return q


def kernel_matrix(guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Eq. 8 of Ke & Hsu written out, with clipped windows: K (N, N) such that G = K B (Eq. 7), N = H W.

    K_pq = 1/n_p sum over windows k containing p and q of 1/n_k (1 + (I_p - mu_k)^T (Sigma_k + eps U)^-1
    (I_q - mu_k)); with unclipped windows n_p = n_k = |w| and this is the paper's 1/|w|^2 sum.
    """
    guide = guide.astype(np.float64)
    c, h, w = guide.shape
    flat = guide.reshape(c, -1)
    kmat = np.zeros((h * w, h * w))
    counts = np.zeros(h * w)  # n_p: how many windows contain p
    for y in range(h):
        for x in range(w):
            ys, xs = np.mgrid[max(y - radius, 0):min(y + radius + 1, h), max(x - radius, 0):min(x + radius + 1, w)]
            members = (ys * w + xs).ravel()  # the pixels of window k = (y, x)
            iw = flat[:, members]
            mu = iw.mean(1)
            centred = iw - mu[:, None]
            inv = np.linalg.inv(centred @ centred.T / members.size + eps * np.eye(c))
            kmat[np.ix_(members, members)] += (1 + centred.T @ inv @ centred) / members.size
            counts[members] += 1
    return kmat / counts[:, None]


def _filter_np(guide: np.ndarray, maps: np.ndarray, radius: int, eps: float, dtype=torch.float64) -> np.ndarray:
    g = torch.from_numpy(guide)[None].to(dtype)
    p = torch.from_numpy(maps)[None].to(dtype)
    return guided_filter(g, p, radius, eps)[0].double().numpy()


# ----------------------------------------------------------------------------- box sums
@pytest.mark.parametrize("shape,radius", [((7, 9), 1), ((10, 12), 17), ((16, 5), 3), ((1, 1), 2)])
def test_box_sum_matches_explicit_window_sums(shape, radius):
    rng = np.random.default_rng(0)
    x = rng.random((2,) + shape)
    h, w = shape
    want = np.zeros_like(x)
    for y in range(h):
        for xx in range(w):
            want[:, y, xx] = x[:, max(y - radius, 0) : y + radius + 1, max(xx - radius, 0) : xx + radius + 1].sum((1, 2))
    got = box_sum(torch.from_numpy(x), radius).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    counts = window_counts(h, w, radius).numpy()
    np.testing.assert_array_equal(counts, box_sum(torch.ones(shape, dtype=torch.float64), radius).numpy())


def test_box_sum_float32_error_is_relative_to_the_window():
    # running sums of a 1 x 4000 row reach ~2000; the window sums stay ~18
    x = torch.rand(1, 4000, generator=torch.Generator().manual_seed(1))
    got = box_sum(x, 17).double()
    want = box_sum(x.double(), 17)
    assert (got - want).abs().max() < 2e-5


# ----------------------------------------------------------------------------- the float64 reference
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape,radius", [((10, 12), 17), ((13, 11), 2), ((9, 14), 4)])
def test_reference_matches_explicit_windows(channels, shape, radius):
    rng = np.random.default_rng(radius * 10 + channels)
    guide = rng.random((channels,) + shape)
    guide[:, : shape[0] // 2] = 0.5 + 0.001 * guide[:, : shape[0] // 2]
    src = (rng.random(shape) > 0.5).astype(np.float64)
    for eps in (1e-2, 1e-6):
        np.testing.assert_allclose(reference_guided_filter(guide, src, radius, eps),
                                   naive_guided_filter(guide, src, radius, eps), rtol=0, atol=1e-8)


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_is_the_kernel_of_eqs_7_8(channels):
    """He et al.'s closed form (the reference) equals G = K(I) B with the kernel K of Eq. 8."""
    rng = np.random.default_rng(channels)
    guide = rng.random((channels, 7, 9))
    src = (rng.random((7, 9)) > 0.4).astype(np.float64)
    kmat = kernel_matrix(guide, 2, 1e-3)
    np.testing.assert_allclose(kmat @ src.ravel(), reference_guided_filter(guide, src, 2, 1e-3).ravel(), atol=1e-12)
    np.testing.assert_allclose(kmat.sum(1), 1.0, atol=1e-12)  # constants are preserved


# ----------------------------------------------------------------------------- exact references
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("eps", [1e-2, 1e-6])
@pytest.mark.parametrize("shape,radius", [((10, 12), 17), ((13, 11), 2), ((15, 17), 4)])
def test_matches_naive_reference_float64(channels, eps, shape, radius):
    rng = np.random.default_rng(radius + channels)
    guide = rng.random((channels,) + shape)
    # a smooth-ish guide region plus a step: both well- and ill-conditioned windows
    guide[:, : shape[0] // 2] = 0.5 + 0.001 * guide[:, : shape[0] // 2]
    maps = np.stack([rng.random(shape), (rng.random(shape) > 0.5).astype(np.float64)])
    got = _filter_np(guide, maps, radius, eps)
    want = np.stack([naive_guided_filter(guide, m, radius, eps) for m in maps])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("channels", [1, 3])
def test_float32_matches_naive_reference(channels):
    rng = np.random.default_rng(7)
    guide = rng.random((channels, 20, 23)).astype(np.float32)
    maps = rng.random((3, 20, 23)).astype(np.float32)
    got = _filter_np(guide, maps, 5, 1e-2, dtype=torch.float32)
    want = np.stack([naive_guided_filter(guide, m, 5, 1e-2) for m in maps])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_maps_are_filtered_independently_and_batches_match():
    g = torch.Generator().manual_seed(3)
    guide = torch.rand(2, 3, 31, 29, generator=g)
    src = torch.rand(2, 5, 31, 29, generator=g)
    gf = GuidedFilter(guide, 4, 1e-3, max_maps=3)  # chunked: 1 map per block with B = 2
    together = gf(src)
    for b in range(2):
        single = GuidedFilter(guide[b : b + 1], 4, 1e-3)
        for k in range(5):
            torch.testing.assert_close(single(src[b : b + 1, k : k + 1])[0, 0], together[b, k], rtol=0, atol=1e-6)
    # repeated calls reuse the scratch buffers and give identical results
    torch.testing.assert_close(gf(src), together, rtol=0, atol=0)


def test_skip_constant_is_exact_on_binary_maps():
    g = torch.Generator().manual_seed(4)
    guide = torch.rand(1, 3, 90, 100, generator=g)
    src = torch.zeros(1, 3, 90, 100)
    src[0, 0, 40:50, 45:60] = 1  # small object: most of the image is skipped
    src[0, 1, 5:20, 80:] = 1  # touches the border
    src[0, 2] = 1  # constant map
    gf = GuidedFilter(guide, 5, 1e-6)
    full = gf(src)
    skipped = gf(src, skip_constant=True)
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-5)
    # bool masks are filtered as 0/1 float32 maps
    torch.testing.assert_close(gf(src > 0.5), full, rtol=0, atol=0)
    torch.testing.assert_close(gf(src > 0.5, skip_constant=True), skipped, rtol=0, atol=0)
    assert torch.equal(skipped[0, 0, :10], src[0, 0, :10])  # far from the object: exactly the input
    everything_constant = torch.full((1, 2, 90, 100), 0.25)
    assert torch.equal(gf(everything_constant, skip_constant=True), everything_constant)


def test_constant_map_is_preserved():
    guide = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(5))
    q = guided_filter(guide, torch.full((1, 1, 20, 30), 0.7), 17, 1e-6)
    torch.testing.assert_close(q, torch.full_like(q, 0.7), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- gradients (Eqs. 9-10)
@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck_float64(channels):
    g = torch.Generator().manual_seed(channels)
    guide = torch.rand(1, channels, 6, 7, generator=g, dtype=torch.float64)
    src = torch.rand(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    gf = GuidedFilter(guide, 2, 1e-2)
    assert torch.autograd.gradcheck(gf, (src,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(gf, (src,), eps=1e-6, atol=1e-8)


def test_gradient_matches_autograd_through_reference_ops():
    # dq/dp of the float64 filter equals the transpose of its matrix (built column by column)
    g = torch.Generator().manual_seed(11)
    guide = torch.rand(1, 3, 5, 6, generator=g, dtype=torch.float64)
    gf = GuidedFilter(guide, 1, 1e-3)
    n = 5 * 6
    eye = torch.eye(n, dtype=torch.float64).view(n, 1, 5, 6)
    matrix = torch.cat([gf(e[None]).reshape(1, n) for e in eye]).T  # column j = filter(e_j)
    src = torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64)
    (gf(src) * weight).sum().backward()
    torch.testing.assert_close(src.grad.reshape(n), matrix.T @ weight.reshape(n))


# ----------------------------------------------------------------------------- OpenCV
def test_matches_opencv_interior_when_well_conditioned():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:64, 0:80] / 80.0
    guide = np.stack([np.sin(6 * xx) * 0.4 + 0.5, yy, (xx > 0.5) * 0.6 + 0.2]).astype(np.float32)
    guide += 0.05 * rng.random(guide.shape).astype(np.float32)
    src = (rng.random((64, 80)) > 0.6).astype(np.float32)
    r, eps = 4, 1e-2
    ours = _filter_np(guide, src[None], r, eps, dtype=torch.float32)[0]
    theirs = cv2.ximgproc.guidedFilter(np.ascontiguousarray(guide.transpose(1, 2, 0)), src, r, eps)
    inner = (slice(2 * r, -2 * r), slice(2 * r, -2 * r))
    np.testing.assert_allclose(ours[inner], theirs[inner], rtol=0, atol=2e-5)
    # at the border OpenCV reflects the image instead of clipping the windows
    assert np.abs(ours - theirs)[:r].max() > 1e-3


# ----------------------------------------------------------------------------- real VOC image
def _voc_example(voc_root, index):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    name = ids[index]
    image = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float32) / 255
    mask = np.array(Image.open(voc / "SegmentationClassAug" / f"{name}.png"))
    return image, mask


@pytest.mark.parametrize("index", [0, 11])
def test_voc_image_eps_1e6_within_1e4_of_float64(voc_root, index):
    from scipy.ndimage import gaussian_filter

    image, mask = _voc_example(voc_root, index)
    classes = [c for c in np.unique(mask) if 0 < c < 255]
    binary = np.stack([(mask == c) for c in classes[:2]]).astype(np.float32)
    maps = np.concatenate([binary, gaussian_filter(binary, (0, 8, 8))]).astype(np.float32)
    guide = np.ascontiguousarray(image.transpose(2, 0, 1))
    got = _filter_np(guide, maps, 17, 1e-6, dtype=torch.float32)
    want = np.stack([reference_guided_filter(guide, m, 17, 1e-6) for m in maps])
    err = np.abs(got - want).max()
    assert err < 1e-4, err
    # skipping constant neighbourhoods keeps the accuracy on binary maps
    gf = GuidedFilter(torch.from_numpy(guide)[None], 17, 1e-6)
    skipped = gf(torch.from_numpy(binary)[None], skip_constant=True)[0].double().numpy()
    assert np.abs(skipped - want[: len(binary)]).max() < 1e-4


def test_guide_statistics_match_float64_windows():
    rng = np.random.default_rng(2)
    guide = rng.random((1, 3, 9, 11))
    st = guide_statistics(torch.from_numpy(guide), 3, 1e-3)
    y, x = 4, 2
    win = guide[0, :, 1:8, 0:6].reshape(3, -1)
    mu = win.mean(1)
    sigma = np.cov(win, bias=True) + 1e-3 * np.eye(3)
    inv = np.linalg.inv(sigma)
    np.testing.assert_allclose(st.mean[0, :, y, x].numpy(), mu, rtol=1e-12)
    packed = [inv[0, 0], inv[0, 1], inv[0, 2], inv[1, 1], inv[1, 2], inv[2, 2]]
    np.testing.assert_allclose(st.inverse[0, :, y, x].numpy(), packed, rtol=1e-9)


def test_backends_agree_and_report_their_choice(cpu_path):
    g = torch.Generator().manual_seed(9)
    guide = torch.rand(1, 3, 40, 50, generator=g)
    src = torch.rand(1, 2, 40, 50, generator=g)
    auto = GuidedFilter(guide, 6, 1e-6)
    assert auto.backend == cpu_path
    want = GuidedFilter(guide.double(), 6, 1e-6, backend="torch")(src.double())
    torch.testing.assert_close(auto(src).double(), want, rtol=0, atol=2e-5)
    assert GuidedFilter(guide, 6, 1e-6, backend="torch").backend == "torch"
    if cpu_path == "torch":  # numba "missing": asking for it is a clear error
        with pytest.raises(RuntimeError, match="numba is not installed"):
            GuidedFilter(guide, 6, 1e-6, backend="numba")
    with pytest.raises(ValueError, match="backend must be one of"):
        GuidedFilter(guide, 6, 1e-6, backend="fast")


# ----------------------------------------------------------------------------- errors
def test_argument_errors():
    guide = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="guide must have shape"):
        GuidedFilter(torch.rand(1, 2, 8, 8))
    with pytest.raises(TypeError, match="guide must be a floating"):
        GuidedFilter(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="radius"):
        GuidedFilter(guide, radius=-1)
    with pytest.raises(ValueError, match="eps"):
        GuidedFilter(guide, eps=0)
    gf = GuidedFilter(guide, 2)
    with pytest.raises(ValueError, match=r"src must have shape \(1, K, 8, 8\)"):
        gf(torch.rand(1, 2, 8, 9))
    with pytest.raises(ValueError, match="src must have shape"):
        gf(torch.rand(2, 2, 8, 8))
    with pytest.raises(TypeError, match="src must be a floating"):
        gf(torch.ones(1, 2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 2 dims"):
        box_sum(torch.rand(5), 1)


# ----------------------------------------------------------------------------- the function and its cache
def test_function_is_the_operator_and_the_class_its_cache():
    g = torch.Generator().manual_seed(12)
    guide = torch.rand(2, 3, 30, 40, generator=g)
    src = torch.rand(2, 3, 30, 40, generator=g)
    gf = GuidedFilter(guide, 5, 1e-4)
    want = guided_filter(guide, src, 5, 1e-4)
    assert torch.equal(gf(src), want)
    assert torch.equal(guided_filter(guide, src, 5, 1e-4, statistics=gf.stats), want)
    assert torch.equal(guided_filter(guide, src > 0.5, 5, 1e-4, skip_constant=True), gf(src > 0.5, skip_constant=True))
    with pytest.raises(ValueError, match="statistics were computed with radius=5"):
        guided_filter(guide, src, 4, 1e-4, statistics=gf.stats)


# ----------------------------------------------------------------------------- non-finite inputs (issue 16)
def _nan_case(shape=(1, 3, 40, 50)):
    g = torch.Generator().manual_seed(13)
    return torch.rand(*shape, generator=g), torch.rand(1, 2, *shape[2:], generator=g)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_src_is_rejected(bad):
    guide, src = _nan_case()
    src[0, 1, 20, 25] = bad  # one pixel: it would spoil the whole map
    with pytest.raises(ValueError, match="src must be finite"):
        guided_filter(guide, src, 17, 1e-6)
    with pytest.raises(ValueError, match="src must be finite"):
        GuidedFilter(guide, 17, 1e-6)(src, skip_constant=True)
    flat = torch.full((1, 1, 40, 50), bad)  # constant: skip_constant would not even read it
    with pytest.raises(ValueError, match="src must be finite"):
        GuidedFilter(guide, 5, 1e-6)(flat, skip_constant=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_guide_is_rejected(bad):
    guide, src = _nan_case()
    guide[0, 2, 0, 49] = bad
    with pytest.raises(ValueError, match="guide must be finite"):
        guided_filter(guide, src, 17, 1e-6)
    with pytest.raises(ValueError, match="guide must be finite"):
        guide_statistics(guide.double(), 3, 1e-3)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), 0.0, -1e-3, "1e-6x"])
def test_eps_must_be_a_finite_positive_number(eps):
    guide, src = _nan_case()
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        guided_filter(guide, src, 17, eps)


@pytest.mark.parametrize("channels,eps", [(3, 1e-120), (1, 1e-320)])
def test_eps_too_small_to_invert_is_an_error(channels, eps):
    # flat guide: Sigma_k = 0, so det(Sigma_k + eps U) = eps^3 underflows (colour), 1 / eps overflows (grey)
    guide = torch.full((1, channels, 20, 20), 0.5)
    with pytest.raises(ValueError, match=f"eps={eps!r} is too small"):
        GuidedFilter(guide, 3, eps)
    src = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    # with an eps that works, a flat guide makes a_k = 0 and the filter the window mean applied twice
    n = window_counts(20, 20, 3).float()
    torch.testing.assert_close(GuidedFilter(guide, 3, 1e-6)(src), box_sum(box_sum(src, 3) / n, 3) / n)


def test_threads_give_the_same_result(voc_root):
    """The numba path splits the rows into one band per thread (each with a 2r halo): the result does not
    depend on the thread count."""
    image, mask = _voc_example(voc_root, 2)
    guide = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    src = torch.from_numpy(np.stack([mask == c for c in np.unique(mask)[:2]]))[None]
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(guided_filter(guide, src, 17, 1e-6))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)
