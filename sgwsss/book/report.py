"""Measured results: the JSON files the benchmarks write and the results chapter reads.

Each script under ``benchmarks/`` saves what it printed with :func:`save_result`
as ``sgwsss/book/results/<name>.json`` (shipped with the package, so the results chapter
also works from a ``pip install`` in Colab). The chapter only formats these files:
no number in it is typed by hand.

Names: ``guided_filter``, ``pseudo_labels``, ``train_cpu`` / ``train_paper``,
``stages`` (Table 1 pseudo-label mIoU on ``train``), ``table1`` (segmentation
networks trained on each stage's pseudo labels), ``segmentation`` (a run's final
network on ``val``) and ``oracle_refinement`` (the refinement on degraded ground truth).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from sgwsss.evaluate.tables import markdown_table, pct, per_class_table
from sgwsss.files import atomic_write_text

__all__ = ["RESULTS_DIR", "result_path", "save_result", "load_result", "machine"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def result_path(name: str, results_dir: Optional[os.PathLike] = None) -> Path:
    """``<results_dir>/<name>.json`` (default :data:`RESULTS_DIR`, or ``$SGWSSS_RESULTS_DIR``)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    base = results_dir or os.environ.get("SGWSSS_RESULTS_DIR") or RESULTS_DIR
    return Path(base) / f"{name}.json"


def machine() -> Dict[str, Any]:
    """Where a measurement ran: CPU count, torch threads, GPU name, library versions."""
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    return info


def save_result(name: str, data: Mapping[str, Any], results_dir: Optional[os.PathLike] = None) -> Path:
    """Write ``data`` plus ``command``, ``date`` and ``machine`` as JSON, atomically (temp file + rename)."""
    record = {"name": name, "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), **dict(data)}
    return atomic_write_text(result_path(name, results_dir), json.dumps(record, indent=1, sort_keys=False) + "\n")


def load_result(name: str, results_dir: Optional[os.PathLike] = None) -> Optional[Dict[str, Any]]:
    """The saved result ``name``, or None when it has not been measured yet."""
    path = result_path(name, results_dir)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun the benchmark that writes it") from None


# ----------------------------------------------------------------------------- Table 1

#: The comparisons Table 1 of Ke & Hsu is about: (better stage, worse stage, what the paper claims).
CLAIMS = (
    ("R", "A", "the affinity random walk improves the localization maps"),
    ("G-w/o-aff", "A", "self-guided refinement improves the localization maps"),
    ("G", "R", "self-guided refinement also improves the random-walk maps"),
    ("G", "G-w/o-aff", "self-guided refinement works better after the random walk"),
    ("G-iter15", "G", "iterating the self-guided refinement 15 times improves it further"),
    ("G-iter15-w/o-aff", "G-w/o-aff", "iterating also helps without the affinity"),
)


def stage_table(stages: Mapping[str, Any], paper: Optional[Mapping[str, Optional[float]]] = None) -> str:
    """Markdown table of ``stages.json``: each stage's pseudo-label mIoU, with CRF when measured, and the paper's."""
    rows = []
    has_crf = any("miou_crf" in r for r in stages["stages"].values())
    for s, r in stages["stages"].items():
        row = [f"`{s}`", pct(r["miou"])]
        if has_crf:
            row += [pct(r.get("miou_subset")), pct(r.get("miou_crf"))]
        if paper is not None:
            row.append("n/a" if paper.get(s) is None else f"{paper[s]:.1f}")
        rows.append(row)
    header = [f"stage (walk beta {stages['beta']:g})" if "beta" in stages else "stage", f"mIoU, {stages['images']} images"]
    if has_crf:
        header += [f"mIoU, {stages['crf_images']} images", f"+ CRF, {stages['crf_images']} images"]
    if paper is not None:
        header.append("paper")
    return markdown_table(header, rows)


def claims(stages: Mapping[str, Any], key: str = "miou", margin: float = 0.005) -> list:
    """Each of :data:`CLAIMS` checked against measured mIoUs: a list of dicts with ``claim``,
    ``better``, ``worse``, ``delta`` (mIoU points, better - worse) and ``verdict``:
    ``supported`` (delta > margin), ``contradicted`` (delta < -margin), ``no difference``
    or ``not measured``."""
    out = []
    st = stages["stages"]
    for better, worse, text in CLAIMS:
        a, b = st.get(better, {}).get(key), st.get(worse, {}).get(key)
        if a is None or b is None:
            out.append({"claim": text, "better": better, "worse": worse, "delta": None, "verdict": "not measured"})
            continue
        d = a - b
        verdict = "supported" if d > margin else "contradicted" if d < -margin else "no difference"
        out.append({"claim": text, "better": better, "worse": worse, "delta": 100 * d, "verdict": verdict})
    return out


def claims_markdown(stages: Mapping[str, Any], key: str = "miou") -> str:
    """:func:`claims` as a markdown table."""
    rows = [[c["claim"], f"`{c['better']}` vs `{c['worse']}`",
             "-" if c["delta"] is None else f"{c['delta']:+.1f}", c["verdict"]] for c in claims(stages, key)]
    return markdown_table(["the paper's claim", "stages", "our difference (mIoU points)", "our measurement"], rows)


def table1_table(table1: Mapping[str, Any], paper: Optional[Mapping[str, Optional[float]]] = None) -> str:
    """Markdown table of ``table1.json``: the segmentation network trained on each stage's pseudo labels."""
    rows = []
    for s, r in table1["stages"].items():
        row = [f"`{s}`", pct(r.get("pseudo_label_miou_train")), pct(r.get("val_miou")), pct(r.get("val_miou_crf"))]
        if paper is not None:
            row.append("n/a" if paper.get(s) is None else f"{paper[s]:.1f}")
        rows.append(row)
    first = next(iter(table1["stages"].values()), {})
    header = ["stage", "pseudo labels, train", f"val ({first.get('val_images', '?')} images)", "val + CRF"]
    if paper is not None:
        header.append("paper")
    return markdown_table(header, rows)


def speed_table(guided_filter: Optional[Mapping[str, Any]] = None, pseudo_labels: Optional[Mapping[str, Any]] = None,
                train: Optional[Mapping[str, Any]] = None) -> str:
    """Markdown table of the speed results that have been measured (any may be None)."""
    rows = []
    if guided_filter:
        g = guided_filter
        where = f"{g['device']}, {g['threads']} threads"
        rows.append([f"self-guided refinement ({g['iterations']} iterations), ms/image", where,
                     f"{g['refine_ms_sgwsss']:.1f}", f"{g['refine_ms_opencv']:.1f}",
                     f"{g['refine_ratio']:.2f}"])
        rows.append(["one guided-filter pass, ms/map", where, f"{g['filter_ms_sgwsss']:.2f}",
                     f"{g['filter_ms_opencv']:.2f}", f"{g['filter_ratio']:.2f}"])
        if g.get("max_error_sgwsss") is not None:
            rows.append([f"max error vs float64 (eps {g['eps']:g}), {g['images']} images", "",
                         f"{g['max_error_sgwsss']:.1e}", f"{g['max_error_opencv']:.1e}", ""])
    if pseudo_labels:
        p = pseudo_labels
        rows.append(["pseudo labels (G-iter15), images/s", f"{p['device']}, {p['threads']} threads",
                     f"{p['images_per_second']:.2f}", "", ""])
        rows.append(["refinement time / network forward time", "", f"{p['refine_over_forward']:.2f}", "", ""])
    if train:
        t = train
        for step in ("step1", "step2"):
            if step in t:
                s = t[step]
                rows.append([f"`{t['config']}` {step} training, images/s (batch {s['batch']})",
                             f"{t['device']}, {t['threads']} threads", f"{s['images_per_second']:.2f}", "", ""])
    return markdown_table(["measurement", "where", "sgwsss", "OpenCV", "OpenCV / sgwsss"], rows)


def frequency_split_table(rows: Mapping[str, Mapping[str, Optional[float]]], counts: Mapping[str, int],
                          min_images: int = 15) -> str:
    """mIoU over all classes, over the classes with at least ``min_images`` training images
    (and background), and over the rest, for each row ``{name: {class: IoU or None}}``.

    The same nan-mean as the headline mIoU (classes whose IoU is None, i.e. with a zero union,
    are left out), only over a subset of the classes; ``counts`` gives the training images per
    foreground class (``VOCSegmentation.class_counts()`` by name). A diagnostic for a small training set, where
    classes seen once or twice score near 0 and pull the mean down whatever the method.
    """
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    frequent = {name for name, n in counts.items() if n >= min_images}
    out, seen_freq, seen_rare = [], set(), set()
    for row, iou in rows.items():
        freq = {c: v for c, v in iou.items() if v is not None and (c == "background" or c in frequent)}
        rare = {c: v for c, v in iou.items() if v is not None and c not in freq}
        seen_freq |= set(freq)
        seen_rare |= set(rare)
        out.append([row, pct(mean(iou.values())), pct(mean(freq.values())), pct(mean(rare.values()))])
    header = ["", "all classes", f"{len(seen_freq)} classes with >= {min_images} training images (incl. background)",
              f"{len(seen_rare)} classes with fewer"]
    return markdown_table(header, out)


def run_time_table(seconds: Mapping[str, float]) -> str:
    """Markdown table of a run's wall-clock time per phase (``phase_seconds`` of its metrics),
    in minutes: one row per ``round{r}/{phase}`` in the run's order, then the total."""
    names = {"step1": "step 1 (L_cls + L_aff)", "pseudo": "pseudo labels", "step2": "step 2 (L_seg)"}
    rows = []
    for key, value in seconds.items():
        if key == "total":
            continue
        rnd, phase = key.split("/", 1)
        rows.append([f"{rnd.replace('round', 'round ')}: {names.get(phase, phase)}", f"{value / 60:.1f}"])
    if "total" in seconds:
        rows.append(["total", f"{seconds['total'] / 60:.1f}"])
    return markdown_table(["phase", "minutes"], rows)


def segmentation_table(segmentation: Mapping[str, Any]) -> str:
    """Per-class table (the paper's Table 2 layout) of ``segmentation.json``: the run's final network
    on its split, without and with CRF."""
    return per_class_table(segmentation["results"])


def oracle_table(oracle: Mapping[str, Any]) -> str:
    """Markdown table of ``oracle_refinement.json``: pseudo-label mIoU of degraded ground truth,
    blurred and after each number of self-guided refinement iterations."""
    rows = []
    for g in oracle["grow"]:
        r = oracle["miou"][str(g)]
        rows.append([f"{g:+d} px", *(pct(v) for v in r.values())])
    header = ["masks grown by", f"blurred (stride {oracle['stride']})", *(f"G x{k}" for k in oracle["iterations"])]
    return markdown_table(header, rows)


def plot_stages(stages: Mapping[str, Any], table1: Optional[Mapping[str, Any]] = None, ax=None):
    """Bar chart of each stage's mIoU: pseudo labels on train; when measured, the CRF subset without and
    with CRF (so the CRF bar is compared on the same images), and the val mIoU of each stage's network."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(stages["stages"])
    series = {f"pseudo labels ({stages['images']} train images)": [stages["stages"][s]["miou"] for s in names]}
    if any("miou_crf" in stages["stages"][s] for s in names):  # the CRF subset beside itself without CRF
        series[f"pseudo labels ({stages['crf_images']} of them)"] = [
            stages["stages"][s].get("miou_subset") for s in names]
        series[f"pseudo labels + CRF ({stages['crf_images']} of them)"] = [
            stages["stages"][s].get("miou_crf") for s in names]
    if table1:
        series["segmentation net, val"] = [table1["stages"].get(s, {}).get("val_miou") for s in names]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, vals) in enumerate(series.items()):
        v = [np.nan if a is None else 100 * a for a in vals]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Table 1 stages measured on the VOC sample")
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure
