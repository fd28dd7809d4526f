"""The paired bootstrap of a difference in mIoU (sgwsss.evaluate.bootstrap), against a naive loop
that resamples with the same generator and scores with metrics.mean_iou, and hand-made cases."""
import numpy as np
import pytest

from sgwsss.evaluate.bootstrap import BootstrapResult, miou_batch, paired_bootstrap, verdict
from sgwsss.evaluate.metrics import mean_iou


def _confusions(rng, n, c, extra_tp=0):
    """Random per-image confusion matrices; ``extra_tp`` adds correct pixels on the diagonal."""
    conf = rng.integers(0, 40, size=(n, c, c))
    conf[:, 3, :] = 0  # class 3 is in no image's ground truth ...
    conf[:, :, 3] = 0
    conf[7, 0, 3] = 9  # ... and predicted in image 7 only: its union is zero in resamples without it
    if extra_tp:
        conf[:, np.arange(c), np.arange(c)] += rng.integers(0, extra_tp, size=(n, c))
    return conf


def _naive(conf_a, conf_b, n_resamples, seed, confidence=0.95):
    """One resample at a time, with metrics.mean_iou on the summed confusion matrices."""
    n = len(conf_a)
    ids = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    deltas = [mean_iou(conf_a[row].sum(axis=0)) - mean_iou(conf_b[row].sum(axis=0)) for row in ids]
    tail = (1 - confidence) / 2
    return (mean_iou(conf_a.sum(axis=0)) - mean_iou(conf_b.sum(axis=0)),
            *np.quantile(deltas, [tail, 1 - tail]))


def test_miou_batch_matches_mean_iou_per_matrix():
    rng = np.random.default_rng(0)
    conf = _confusions(rng, 12, 6)
    conf[2] = 0  # no class at all: NaN, as mean_iou
    expected = [mean_iou(m) for m in conf]
    np.testing.assert_allclose(miou_batch(conf), expected, rtol=0, atol=1e-12)
    assert np.isnan(miou_batch(conf)[2])


@pytest.mark.parametrize("seed", [0, 7])
def test_paired_bootstrap_matches_a_naive_loop(seed):
    rng = np.random.default_rng(100 + seed)
    a = _confusions(rng, 23, 6, extra_tp=30)
    b = _confusions(rng, 23, 6)
    got = paired_bootstrap(a, b, n_resamples=300, seed=seed)
    delta, low, high = _naive(a, b, 300, seed)
    assert got.delta == pytest.approx(delta, abs=1e-12)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert (got.n_images, got.n_resamples, got.confidence) == (23, 300, 0.95)


def test_paired_bootstrap_accepts_a_generator_and_a_confidence_level():
    rng = np.random.default_rng(3)
    a, b = _confusions(rng, 15, 5, extra_tp=10), _confusions(rng, 15, 5)
    got = paired_bootstrap(a, b, n_resamples=1500, confidence=0.8, seed=np.random.default_rng(11))
    _, low, high = _naive(a, b, 1500, np.random.default_rng(11), confidence=0.8)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    wider = paired_bootstrap(a, b, n_resamples=1500, confidence=0.99, seed=np.random.default_rng(11))
    assert wider.low < got.low < got.high < wider.high


def test_the_pairing_is_what_narrows_the_interval():
    """B is A plus a little noise: paired, the difference is tight and of one sign; the images'
    own spread (which pairing cancels) is far larger than the interval."""
    rng = np.random.default_rng(5)
    a = _confusions(rng, 40, 5, extra_tp=200)
    b = a.copy()
    b[:, 1, 2] += rng.integers(5, 10, size=40)  # B confuses class 1 for 2 a little more, on every image
    r = paired_bootstrap(a, b, n_resamples=1000, seed=1)
    per_image = miou_batch(a) - miou_batch(b)
    assert r.low > 0 and r.verdict("greater") == "supported" and r.verdict("less") == "contradicted"
    assert r.high - r.low < 0.5 * miou_batch(a).std()
    assert r.low <= r.delta <= r.high and (per_image > 0).all()


def test_identical_methods_give_the_zero_interval():
    conf = _confusions(np.random.default_rng(1), 30, 4)
    r = paired_bootstrap(conf, conf.copy(), n_resamples=500, seed=2)
    assert (r.delta, r.low, r.high) == (0.0, 0.0, 0.0)
    assert r.verdict("greater") == r.verdict("less") == "not resolved"


def test_a_method_better_on_every_image_excludes_zero():
    rng = np.random.default_rng(4)
    n, c = 25, 3
    truth = rng.integers(10, 100, size=(n, c))
    perfect = np.zeros((n, c, c), dtype=np.int64)
    perfect[:, np.arange(c), np.arange(c)] = truth
    worse = perfect.copy()
    worse[:, 0, 0] -= 5  # 5 background pixels of every image called class 1
    worse[:, 0, 1] += 5
    r = paired_bootstrap(worse, perfect, n_resamples=1000, seed=0)
    assert r.high < 0 and r.delta < 0
    assert r.verdict("less") == "supported" and r.verdict("greater") == "contradicted"


def test_verdict_follows_the_interval_only():
    assert verdict(0.001, 0.02, "greater") == "supported"
    assert verdict(0.001, 0.02, "less") == "contradicted"
    assert verdict(-0.02, -0.001, "less") == "supported"
    assert verdict(-0.01, 0.02, "greater") == "not resolved"
    assert verdict(0.0, 0.02, "greater") == "not resolved"  # touching 0 resolves nothing
    assert BootstrapResult(0.01, -0.01, 0.03, 0.95, 10, 100).verdict("greater") == "not resolved"
    with pytest.raises(ValueError, match="claim"):
        verdict(0.1, 0.2, ">")


@pytest.mark.parametrize("a, b, match", [
    (np.ones((4, 3, 3)), np.ones((5, 3, 3)), "same images"),
    (np.ones((4, 3, 2)), np.ones((4, 3, 2)), r"conf_a must hold per-image \(N, C, C\)"),
    (np.ones((0, 3, 3)), np.ones((0, 3, 3)), "conf_a holds no image"),
    (np.ones((4, 3, 3)), -np.ones((4, 3, 3)), "conf_b must hold non-negative"),
    (np.ones((4, 3, 3)), np.zeros((4, 3, 3)), "conf_b counts no pixel"),
])
def test_bad_input_names_the_argument(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, n_resamples=10)


def test_bad_settings_are_named():
    a = np.ones((4, 3, 3))
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(a, a, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(a, a, confidence=95)
