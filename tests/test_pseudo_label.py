"""Pseudo labels from refined maps (Eq. 11 of Ke & Hsu) on hand-made maps."""

from __future__ import annotations

import pytest
import torch

from sgwsss.refine.pseudo_label import pseudo_label


def _maps(c=4, h=6, w=8):
    return torch.zeros(1, c, h, w)


def test_two_classes_background_and_argmax_on_overlap():
    refined = _maps()
    refined[0, 1, :, :4] = 0.9  # class 2 on the left half
    refined[0, 2, :, 3:6] = 0.6  # class 3 overlaps column 3, weaker there
    refined[0, 2, 0, 3] = 0.95  # ... except one pixel where it is stronger
    labels = torch.tensor([[0, 1, 1, 0]])
    got = pseudo_label(refined, labels)
    want = torch.zeros(1, 6, 8, dtype=torch.int64)
    want[0, :, :4] = 2
    want[0, :, 4:6] = 3
    want[0, 0, 3] = 3
    assert got.dtype == torch.int64
    assert torch.equal(got, want)


def test_absent_classes_never_appear():
    refined = _maps()
    refined[0, 0] = 1.0  # absent, strong everywhere
    refined[0, 0, 0, 0] = 0.0
    refined[0, 3, 2:4, 2:4] = 0.2  # present, weak
    got = pseudo_label(refined, torch.tensor([[0, 0, 0, 1]]))
    want = torch.zeros(1, 6, 8, dtype=torch.int64)
    want[0, 2:4, 2:4] = 4
    assert torch.equal(got, want)


def test_no_present_class_is_all_background():
    refined = torch.rand(2, 3, 5, 5)
    assert torch.equal(pseudo_label(refined, torch.zeros(2, 3)), torch.zeros(2, 5, 5, dtype=torch.int64))


def test_threshold_is_otsu_per_class_and_constant_maps_do_not_fire():
    refined = _maps(c=2, h=1, w=10)
    refined[0, 0, 0] = torch.tensor([0.0, 0.1, 0.1, 0.2, 0.7, 0.8, 0.8, 0.9, 0.9, 1.0])
    refined[0, 1] = 0.5  # present but constant: never above its own threshold
    got = pseudo_label(refined, torch.tensor([[1, 1]]))
    assert got.tolist() == [[[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]]


def test_batch_items_are_independent():
    refined = torch.zeros(2, 2, 4, 4)
    refined[0, 0, :2] = 1
    refined[1, 0, :2] = 1
    refined[1, 1, 2:] = 1
    got = pseudo_label(refined, torch.tensor([[1, 0], [1, 1]]))
    assert got[0].unique().tolist() == [0, 1]
    assert torch.equal(got[1, 2:], torch.full((2, 4), 2))
    assert torch.equal(got[0, 2:], torch.zeros(2, 4, dtype=torch.int64))


def test_argument_errors():
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 4\)"):
        pseudo_label(_maps(), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"refined must have shape \(B, C, H, W\)"):
        pseudo_label(torch.rand(4, 6, 8), torch.ones(1, 4))
    with pytest.raises(TypeError, match="refined must be a floating"):
        pseudo_label(torch.ones(1, 4, 2, 2, dtype=torch.int64), torch.ones(1, 4))


def test_equal_scores_go_to_the_first_present_class():
    refined = _maps()
    refined[0, 0, :, :2] = 0.9  # absent class 1, stronger than both: ignored
    refined[0, 1, :, :5] = 0.7
    refined[0, 3, :, 3:] = 0.7  # ties with class 2 on columns 3-4
    got = pseudo_label(refined, torch.tensor([[0, 1, 0, 1]]))
    want = torch.zeros(1, 6, 8, dtype=torch.int64)
    want[0, :, :5] = 2
    want[0, :, 5:] = 4
    assert torch.equal(got, want)


def test_values_within_the_tie_tolerance_go_to_the_first_class():
    """1 and 1 - 1 ulp (float32 rounding of two saturated maps) tie; a gap above TIE_TOLERANCE does not."""
    from sgwsss.refine.pseudo_label import TIE_TOLERANCE

    refined = _maps()
    refined[0, 1, :, :6] = 1.0
    refined[0, 2, :, 2:] = 1.0
    one_ulp_below = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))
    refined[0, 1, 0, 2:6] = one_ulp_below  # rounding noise: still class 2 (first) on the overlap
    refined[0, 1, 1, 2:6] = 1.0 - 2 * TIE_TOLERANCE  # a real gap: class 3 wins
    refined[0, 2, 2, 2:6] = 1.0 + TIE_TOLERANCE / 2  # within the tolerance above: class 2 still
    got = pseudo_label(refined, torch.tensor([[0, 1, 1, 0]]))
    want = torch.zeros(1, 6, 8, dtype=torch.int64)
    want[0, :, :6] = 2
    want[0, :, 6:] = 3
    want[0, 1, 2:6] = 3
    assert torch.equal(got, want)


def test_labels_do_not_depend_on_which_cpu_path_refined_the_maps(monkeypatch):
    """Overlapping masks refined by the fused numba kernels and by torch (their float32 rounding differs by
    about 1e-6) give the same labels: the tie rule decides the saturated overlap, not the rounding."""
    from sgwsss.refine import _cpu_kernels
    from sgwsss.refine.self_guided import self_guided_refine

    if not _cpu_kernels.available():
        pytest.skip("numba is not installed: one CPU path only")
    g = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, 48, 64), 0.4)
    image[..., 24:, :] = 0.7  # two flat colour regions, a little noise
    image += 0.01 * torch.rand(image.shape, generator=g)
    maps = torch.zeros(1, 3, 48, 64)
    maps[0, 0, 4:40, 4:44] = 1.0
    maps[0, 1, 10:46, 20:60] = 1.0
    maps[0, 2, 0:30, 30:64] = 0.8
    maps += 0.05 * torch.rand(maps.shape, generator=g)
    labels = torch.ones(1, 3)

    def refine():
        return self_guided_refine(image, maps, iterations=3, radius=5, eps=1e-6, labels=labels)

    fused = refine()
    monkeypatch.setattr(_cpu_kernels, "available", lambda: False)
    plain = refine()
    assert 0 < (fused - plain).abs().max() < 1e-4  # the two paths round differently, by little
    ties = ((fused[0, :, None] - fused[0, None]).abs() < 1e-5).sum(dim=(0, 1)) > 3  # two classes within 1e-5
    assert ties.float().mean() > 0.05  # the case this is about
    assert torch.equal(pseudo_label(fused, labels), pseudo_label(plain, labels))
