"""Tests of sgwsss.losses (Eqs. 1, 4, 12, 13 of Ke & Hsu)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgwsss.losses import affinity_loss, classification_loss, segmentation_loss, step1_loss
from sgwsss.model import SGOutput, build_model
from sgwsss.refine.affinity import affinity_matrix, color_similarity, transition_matrix


# ------------------------------------------------------------------ Eq. 1


def test_classification_loss_matches_bce_formula():
    torch.manual_seed(0)
    logits = torch.randn(4, 20) * 3
    labels = (torch.rand(4, 20) > 0.7).long()
    got = classification_loss(logits, labels)
    ref = 0.0
    for b in range(4):
        for c in range(20):
            e = 1.0 / (1.0 + math.exp(-float(logits[b, c])))
            y = float(labels[b, c])
            ref -= y * math.log(e) + (1 - y) * math.log(1 - e)
    assert got.item() == pytest.approx(ref / 80, rel=1e-5)


def test_classification_loss_is_stable_for_large_logits():
    logits = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[0, 1, 1]])
    loss = classification_loss(logits, labels)
    # -log(sigmoid(-100)) = 100 (plus log(1 + e^-100)); mean of (100, 100, log 2)
    assert loss.item() == pytest.approx((200 + math.log(2)) / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_classification_loss_shape_errors():
    with pytest.raises(ValueError, match="labels"):
        classification_loss(torch.zeros(2, 20), torch.zeros(2, 21))
    with pytest.raises(ValueError, match="logits"):
        classification_loss(torch.zeros(2, 20, 1), torch.zeros(2, 20, 1))


# ------------------------------------------------------------------ Eq. 4


def test_affinity_loss_l1_formula_and_reductions():
    torch.manual_seed(1)
    T = torch.rand(2, 5, 5, dtype=torch.float64)
    M = torch.rand(2, 5, 5, dtype=torch.float64)
    absdiff = [[sum(abs(float(T[b, p, q] - M[b, p, q])) for q in range(5)) for p in range(5)] for b in range(2)]
    row = sum(sum(r) for r in absdiff) / 10  # sum over q, mean over p and batch
    assert affinity_loss(T, M).item() == pytest.approx(row, rel=1e-12)
    assert affinity_loss(T, M, reduction="mean").item() == pytest.approx(row / 5, rel=1e-12)
    assert affinity_loss(T, M, reduction="sum").item() == pytest.approx(row * 10, rel=1e-12)
    assert affinity_loss(T, T).item() == 0
    with pytest.raises(ValueError, match="reduction"):
        affinity_loss(T, M, reduction="max")
    with pytest.raises(ValueError, match="M"):
        affinity_loss(T, M[:, :4, :4])


def test_affinity_loss_bounded_for_transition_matrices():
    torch.manual_seed(2)
    T = transition_matrix(affinity_matrix(torch.randn(2, 3, 8, 8), grid=8))
    M = color_similarity(torch.rand(2, 3, 8, 8), grid=8)
    loss = affinity_loss(T, M)
    assert 0 < loss.item() <= 2  # twice a total-variation distance per row


# ------------------------------------------------------------------ Eq. 12


def test_segmentation_loss_matches_ce_with_ignore_and_upsampling():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, 0, :] = 255
    target[1, 2:4, 2:4] = 255
    got = segmentation_loss(logits, target)
    up = F.interpolate(logits, size=(6, 6), mode="bilinear", align_corners=False)
    total, count = 0.0, 0
    for b in range(2):
        for y in range(6):
            for x in range(6):
                t = int(target[b, y, x])
                if t == 255:
                    continue
                z = up[b, :, y, x]
                total += float(torch.logsumexp(z, 0) - z[t])
                count += 1
    assert count == 2 * 36 - 6 - 4
    assert got.item() == pytest.approx(total / count, rel=1e-10)
    # same size: no resampling
    same = segmentation_loss(up, target)
    assert same.item() == pytest.approx(total / count, rel=1e-10)


def test_segmentation_loss_all_ignored_is_zero_with_graph():
    logits = torch.randn(1, 21, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 8, 8), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_segmentation_loss_errors():
    with pytest.raises(ValueError, match="target"):
        segmentation_loss(torch.zeros(2, 21, 4, 4), torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        segmentation_loss(torch.zeros(2, 21, 4, 4), torch.zeros(2, 8, 8))


# ------------------------------------------------------------------ Eq. 13


def test_step1_loss_composition():
    torch.manual_seed(4)
    out = SGOutput(
        seg=torch.randn(2, 21, 4, 4),
        cam=torch.randn(2, 20, 4, 4),
        logits=torch.randn(2, 20),
        feat=torch.randn(2, 3, 8, 8),
    )
    labels = (torch.rand(2, 20) > 0.8).float()
    image = torch.rand(2, 3, 32, 32)
    total, parts = step1_loss(out, labels, image, lam=0.5, grid=10)
    cls = classification_loss(out.logits, labels)
    aff = affinity_loss(transition_matrix(affinity_matrix(out.feat, 10)), color_similarity(image, 10))
    assert parts["cls"].item() == pytest.approx(cls.item(), rel=1e-6)
    assert parts["aff"].item() == pytest.approx(aff.item(), rel=1e-6)
    assert total.item() == pytest.approx(cls.item() + 0.5 * aff.item(), rel=1e-6)
    total0, _ = step1_loss(out, labels, image, lam=0.0, grid=10)
    assert total0.item() == pytest.approx(cls.item(), rel=1e-6)


# ------------------------------------------------- one SGD step on real VOC images


@pytest.fixture(scope="module")
def voc_batch(voc_root):
    """4 train images at 96 x 96 in [0, 1], their masks (nearest) and image-level labels."""
    VOC = voc_root / "VOCdevkit" / "VOC2012"
    ids = sorted((VOC / "ImageSets" / "Segmentation" / "train.txt").read_text().split())[:4]
    size = 96
    images, masks, labels = [], [], []
    for i in ids:
        img = Image.open(VOC / "JPEGImages" / f"{i}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
        mask = np.array(Image.open(VOC / "SegmentationClassAug" / f"{i}.png"))
        present = sorted(set(np.unique(mask).tolist()) - {0, 255})
        lab = torch.zeros(20)
        lab[[c - 1 for c in present]] = 1
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
        masks.append(torch.from_numpy(np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST))).long())
        labels.append(lab)
    return torch.stack(images), torch.stack(masks), torch.stack(labels)


def _sgd_step(model, loss_fn, lr):
    opt = torch.optim.SGD(model.param_groups(lr=lr, weight_decay=0.0), lr=lr)
    before = loss_fn()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    return before.item(), after.item()


def test_one_sgd_step_lowers_step1_loss(voc_batch):
    images, _, labels = voc_batch
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=True).train()
    parts = []

    def loss_fn():
        total, p = step1_loss(model(images), labels, images, lam=1.0, grid=24)
        parts.append(p)
        return total

    before, after = _sgd_step(model, loss_fn, lr=2.5e-4)  # DeepLab-v2 learning rate
    assert math.isfinite(before) and after < before - 1e-4
    first, second = parts
    assert first["cls"].item() == pytest.approx(math.log(2), abs=0.05)  # new 1x1 head: logits ~ 0
    assert 0 < first["aff"].item() <= 2
    # both terms improve: L_aff trains the aggregation layer and early backbone
    assert second["cls"] < first["cls"] and second["aff"] < first["aff"]


def test_one_sgd_step_lowers_segmentation_loss(voc_batch):
    images, masks, _ = voc_batch
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=True).train()

    def loss_fn():
        return segmentation_loss(model(images).seg, masks)

    before, after = _sgd_step(model, loss_fn, lr=2.5e-4)
    assert math.isfinite(before) and after < before - 1e-3
