"""The command line: help/version, and one clear line (no traceback) on bad input."""
import subprocess
import sys

import pytest

from sgwsss import __version__
from sgwsss.cli import main


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "sgwsss", *args], capture_output=True, text=True, timeout=120)


def test_version_via_python_m():
    res = run_module("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"sgwsss {__version__}"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "pseudo-labels", "predict", "evaluate"):
        assert cmd in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: sgwsss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["pseudo-labels", "--checkpoint", "/nonexistent/ckpt.pt", "--out", "x"], "no such file: /nonexistent/ckpt.pt"),
        (["predict", "--checkpoint", "/nonexistent/ckpt.pt", "--out", "x"], "no such file"),
        (["evaluate", "--pred", "/nonexistent/pred"], "no such directory: /nonexistent/pred"),
        (["train", "--config", "tpu", "--work-dir", "w"], "invalid choice: 'tpu'"),
    ],
)
def test_argument_errors_are_one_line(argv, expected):
    res = run_module(*argv)
    assert res.returncode == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_voc_root_is_one_clear_line(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    res = run_module("evaluate", "--voc-root", str(tmp_path / "no-voc"), "--pred", str(pred))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("sgwsss: error:")
    assert "no-voc" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
