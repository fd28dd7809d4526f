"""benchmarks/gpu_check.py, the GPU checks in one script, runs its CPU smoke mode (no GPU here)."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_cpu_smoke(voc_root, tmp_path, capsys):
    assert gpu_check.main(["--cpu-smoke", "--voc-root", str(voc_root), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert sorted(checks) == ["amp_train", "guided_filter", "otsu", "pseudo_agree", "resume"]
    assert all(c["ok"] for k, c in checks.items() if k != "pseudo_agree") and checks["pseudo_agree"]["ok"] is None
    assert checks["guided_filter"]["max_abs_error"] <= 1e-4 and checks["resume"]["max_weight_difference"] == 0.0
    assert checks["amp_train"]["pseudo_labels"] == 2 and len(checks["amp_train"]["losses"]) == 4
    assert sorted(report["rows"]) == ["guided_filter", "pseudo_labels", "train_smoke"]
    assert report["rows"]["train_smoke"]["step1"]["images_per_second"] > 0
    out = capsys.readouterr().out
    assert "summary:" in out and "guided filter: OpenCV/sgwsss refine" in out
    assert not list((REPO / "sgwsss" / "book" / "results").glob("gpu_check*"))  # saved under --out only


def test_gpu_check_without_cuda_says_how_to_run(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script runs its checks")
    assert gpu_check.main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err
