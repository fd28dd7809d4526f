"""Results files (sgwsss.book.report): atomic save/load, tables, and the claim checks of the results chapter."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sgwsss.book import report
from sgwsss.constants import STAGES
from sgwsss.evaluate.bootstrap import miou_batch
from sgwsss.paper import PAPER_TABLE1, PAPER_TABLE1_CRF


def _stages(values, crf=None):
    return {"images": 10, "crf_images": 4,
            "stages": {s: {"miou": v, **({"miou_crf": crf[s], "miou_subset": v} if crf else {})}
                       for s, v in zip(STAGES, values)}}


def test_save_and_load_roundtrip(tmp_path):
    path = report.save_result("speed", {"ratio": 1.5}, results_dir=tmp_path)
    assert path == tmp_path / "speed.json"
    got = report.load_result("speed", results_dir=tmp_path)
    assert got["ratio"] == 1.5 and got["name"] == "speed"
    assert {"command", "date", "machine"} <= set(got)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert report.load_result("missing", results_dir=tmp_path) is None


def test_env_var_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SGWSSS_RESULTS_DIR", str(tmp_path))
    assert report.result_path("x") == tmp_path / "x.json"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_result("broken")
    with pytest.raises(ValueError, match="plain file stem"):
        report.result_path("../etc")


def _confusion(n_images, correct, wrong, c=3):
    """(n_images, c, c) per-image confusion matrices: ``correct`` pixels on the diagonal of every class and
    ``wrong`` pixels of class 1 predicted as 2, per image."""
    conf = np.zeros((n_images, c, c))
    conf[:, range(c), range(c)] = correct
    conf[:, 1, 2] = wrong
    return conf


def _per_image(errors, n=30, kind="plain"):
    """Synthetic ``stages_per_image.npz`` arrays: stage s has ``errors[s]`` wrong pixels per image (noisy
    per image, so the bootstrap interval has a width)."""
    rng = np.random.default_rng(1)
    base = rng.integers(50, 150, size=n)
    out = {"ids": np.array([f"2008_{i:06d}" for i in range(n)])}
    for s, e in errors.items():
        out[f"{kind}/{s}"] = _confusion(n, base[:, None], np.maximum(0, e + rng.integers(-3, 4, size=n)))
    return out


def test_claims_are_the_papers_own_comparisons():
    # every claim's side is the paper's Table 1 order, without and with CRF
    for a, b, side, _ in report.CLAIMS:
        for table in (PAPER_TABLE1, PAPER_TABLE1_CRF):
            assert (table[a] > table[b]) == (side == "greater"), (a, b)
    pairs = {(a, b) for a, b, _, _ in report.CLAIMS}
    assert ("G-w/o-aff", "A") in pairs and ("G", "R") in pairs and ("G-iter15", "G-iter15-w/o-aff") in pairs


def test_claims_verdicts_follow_the_bootstrap_interval():
    # fewer wrong pixels = higher mIoU. R < A (contradicts "R > A"), G-w/o-aff << A (supports "less"),
    # G == R up to noise (not resolved); G-iter15-w/o-aff missing -> not measured
    errors = {"A": 20, "R": 40, "G-w/o-aff": 60, "G": 40, "G-iter15": 0}
    got = {(c["a"], c["b"]): c for c in report.claims(_per_image(errors), n_resamples=500)}
    assert got[("R", "A")]["verdict"] == "contradicted"
    assert got[("R", "A")]["high"] < 0 < got[("R", "A")]["paper_delta"]
    assert got[("G-w/o-aff", "A")]["verdict"] == "supported"
    assert got[("G", "R")]["verdict"] == "not resolved" and got[("G", "R")]["low"] < 0 < got[("G", "R")]["high"]
    assert got[("G-iter15", "G")]["verdict"] == "supported" and got[("G-iter15", "G")]["images"] == 30
    assert got[("G-iter15-w/o-aff", "G-w/o-aff")]["verdict"] == "not measured"
    assert got[("G-iter15-w/o-aff", "G-w/o-aff")]["delta"] is None
    assert got[("G", "R")]["paper_delta"] == pytest.approx(PAPER_TABLE1["G"] - PAPER_TABLE1["R"])
    # the point estimate is the mIoU difference on all images, in points
    conf = _per_image(errors)
    delta = 100 * (miou_batch(conf["plain/R"].sum(0)) - miou_batch(conf["plain/A"].sum(0)))
    assert got[("R", "A")]["delta"] == pytest.approx(delta)
    with pytest.raises(ValueError, match="kind"):
        report.claims(conf, kind="bogus")


def test_claims_markdown_and_npz_roundtrip(tmp_path):
    arrays = _per_image({"A": 20, "R": 10}, n=12, kind="crf")
    np.savez(tmp_path / "stages_per_image.npz", **arrays)
    got = report.load_arrays("stages_per_image", results_dir=tmp_path)
    assert set(got) == set(arrays) and got["crf/A"].shape == (12, 3, 3)
    assert report.load_arrays("missing", results_dir=tmp_path) is None
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz"):
        report.load_arrays("broken", results_dir=tmp_path)
    lines = report.claims_markdown(got, kind="crf", n_resamples=200).splitlines()
    assert len(lines) == 2 + len(report.CLAIMS) and "12 images" in lines[0]
    row = next(x for x in lines if "`R` > `A`" in x)
    assert f"{PAPER_TABLE1_CRF['R'] - PAPER_TABLE1_CRF['A']:+.1f}" in row and row.endswith("| supported |")
    assert lines[-1].endswith("| not measured |")


def test_guided_filter_table_and_where_sgwsss_is_slower():
    summary = [{"threads": t, "kind": k, "classes": c, "ms_sgwsss": 50.0, "ms_opencv": 50.0 * r, "ratio": r,
                "breakdown_ms_sgwsss": {"statistics": 1.0, "otsu": 2.0, "filter": 40.0, "other": 7.0}}
               for t, k, c, r in [(1, "trained", 1, 1.6), (1, "smooth", 2, 0.8), (2, "smooth", "all", 1.2)]]
    gf = {"threads": 2, "refine_ms_sgwsss": 1.0, "refine_ms_opencv": 2.0, "refine_ratio": 2.0, "summary": summary}
    lines = report.guided_filter_table(gf).splitlines()
    assert lines[2] == "| 1 | trained | 1 | 50.0 | 80.0 | 1.60 | 1.0 / 2.0 / 40.0 / 7.0 |"
    assert len(lines) == 5
    assert report.slower_cases(gf) == [(1, "smooth", 2, 0.8)]
    old = {"threads": 2, "refine_ms_sgwsss": 100.0, "refine_ms_opencv": 90.0, "refine_ratio": 0.9}
    assert report.guided_filter_table(old).splitlines()[2] == "| 2 | trained | all | 100.0 | 90.0 | 0.90 | - |"
    assert report.slower_cases(old) == [(2, "trained", "all", 0.9)]


def test_rounds_table_and_paired_delta():
    rounds = {"rounds": [{"round": 1, "pseudo_label_miou_train": 0.30, "val_miou": 0.25},
                         {"round": 2, "pseudo_label_miou_train": 0.32, "val_miou": 0.27, "extra": 0.5}]}
    lines = report.rounds_table(rounds).splitlines()
    assert lines[0] == "|  | pseudo labels, train mIoU | network, val mIoU | extra |"
    assert lines[2:] == ["| round 1 | 30.0 | 25.0 | - |", "| round 2 | 32.0 | 27.0 | 50.0 |"]
    written = report.rounds_table({"rounds": 2, "results": {  # the layout benchmarks/rounds.py writes
        "pseudo/round1": {"miou": 0.3}, "val/round1": {"miou": 0.2}, "val_crf/round1": {"miou": 0.25},
        "pseudo/round2": {"miou": 0.35}, "val/round2": {"miou": 0.22}, "val_crf/round2": {"miou": 0.27}}})
    assert written.splitlines()[2:] == ["| round 1 | 30.0 | 20.0 | 25.0 |", "| round 2 | 35.0 | 22.0 | 27.0 |"]
    assert "pseudo labels, train mIoU" in written.splitlines()[0]
    keyed = report.rounds_table({"rounds": {"1": {"val_miou": 0.2}}}).splitlines()
    assert keyed[2] == "| round 1 | 20.0 |"
    with pytest.raises(ValueError, match="rounds"):
        report.rounds_table({})
    arrays = _per_image({"round1": 20, "round2": 10})
    d = report.paired_delta(arrays, "plain/round2", "plain/round1", n_resamples=300)
    assert d["low"] > 0 and d["low"] <= d["delta"] <= d["high"] and d["images"] == 30
    assert report.paired_delta(arrays, "plain/round3", "plain/round1") is None


def test_tables_render_measured_values():
    res = _stages([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], crf={s: 0.7 for s in STAGES})
    md = report.stage_table(res, {s: None for s in STAGES})
    lines = md.splitlines()
    assert len(lines) == 2 + len(STAGES)
    assert lines[2] == "| `A` | 10.0 | 10.0 | 70.0 | n/a |"
    assert "+ CRF, 4 images" in lines[0]
    with pytest.raises(ValueError, match="cells"):
        report.markdown_table(["a", "b"], [[1]])


def test_shipped_results_are_valid_json():
    for path in report.RESULTS_DIR.glob("*.json"):
        data = json.loads(path.read_text())
        assert data["name"] == path.stem and "command" in data and "machine" in data


def test_oracle_and_segmentation_tables():
    oracle = {"stride": 16, "iterations": [1, 15], "grow": [-16, 0],
              "miou": {"-16": {"maps": 0.5, "G x1": 0.55, "G x15": 0.6}, "0": {"maps": 0.7, "G x1": 0.75, "G x15": 0.7}}}
    lines = report.oracle_table(oracle).splitlines()
    assert lines[0] == "| masks grown by | blurred (stride 16) | G x1 | G x15 |"
    assert lines[2:] == ["| -16 px | 50.0 | 55.0 | 60.0 |", "| +0 px | 70.0 | 75.0 | 70.0 |"]
    seg = {"results": {"network": {"miou": 0.25, "iou": {"background": 0.8, "cat": 0.5}}}}
    md = report.segmentation_table(seg)
    assert "| network |" in md and "80.0" in md and "25.0" in md


def test_plot_puts_the_crf_bars_beside_the_same_subset():
    import matplotlib

    matplotlib.use("Agg")
    res = _stages([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], crf={s: 0.7 for s in STAGES})
    for s, sub in zip(STAGES, [0.15, 0.25, 0.35, 0.45, 0.55, 0.65]):
        res["stages"][s]["miou_subset"] = sub
    table1 = {"stages": {"A": {"val_miou": 0.05}}}
    ax = report.plot_stages(res, table1).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["pseudo labels (10 train images)", "pseudo labels (4 of them)", "pseudo labels + CRF (4 of them)",
                      "segmentation net, val"]
    heights = [[round(b.get_height(), 6) for b in c] for c in ax.containers]
    assert heights[0] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert heights[1] == [15.0, 25.0, 35.0, 45.0, 55.0, 65.0]
    assert heights[2] == [70.0] * 6
    assert heights[3][0] == 5.0 and all(h != h for h in heights[3][1:])  # unmeasured stages: no bar (NaN)


def test_run_time_table_in_minutes_and_run_order():
    seconds = {"round1/step1": 540.0, "round1/pseudo": 330.0, "round1/step2": 510.0, "total": 1380.0}
    table = report.run_time_table(seconds)
    lines = table.splitlines()
    assert lines[0].startswith("| phase") and len(lines) == 2 + 4
    assert "round 1: step 1" in lines[2] and "9.0" in lines[2]
    assert "pseudo labels" in lines[3] and "5.5" in lines[3]
    assert "step 2" in lines[4] and "8.5" in lines[4]
    assert lines[5].startswith("| total") and "23.0" in lines[5]


def test_frequency_split_table_by_hand():
    counts = {"cat": 20, "bird": 3, "dog": 0, "boat": 1}  # training images per class
    rows = {"A": {"background": 0.8, "cat": 0.6, "bird": 0.1, "dog": 0.0, "boat": None}}
    table = report.frequency_split_table(rows, counts, min_images=15)
    # all: (0.8 + 0.6 + 0.1 + 0.0) / 4; frequent: background and cat; rare: bird and dog (boat has no union)
    assert table.splitlines()[2] == "| A | 37.5 | 70.0 | 5.0 |"
    assert "2 classes with >= 15 training images" in table.splitlines()[0]


def test_stage_table_puts_both_paper_columns():
    res = _stages([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    lines = report.stage_table(res, PAPER_TABLE1, PAPER_TABLE1_CRF).splitlines()
    assert lines[0].endswith("| paper (val) | paper + CRF (val) |")
    assert lines[2] == f"| `A` | 10.0 | {PAPER_TABLE1['A']:.1f} | {PAPER_TABLE1_CRF['A']:.1f} |"


def test_paper_settings_name_config_fields_and_the_paper_config_follows_them():
    from sgwsss.paper import PAPER_SETTINGS
    from sgwsss.train import get_config

    cfg = get_config("paper", budget=1)
    for field, value in PAPER_SETTINGS.items():
        assert hasattr(cfg, field), field
        if value is not None:
            assert getattr(cfg, field) == value, field
    assert 2 * PAPER_SETTINGS["radius"] + 1 == 35  # Sec. 4.1's window size


def test_step2_guided_table():
    result = {"results": {"plain": {"val_miou": 0.2163, "val_miou_guided_prediction": 0.2201, "step2_seconds": 600.0},
                          "guided": {"val_miou": 0.2250, "val_miou_guided_prediction": 0.2260, "step2_seconds": 900.0}},
              "bootstrap_guided_minus_plain": {"raw": {"delta": 0.0087, "low": -0.002, "high": 0.019, "n_images": 200}}}
    lines = report.step2_guided_table(result).splitlines()
    assert lines[2:4] == ["| plain | 21.6 | 22.0 | 10.0 |", "| guided | 22.5 | 22.6 | 15.0 |"]
    assert lines[-1] == ("Guided-filter layer minus plain, the network's arg-max: +0.87 points, 95% interval "
                         "[-0.20, +1.90] over 200 val images.")
    with pytest.raises(ValueError, match="results"):
        report.step2_guided_table({})
