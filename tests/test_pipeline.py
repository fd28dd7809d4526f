"""One pseudo-label pipeline: every caller gives the same labels, with and without CRF.

Training's writer (``generate_pseudo_labels``, as ``train()`` and ``benchmarks/table1.py`` call it),
``sgwsss pseudo-labels``, the stage scores (``stage_miou``, as ``benchmarks/stages.py`` calls it)
and the book's ``Explorer`` run on the same images, stage and configuration.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sgwsss.pipeline import PseudoLabelPipeline

IDS = ["2008_001934", "2009_005055"]  # two small images (~250 x 200) of the sample


@pytest.fixture(scope="module")
def setup(voc_root, tmp_path_factory):
    """A two-image VOC copy (split ``train``), a random-init network of a configuration whose every
    pipeline setting differs from the defaults, and its checkpoint."""
    from sgwsss.data import resolve_root
    from sgwsss.train import atomic_save, get_config
    from sgwsss.train.checkpoint import make_checkpoint, network_for

    src = resolve_root(voc_root)
    tmp = tmp_path_factory.mktemp("pipeline")
    voc = tmp / "voc" / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(IDS) + "\n")
    for i in IDS:
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png")):
            (voc / sub).mkdir(exist_ok=True)
            shutil.copy(src / sub / f"{i}.{ext}", voc / sub / f"{i}.{ext}")
    cfg = get_config("smoke", budget=1.0, pseudo_stage="G", grid=8, beta=3.0, radius=5, eps=1e-4, infer_flip=True,
                     infer_scales=[1.0, 0.75])
    torch.manual_seed(0)
    model = network_for(cfg, pretrained=False).eval()
    ckpt = atomic_save(make_checkpoint(model, cfg, {"round": 1, "step": 1, "iteration": 1, "iters": 1}),
                       tmp / "step1.pt")
    return tmp / "voc", cfg, model, ckpt, tmp


def _pngs(folder):
    from sgwsss.data import read_mask

    return {i: read_mask(folder / f"{i}.png").astype(np.int64) for i in IDS}


def test_from_config_is_the_one_translation(setup):
    _, cfg, *_ = setup
    p = PseudoLabelPipeline.from_config(cfg)
    assert (p.stage, p.grid, p.beta, p.radius, p.eps, p.scales, p.flip, p.crf) == \
        ("G", 8, 3.0, 5, 1e-4, (1.0, 0.75), True, None)
    assert PseudoLabelPipeline.from_config(cfg, stage="A", crf=True).crf is not None
    assert PseudoLabelPipeline.from_config(cfg.replace(pseudo_crf=True)).crf is not None
    with pytest.raises(ValueError, match="valid stages"):
        PseudoLabelPipeline(stage="B")


@pytest.mark.parametrize("crf", [False, True])
def test_every_caller_gives_the_same_labels(setup, crf):
    from sgwsss.book import Explorer
    from sgwsss.cli import main
    from sgwsss.data import VOCSegmentation
    from sgwsss.evaluate import Evaluator, stage_miou
    from sgwsss.train import generate_pseudo_labels

    root, cfg, model, ckpt, tmp = setup
    ds = VOCSegmentation(root, split="train", with_mask=True)
    pipeline = PseudoLabelPipeline.from_config(cfg, crf=crf)
    # training's writer (train() and benchmarks/table1.py call it with from_config)
    written = tmp / f"train_crf{crf}"
    assert generate_pseudo_labels(model, VOCSegmentation(root, split="train"), written, pipeline, progress=False) == 2
    labels = _pngs(written)
    # sgwsss pseudo-labels
    cli = tmp / f"cli_crf{crf}"
    argv = ["pseudo-labels", "--checkpoint", str(ckpt), "--voc-root", str(root), "--split", "train",
            "--stage", "G", "--out", str(cli)] + (["--crf"] if crf else [])
    assert main(argv) == 0
    for i, got in _pngs(cli).items():
        np.testing.assert_array_equal(got, labels[i])
    # the book's Explorer (CRF: the pipeline's one recipe applied to its labels)
    for k, i in enumerate(IDS):
        ex = Explorer(model, ds[k], config=cfg)
        got = ex.pseudo_label("G").cpu().numpy()
        if crf:
            got = ex.pipeline.crf_refine(ex.image[0], got, ex.labels[0])
        np.testing.assert_array_equal(got, labels[i])
    # the stage scores (benchmarks/stages.py): the same confusion matrix as the written labels
    scores = stage_miou(model, ds, ["G"], PseudoLabelPipeline.from_config(cfg), crf=crf, progress=False)
    want = Evaluator(ds).score(labels)
    assert scores["G+CRF" if crf else "G"]["confusion"] == want["confusion"]
    assert scores["G+CRF" if crf else "G"]["miou"] == want["miou"]
    assert not crf or scores["G"]["confusion"] == Evaluator(ds).score(_pngs(tmp / "train_crfFalse"))["confusion"]


def test_stages_follow_one_recipe(setup):
    """Stage A is normalised at the network's resolution, then upsampled, for every caller; the
    steps compose to stage_maps; the network runs in eval mode whatever the caller's mode."""
    import torch.nn.functional as F

    from sgwsss.data import VOCSegmentation
    from sgwsss.refine.stages import normalize_maps

    root, cfg, model, _, _ = setup
    pipeline = PseudoLabelPipeline.from_config(cfg)
    item = VOCSegmentation(root, split="train")[0]
    net = pipeline.infer(model, item["image"][None], item["label"][None])
    want = F.interpolate(normalize_maps(net.cam, net.labels), size=item["image"].shape[1:], mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(pipeline.stage_maps(net, "A"), want, rtol=0, atol=0)
    torch.testing.assert_close(pipeline.refine(net, pipeline.base_maps(net)), pipeline.stage_maps(net))
    assert pipeline.transition(net) is pipeline.transition(net)  # cached
    model.train()  # infer runs in eval mode and gives the caller's mode back
    torch.testing.assert_close(pipeline.infer(model, item["image"][None], item["label"][None]).cam, net.cam,
                               rtol=0, atol=0)
    assert model.training
    model.eval()


def test_crf_allows_background_and_every_image_level_class(monkeypatch):
    """The one CRF recipe: probability mass on background and every class of the image-level label,
    also a class Eq. 11 never assigned (training's pseudo_crf used to allow only the assigned ones)."""
    import sgwsss.pipeline as pipeline_module

    seen = {}

    def fake_crf(image, probs, params):
        seen["probs"], seen["params"] = probs, params
        return probs.argmax(0)

    monkeypatch.setattr(pipeline_module, "crf_labels", fake_crf)
    pseudo = np.zeros((6, 7), np.int64)
    pseudo[2:4, 2:5] = 13  # only class 13 assigned
    labels = torch.zeros(20)
    labels[[4, 12]] = 1  # image-level: classes 5 and 13
    out = PseudoLabelPipeline().crf_refine(torch.rand(3, 6, 7), pseudo, labels)
    probs = seen["probs"]
    assert sorted(np.flatnonzero(probs.sum(axis=(1, 2)) > 0).tolist()) == [0, 5, 13]
    np.testing.assert_allclose(probs[:, 0, 0][[0, 5, 13]], [0.7, 0.15, 0.15])
    np.testing.assert_array_equal(out, pseudo)
    from sgwsss.crf import CRFParams

    assert seen["params"] == CRFParams()
    custom = CRFParams(iterations=3)
    PseudoLabelPipeline(crf=custom).crf_refine(torch.rand(3, 6, 7), pseudo, labels)
    assert seen["params"] is custom
