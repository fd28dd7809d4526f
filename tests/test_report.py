"""Results files (sgwsss.book.report): atomic save/load, tables, and the claim checks of the results chapter."""
from __future__ import annotations

import json

import pytest

from sgwsss.book import report
from sgwsss.constants import STAGES


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


def test_claims_follow_the_numbers():
    # A, R, G-w/o-aff, G, G-iter15-w/o-aff, G-iter15
    res = _stages([0.30, 0.28, 0.33, 0.331, 0.34, 0.32])
    got = {(c["better"], c["worse"]): c for c in report.claims(res)}
    assert got[("R", "A")]["verdict"] == "contradicted" and got[("R", "A")]["delta"] == pytest.approx(-2.0)
    assert got[("G-w/o-aff", "A")]["verdict"] == "supported"
    assert got[("G", "G-w/o-aff")]["verdict"] == "no difference"  # +0.1 point
    assert got[("G-iter15", "G")]["verdict"] == "contradicted"
    assert got[("G-iter15-w/o-aff", "G-w/o-aff")]["verdict"] == "supported"
    assert all(c["verdict"] == "not measured" for c in report.claims(res, key="miou_crf"))


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
