"""A run's loss log, ``<work_dir>/metrics.jsonl``: written and read here only.

One JSON object a line, in the order of Algorithm 1:

* an SGD step's log window (:meth:`MetricsWriter.step`): ``{"phase": "step1" | "step2",
  "step": 1 | 2, "round", "iteration", "iters", "loss", <loss parts>, "lr", "images_per_s",
  "seconds"}``, ``loss`` and the parts averaged over the window;
* the pseudo labels of a round (:meth:`MetricsWriter.pseudo`): ``{"phase": "pseudo", "round",
  "iteration": 0, "stage", "written", "images", "seconds"}``.

Readers (:func:`read_metrics`, :func:`loss_records`, :func:`phase_seconds`,
:func:`truncate_metrics`) skip a line cut short by a kill mid-write, all alike.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from sgwsss.files import atomic_write_text

__all__ = ["METRICS_FILE", "PHASES", "MetricsWriter", "read_metrics", "loss_records", "phase_seconds",
           "truncate_metrics", "position_key"]

METRICS_FILE = "metrics.jsonl"  # a run's loss log, one JSON record a line, in its work_dir
#: The phases of one round, in order, and the SGD step each belongs to (None: no SGD).
PHASES = {"step1": 1, "pseudo": None, "step2": 2}
_ORDER = {name: k for k, name in enumerate(PHASES, start=1)}


def _step_phase(step: int) -> str:
    return f"step{step}"


class MetricsWriter:
    """Append records to a ``metrics.jsonl`` (one flushed line each); a no-op when ``path`` is None."""

    def __init__(self, path: Optional[os.PathLike]):
        self.path = Path(path) if path is not None else None

    def write(self, record: Dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def step(self, *, step: int, round: int, iteration: int, iters: int, values: Dict[str, float], lr: float,
             images_per_s: float, seconds: float) -> None:
        """One log window of SGD step ``step``: ``values`` holds ``loss`` and the loss parts (window means)."""
        self.write({"phase": _step_phase(step), "step": step, "round": round, "iteration": iteration,
                    "iters": iters, **values, "lr": lr, "images_per_s": images_per_s, "seconds": seconds})

    def pseudo(self, *, round: int, stage: str, written: int, images: int, seconds: float) -> None:
        """The pseudo-label phase of round ``round``."""
        self.write({"phase": "pseudo", "round": round, "iteration": 0, "stage": stage, "written": written,
                    "images": images, "seconds": seconds})


def _records(path: Path) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(line, record)`` for each well-formed line of a ``metrics.jsonl``, in order.

    Well-formed: a JSON object with a known ``phase`` and an integer ``round``. Anything
    else (a line cut short by a kill mid-write, a hand edit) is skipped, by every reader
    alike. A missing file yields nothing.
    """
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and rec.get("phase") in PHASES and isinstance(rec.get("round"), int)
        except ValueError:
            continue
        if ok:
            yield line, rec


def read_metrics(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The well-formed records of a run's ``metrics.jsonl``, in order.

    A line cut short by a kill mid-write is skipped rather than raised on, so the log of a
    killed run can be read (and plotted) before it is resumed; a missing file gives ``[]``.
    """
    return [rec for _, rec in _records(Path(path))]


def loss_records(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The SGD log windows (phases ``step1`` / ``step2`` with a ``loss``), each with its ``step`` (1 or 2)."""
    return [dict(rec, step=PHASES[rec["phase"]]) for rec in read_metrics(path)
            if PHASES[rec["phase"]] is not None and "loss" in rec]


def position_key(round: int, phase: str, iteration: int) -> Tuple[int, int, int]:
    """Order of a position in a run: (round, phase order, iteration)."""
    return round, _ORDER[phase], iteration


def truncate_metrics(path: Path, progress: Dict[str, int]) -> None:
    """Drop the lines written after the checkpoint position ``progress`` (a killed run's tail), atomically."""
    if not path.exists():
        return
    limit = position_key(progress["round"], _step_phase(progress["step"]), progress["iteration"])
    keep = [line for line, rec in _records(path)
            if position_key(rec["round"], rec["phase"], rec.get("iteration", 0)) <= limit]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def phase_seconds(metrics: Union[str, os.PathLike]) -> Dict[str, float]:
    """Wall-clock seconds per phase of a run, from its ``metrics.jsonl``.

    Returns ``{"round1/step1": s, "round1/pseudo": s, "round1/step2": s, ..., "total": s}``:
    the sum of the ``seconds`` of every step line (each covers one log interval) and the
    pseudo-label line of each round. Lines without ``seconds`` (logs written before the
    field existed) count as 0; malformed lines are skipped (:func:`read_metrics`); a missing
    file gives ``{}``. A resumed run counts the time of every process that contributed to
    the kept lines, not the time lost to the kill.
    """
    out: Dict[str, float] = {}
    for rec in read_metrics(metrics):
        key = f"round{rec['round']}/{rec['phase']}"
        out[key] = out.get(key, 0.0) + float(rec.get("seconds", 0.0))
    if out:
        out["total"] = sum(out.values())
    return out
