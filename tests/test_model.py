"""Tests of sgwsss.model: backbones, SGNet heads, loading, parameter groups."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgwsss.model import SGOutput, build_model
from sgwsss.model.backbones import (
    Conv2dSame,
    EfficientNetLite0,
    efficientnet_lite0_state_dict,
    load_efficientnet_lite0_imagenet,
)


@pytest.fixture(scope="module")
def lite0_state():
    return efficientnet_lite0_state_dict()


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("output_stride", [8, 16])
def test_efficientnet_shapes(output_stride):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False, output_stride=output_stride).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SGOutput)
    h, w = 64 // output_stride, 96 // output_stride
    assert out.seg.shape == (2, 21, h, w)
    assert out.cam.shape == (2, 20, h, w)
    assert out.logits.shape == (2, 20)
    assert out.feat.shape == (2, 3, 16, 24)
    assert model.backbone_name == "efficientnet_lite0"
    assert model.output_stride == output_stride
    # logits are the global average pool of the localization maps
    torch.testing.assert_close(out.logits, out.cam.mean(dim=(2, 3)))
    # cam is a 1x1 conv (20 filters) over the 21 seg maps
    ref = torch.einsum("kc,bchw->bkhw", model.classifier.weight[:, :, 0, 0], out.seg)
    torch.testing.assert_close(out.cam, ref + model.classifier.bias.view(1, -1, 1, 1), rtol=1e-5, atol=1e-6)


def test_resnet101_shapes_random_init():
    torch.manual_seed(0)
    model = build_model("resnet101", pretrained=False).eval()
    assert model.output_stride == 8 and model.aspp.rates == (6, 12, 18, 24)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 80))
    assert out.seg.shape == (1, 21, 8, 10)
    assert out.cam.shape == (1, 20, 8, 10)
    assert out.logits.shape == (1, 20)
    assert out.feat.shape == (1, 3, 16, 20)
    assert model.backbone.low_channels == 256 and model.aggregation.in_channels == 256
    assert model.backbone_name == "resnet101"


def test_default_output_stride_and_aspp_rates():
    model = build_model("efficientnet_lite0", pretrained=False)
    assert model.output_stride == 16 and model.aspp.rates == (3, 6, 9, 12)
    model8 = build_model("efficientnet_lite0", pretrained=False, output_stride=8)
    assert model8.aspp.rates == (6, 12, 18, 24)
    assert [c.dilation[0] for c in model8.aspp.branches] == [6, 12, 18, 24]


def test_new_layers_init():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False)
    for conv in [*model.aspp.branches, model.classifier, model.aggregation]:
        assert torch.all(conv.bias == 0)
        assert abs(conv.weight.std().item() - 0.01) < 0.003
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 20
    assert model.aggregation.kernel_size == (1, 1) and model.aggregation.out_channels == 3


def test_identity_classifier_init_copies_foreground_maps():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False, output_stride=16, classifier_init="identity").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 80))
    # A^c is segmentation map c + 1; the background map 0 does not enter any A^c
    torch.testing.assert_close(out.cam, out.seg[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, out.seg[:, 1:].mean(dim=(2, 3)))
    assert torch.all(model.classifier.weight[:, 0] == 0) and torch.all(model.classifier.bias == 0)
    # the other new layers keep N(0, 0.01)
    assert abs(model.aspp.branches[0].weight.std().item() - 0.01) < 0.003
    with pytest.raises(ValueError, match="classifier_init"):
        build_model("efficientnet_lite0", pretrained=False, classifier_init="xavier")


def test_infer_averages_scales_and_flips():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False, output_stride=16).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        plain = model(x)
        same = model.infer(x)
        for a, b in zip(plain, same):
            assert torch.equal(a, b)
        tta = model.infer(x, scales=(1.0, 0.5), flip=True)
        # by hand: four passes, each brought back to the plain pass's grid (4 x 6) and un-mirrored
        size = plain.cam.shape[-2:]
        cams = []
        for xs in (x, F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)):
            for mirror in (False, True):
                c = model(xs.flip(-1) if mirror else xs).cam
                c = c.flip(-1) if mirror else c
                cams.append(F.interpolate(c, size=size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(tta.cam, torch.stack(cams).mean(0), rtol=1e-5, atol=1e-5)
    assert tta.seg.shape == plain.seg.shape and tta.logits.shape == plain.logits.shape
    assert torch.equal(tta.feat, plain.feat)  # the affinity features of the plain pass
    with pytest.raises(ValueError, match="scales"):
        model.infer(x, scales=(0.0,))


def test_identity_classifier_init_learns_faster_than_normal():
    """The reason for the option: with N(0, 0.01) on both the ASPP and the classifier, Eq. 1
    barely moves in a few SGD steps; with the identity start it falls at once."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    x[:2, 0] += 0.5  # class 0 images are redder
    labels = torch.zeros(4, 20)
    labels[:2, 0] = 1
    labels[2:, 1] = 1
    drops = {}
    for how in ("normal", "identity"):
        torch.manual_seed(1)
        model = build_model("efficientnet_lite0", pretrained=False, output_stride=16, classifier_init=how)
        model.train()
        opt = torch.optim.SGD(model.param_groups(1e-3), lr=1e-3, momentum=0.9)
        losses = []
        for _ in range(10):
            loss = F.binary_cross_entropy_with_logits(model(x).logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        drops[how] = losses[0] - losses[-1]
    assert drops["identity"] > 2 * drops["normal"] > 0


def test_input_validation():
    model = build_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="backbone"):
        build_model("vgg16", pretrained=False)
    with pytest.raises(ValueError, match="output_stride"):
        build_model("efficientnet_lite0", pretrained=False, output_stride=4)


def test_normalisation_inside_model():
    lite = build_model("efficientnet_lite0", pretrained=False).backbone
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(lite.normalize(x), (255 * x - 127) / 128)
    res = build_model("resnet101", pretrained=False).backbone
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(res.normalize(x), (x - mean) / std)


# ------------------------------------------------------------------- TF "same" padding


@pytest.mark.parametrize("size", [5, 6, 7, 8, 9])
def test_conv2d_same_matches_tensorflow_rule(size):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, size, size)
    y = conv(x)
    assert y.shape[-2:] == (-(-size // 2),) * 2  # TF SAME: ceil(in / stride)
    # TF pads (total // 2) before and the rest after: even sizes -> (0, 1), odd -> (1, 1)
    pad = (0, 1) if size % 2 == 0 else (1, 1)
    ref = F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), conv.weight, stride=2)
    torch.testing.assert_close(y, ref)


def test_conv2d_same_dilated_is_symmetric():
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 5, dilation=4, groups=4, bias=False)
    x = torch.randn(1, 4, 11, 13)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, padding=8, dilation=4, groups=4))


# --------------------------------------------------------------------------- loading


def test_efficientnet_strict_loading(lite0_state):
    for os_ in (32, 8):
        net = EfficientNetLite0(output_stride=os_)
        assert set(net.state_dict()) == set(lite0_state)
        load_efficientnet_lite0_imagenet(net)
        torch.testing.assert_close(net._blocks[11]._depthwise_conv.weight, lite0_state["_blocks.11._depthwise_conv.weight"])
    broken = dict(lite0_state)
    broken.pop("_blocks.3._bn1.running_var")
    with pytest.raises(RuntimeError, match="running_var"):
        EfficientNetLite0().load_state_dict(broken, strict=True)
    # the SGNet backbone carries the ImageNet weights (classifier dropped)
    model = build_model("efficientnet_lite0", pretrained=True)
    body = model.backbone.body
    torch.testing.assert_close(body._conv_stem.weight, lite0_state["_conv_stem.weight"])
    torch.testing.assert_close(body._bn1.running_var, lite0_state["_bn1.running_var"])
    assert body._fc is None
    assert all(m.eps == 1e-3 for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_dilation_plan():
    for os_, strides, dils in [
        (32, (2, 2, 2, 2), (1, 1, 1, 1)),  # blocks 1, 3, 5, 11 stride; dilation of blocks 5, 6, 11, 12
        (16, (2, 2, 2, 1), (1, 1, 1, 2)),
        (8, (2, 2, 1, 1), (1, 2, 2, 4)),
    ]:
        net = EfficientNetLite0(output_stride=os_)
        got = tuple(net._blocks[i]._depthwise_conv.stride[0] for i in (1, 3, 5, 11))
        assert got == strides
        got = tuple(net._blocks[i]._depthwise_conv.dilation[0] for i in (5, 6, 11, 12))
        assert got == dils
        low, high = net.forward_features(torch.zeros(1, 3, 64, 64))
        assert low.shape == (1, 24, 16, 16) and high.shape == (1, 1280, 64 // os_, 64 // os_)


def test_resnet101_pretrained_offline_error(monkeypatch, tmp_path):
    """Simulate no network: torchvision's download raises URLError -> clear RuntimeError."""

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached checkpoint
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match="efficientnet_lite0") as info:
        build_model("resnet101", pretrained=True)
    assert "network" in str(info.value)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


# ----------------------------------------------------------------- training helpers


def test_param_groups_cover_every_parameter_once():
    model = build_model("efficientnet_lite0", pretrained=False)
    groups = model.param_groups(lr=1e-3, weight_decay=5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-3)
    assert by_name["new"]["lr"] == pytest.approx(1e-2)
    new_ids = {id(p) for m in (model.aspp, model.classifier, model.aggregation) for p in m.parameters()}
    assert {id(p) for p in by_name["new"]["params"]} == new_ids
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9)  # accepted by the optimizer


def test_freeze_bn_survives_train():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False)  # freeze_bn=True by default
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    before = bns[0].running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(bns[0].running_mean, before)
    model.freeze_bn(False)
    model.train()
    assert all(m.training for m in bns) and all(p.requires_grad for m in bns for p in m.parameters())
    model(torch.rand(2, 3, 32, 32) + 0.5)
    assert not torch.equal(bns[0].running_mean, before)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet101"])
def test_freeze_early_fixes_stem_and_stride4_layers(backbone):
    torch.manual_seed(0)
    model = build_model(backbone, pretrained=False, output_stride=16, freeze_bn=False, freeze_early=True)
    early = {id(p) for m in model.backbone.early_modules() for p in m.parameters()}
    assert early and model.early_frozen
    model.train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    (out.logits.sum() + out.feat.square().mean()).backward()
    for p in model.parameters():
        if id(p) in early:
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad
    assert model.aggregation.weight.grad is not None  # Eq. 2 still trains on the frozen features
    # early BatchNorms keep their statistics even with freeze_bn off; later ones update
    early_bns = [m for m in model.backbone.early_modules() for m in m.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert early_bns and not any(m.training for m in early_bns)
    before = early_bns[-1].running_mean.clone()
    model(x + 0.5)
    torch.testing.assert_close(early_bns[-1].running_mean, before)
    # freeze_bn(False) must not re-enable the early layers; freeze_early(False) does
    model.freeze_bn(False)
    assert not any(p.requires_grad for m in model.backbone.early_modules() for p in m.parameters())
    model.freeze_early(False)
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- real-photo check

DOG, CAT = 12, 8  # VOC indices
IMAGENET_DOGS = range(151, 269)  # Chihuahua .. Mexican hairless
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _single_class_ids(voc: Path, voc_class: int, n: int) -> list[str]:
    """First n val images whose mask holds only `voc_class` (>= 20% of the pixels)."""
    ids = sorted((voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    out = []
    for i in ids:
        m = np.array(Image.open(voc / "SegmentationClassAug" / f"{i}.png"))
        present = set(np.unique(m).tolist()) - {0, 255}
        if present == {voc_class} and (m == voc_class).mean() >= 0.2:
            out.append(i)
            if len(out) == n:
                break
    return out


def test_efficientnet_lite0_classifies_voc_photos(lite0_state, voc_root):
    """ImageNet weights loaded strictly classify real VOC dog/cat photos (also dilated)."""
    VOC = voc_root / "VOCdevkit" / "VOC2012"
    dogs, cats = _single_class_ids(VOC, DOG, 8), _single_class_ids(VOC, CAT, 8)
    assert len(dogs) == 8 and len(cats) == 8
    x = torch.stack(
        [
            torch.from_numpy(
                np.array(Image.open(VOC / "JPEGImages" / f"{i}.jpg").convert("RGB").resize((224, 224), Image.BILINEAR))
            ).permute(2, 0, 1)
            for i in dogs + cats
        ]
    ).float()
    x = (x - 127) / 128
    is_dog = torch.tensor([True] * 8 + [False] * 8)
    for os_ in (32, 16):
        net = EfficientNetLite0(output_stride=os_)
        net.load_state_dict(lite0_state, strict=True)
        with torch.no_grad():
            prob = net.eval()(x).softmax(1)
        top1 = prob.argmax(1)
        top1_dog = (top1 >= IMAGENET_DOGS.start) & (top1 < IMAGENET_DOGS.stop)
        top1_cat = (top1 >= IMAGENET_CATS.start) & (top1 < IMAGENET_CATS.stop)
        correct = torch.where(is_dog, top1_dog, top1_cat)
        assert correct.sum() >= 13, f"os={os_}: {correct.tolist()}"
        p_dog = prob[:, IMAGENET_DOGS.start : IMAGENET_DOGS.stop].sum(1)
        p_cat = prob[:, IMAGENET_CATS.start : IMAGENET_CATS.stop].sum(1)
        assert ((p_dog > p_cat) == is_dog).sum() >= 15
    # negative control: random weights do not
    torch.manual_seed(0)
    with torch.no_grad():
        rnd = EfficientNetLite0().eval()(x).argmax(1)
    rnd_correct = torch.where(is_dog, (rnd >= 151) & (rnd < 269), (rnd >= 281) & (rnd < 286))
    assert rnd_correct.sum() < 13
