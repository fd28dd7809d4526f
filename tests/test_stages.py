"""Table 1 stages (A, R, G...) and the self-guided refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.filters import threshold_otsu

from sgwsss.refine.guided_filter import guided_filter
from sgwsss.refine.pseudo_label import pseudo_label
from sgwsss.refine.self_guided import self_guided_refine
from sgwsss.refine.stages import STAGES, normalize_maps, refine_stage, stage_pseudo_labels

H, W, GRID = 36, 44, 6


def _inputs(seed=0, b=2, c=5):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, H, W, generator=g)
    image[:, :, :, W // 2 :] *= 0.3  # an image edge the maps can snap to
    cam = torch.randn(b, c, 7, 9, generator=g)
    labels = torch.zeros(b, c)
    labels[0, [1, 3]] = 1
    labels[1, 4] = 1
    w = torch.rand(b, GRID * GRID, GRID * GRID, generator=g, dtype=torch.float64) ** 8
    transition = (w / w.sum(-1, keepdim=True)).float()
    return image, cam, labels, transition


def _manual_refine(image, maps, iterations, feedback="binary", radius=17, eps=1e-6, threshold=None):
    """Reference loop: skimage Otsu (or a fixed threshold) + the (separately tested) guided filter,
    one map at a time."""
    out = torch.zeros_like(maps)
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            q = maps[b, k].numpy()
            for t in range(iterations):
                cut = threshold_otsu(q) if threshold is None else threshold
                p = (q > cut).astype(np.float32) if (t == 0 or feedback == "binary") else q
                q = guided_filter(image[b : b + 1], torch.from_numpy(p)[None, None], radius, eps)[0, 0].numpy()
            out[b, k] = torch.from_numpy(q)
    return out


def test_stage_names():
    assert STAGES == ("A", "R", "G-w/o-aff", "G", "G-iter15-w/o-aff", "G-iter15")


def test_stage_a_is_min_max_normalised_and_upsampled():
    image, cam, labels, _ = _inputs()
    cam[0, 3] = cam[0, 3] - 10.0  # present but never positive: keeps its relative evidence
    cam[1, 4] = 2.5  # present but constant -> zero map
    got = refine_stage("A", image, cam, labels)
    c64 = cam.double()
    lo, hi = c64.amin((2, 3), keepdim=True), c64.amax((2, 3), keepdim=True)
    norm = torch.where(hi > lo, (c64 - lo) / (hi - lo), 0.0).float()
    want = F.interpolate(norm, size=(H, W), mode="bilinear", align_corners=False) * labels[:, :, None, None]
    torch.testing.assert_close(got, want)
    assert got[0, 0].abs().max() == 0 and got[1, 4].abs().max() == 0  # absent / constant
    a = normalize_maps(cam, labels)
    assert a[0, 3].amin() == 0 and torch.allclose(a[0, 3].amax(), torch.tensor(1.0))
    assert torch.allclose(normalize_maps(cam)[1, 0].amax(), torch.tensor(1.0))


def test_stage_r_is_random_walk_on_the_grid():
    image, cam, labels, transition = _inputs(1)
    got = refine_stage("R", image, cam, labels, transition=transition, grid=GRID)
    a = F.interpolate(normalize_maps(cam, labels), size=(GRID, GRID), mode="bilinear", align_corners=False)
    walked = torch.einsum("bij,bcj->bci", transition.double(), a.double().flatten(2)).view_as(a).float()
    want = F.interpolate(walked, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got[labels == 0].abs().max() == 0


@pytest.mark.parametrize("stage,base,iterations", [("G-w/o-aff", "A", 1), ("G", "R", 1), ("G-iter15", "R", 15)])
def test_g_stages_refine_their_base_maps(stage, base, iterations):
    image, cam, labels, transition = _inputs(2)
    got = refine_stage(stage, image, cam, labels, transition=transition, grid=GRID, skip_constant=False)
    base_maps = refine_stage(base, image, cam, labels, transition=transition, grid=GRID)
    want = _manual_refine(image, base_maps * labels[:, :, None, None], iterations)
    want[labels == 0] = 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_stage_pseudo_labels_and_errors():
    image, cam, labels, transition = _inputs(3)
    for stage in ("A", "G"):
        got = stage_pseudo_labels(stage, image, cam, labels, transition=transition, grid=GRID)
        want = pseudo_label(refine_stage(stage, image, cam, labels, transition=transition, grid=GRID), labels)
        assert torch.equal(got, want)
        assert set(got.unique().tolist()) <= {0, 2, 4, 5}
    with pytest.raises(ValueError, match="valid stages: A, R, G-w/o-aff, G, G-iter15-w/o-aff, G-iter15"):
        refine_stage("B", image, cam, labels)
    with pytest.raises(ValueError, match=r"needs the affinity transition matrix.*\(2, 36, 36\)"):
        refine_stage("G", image, cam, labels, grid=GRID)
    with pytest.raises(ValueError, match="transition must have shape"):
        refine_stage("R", image, cam, labels, transition=transition, grid=GRID + 1)
    with pytest.raises(TypeError, match="iterations"):
        refine_stage("G", image, cam, labels, transition=transition, grid=GRID, iterations=3)
    with pytest.raises(ValueError, match="labels must have shape"):
        refine_stage("A", image, cam, labels[:, :3])


# ----------------------------------------------------------------------------- self-guided refinement
def test_self_guided_feedback_modes_and_absent_classes():
    image, _, labels, _ = _inputs(4)
    maps = torch.rand(2, 5, H, W, generator=torch.Generator().manual_seed(9))
    for feedback in ("binary", "filtered"):
        got = self_guided_refine(image, maps, iterations=3, labels=labels, feedback=feedback, skip_constant=False)
        want = _manual_refine(image, maps, 3, feedback)
        present = labels != 0
        torch.testing.assert_close(got[present], want[present], rtol=0, atol=1e-5)
        assert got[~present].abs().max() == 0
    # a fixed threshold instead of Otsu's, at every iteration
    got = self_guided_refine(image, maps, iterations=2, labels=labels, threshold=0.8, skip_constant=False)
    want = _manual_refine(image, maps, 2, threshold=0.8)
    torch.testing.assert_close(got[labels != 0], want[labels != 0], rtol=0, atol=1e-5)
    otsu = self_guided_refine(image, maps, iterations=2, labels=labels)
    assert (got - otsu).abs().max() > 1e-2
    # the two modes really differ after the first iteration
    a = self_guided_refine(image, maps, iterations=2, labels=labels, feedback="binary")
    b = self_guided_refine(image, maps, iterations=2, labels=labels, feedback="filtered")
    assert (a - b).abs().max() > 1e-2
    # no labels: every class is refined; one iteration, skipping constant neighbourhoods is exact
    full = self_guided_refine(image, maps, skip_constant=False)
    torch.testing.assert_close(self_guided_refine(image, maps), full, rtol=0, atol=1e-5)
    assert (full.flatten(2).amax(2) > 0.5).all()


def test_self_guided_errors():
    image, _, labels, _ = _inputs(5)
    maps = torch.rand(2, 5, H, W)
    with pytest.raises(ValueError, match="feedback"):
        self_guided_refine(image, maps, feedback="soft")
    with pytest.raises(ValueError, match="iterations"):
        self_guided_refine(image, maps, iterations=0)
    with pytest.raises(ValueError, match="threshold must be None"):
        self_guided_refine(image, maps, threshold="0.4")
    with pytest.raises(ValueError, match="maps must have shape"):
        self_guided_refine(image, maps[..., :-1])
    with pytest.raises(ValueError, match="labels must be a"):
        self_guided_refine(image, maps, labels=labels[:1])


def test_refinement_snaps_coarse_maps_to_the_objects(voc_root):
    """On real photographs, G moves blurry, CAM-like maps onto the objects (IoU with the masks grows)."""
    voc = voc_root / "VOCdevkit" / "VOC2012"
    names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:4]
    before, after = [], []
    for name in names:
        image = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float32) / 255
        mask = np.array(Image.open(voc / "SegmentationClassAug" / f"{name}.png"))
        cls = int([c for c in np.unique(mask) if 0 < c < 255][0])
        obj = torch.from_numpy((mask == cls).astype(np.float32))[None, None]
        coarse = F.interpolate(F.avg_pool2d(obj, 16, ceil_mode=True), size=obj.shape[-2:], mode="bilinear")
        img = torch.from_numpy(image).permute(2, 0, 1)[None]
        labels = torch.zeros(1, 20)
        labels[0, cls - 1] = 1
        maps = torch.zeros(1, 20, *obj.shape[-2:])
        maps[0, cls - 1] = coarse[0, 0]
        valid = torch.from_numpy(mask != 255)
        gt = obj[0, 0].bool()

        def iou(pred):
            return float(((pred & gt) & valid).sum() / (((pred | gt) & valid).sum()))

        before.append(iou(pseudo_label(maps, labels)[0] == cls))
        after.append(iou(pseudo_label(self_guided_refine(img, maps, labels=labels), labels)[0] == cls))
    assert np.mean(after) > np.mean(before) + 0.015, (before, after)


def test_oracle_refinement_on_degraded_masks(voc_small_dataset):
    from sgwsss.evaluate import oracle_refinement

    # undegraded masks (stride 1, no growth) are the ground truth itself: Eq. 11 gives it back
    exact = oracle_refinement(voc_small_dataset, stride=1, iterations=(), progress=False)
    assert exact == {"maps": 1.0}
    # CAM-like blur: one guided-filter pass moves the maps back towards the objects
    blurred = oracle_refinement(voc_small_dataset, stride=16, iterations=(1,), progress=False)
    assert blurred["G x1"] > blurred["maps"] + 0.01, blurred
    # over-covering maps (grown by 24 px) score lower than the plain blur
    grown = oracle_refinement(voc_small_dataset, stride=16, grow=24, iterations=(), progress=False)
    assert grown["maps"] < blurred["maps"] - 0.02, (grown, blurred)
    with pytest.raises(ValueError, match="stride"):
        oracle_refinement(voc_small_dataset, stride=0)
