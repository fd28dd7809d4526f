"""Measured results: the JSON files the benchmarks write and the results chapter reads.

Each script under ``benchmarks/`` saves what it printed with :func:`save_result`
as ``sgwsss/book/results/<name>.json`` (shipped with the package, so the results chapter
also works from a ``pip install`` in Colab). The chapter only formats these files:
no number in it is typed by hand.

Names: ``guided_filter``, ``pseudo_labels``, ``train_cpu`` / ``train_paper``,
``stages`` (each Table 1 stage's pseudo-label mIoU on ``train``: a proxy for Table 1, which
scores networks trained on them on ``val``; per-image confusion matrices in ``stages_per_image.npz``),
``table1`` (segmentation networks trained on each stage's pseudo labels: Table 1's protocol),
``rounds`` (Algorithm 1 with n = 2), ``segmentation`` (a run's final
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

__all__ = ["RESULTS_DIR", "result_path", "result_file", "save_result", "load_result", "load_arrays", "machine",
           "CLAIMS", "claims", "claims_markdown", "guided_filter_table", "slower_cases", "rounds_table",
           "paired_delta"]

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

#: The comparisons the paper draws from its Table 1 (Sec. 4.2 and the table's rows), as
#: ``(stage a, stage b, side, what the paper finds)``: ``side`` is ``"greater"`` when the paper's
#: mIoU of ``a`` is above that of ``b``, ``"less"`` when below (the paper's own numbers:
#: :data:`sgwsss.paper.PAPER_TABLE1`, and the same order with CRF). Ours are pseudo-label mIoUs on
#: ``train``, a proxy for the paper's val mIoU of a network trained on each stage's labels.
CLAIMS = (
    ("R", "A", "greater", "the affinity random walk improves the localization maps"),
    ("G-w/o-aff", "A", "less", "one self-guided filtering step alone hurts"),
    ("G", "R", "less", "one self-guided filtering step after the walk hurts too"),
    ("G-iter15-w/o-aff", "G-w/o-aff", "greater", "iterating the filter 15 times recovers (without the walk)"),
    ("G-iter15", "G", "greater", "iterating the filter 15 times recovers (after the walk)"),
    ("G", "G-w/o-aff", "greater", "the walk before one filtering step helps"),
    ("G-iter15", "G-iter15-w/o-aff", "greater", "the walk before 15 filtering steps helps: G-iter15 is the best stage"),
)


def stage_table(stages: Mapping[str, Any], paper: Optional[Mapping[str, Optional[float]]] = None,
                paper_crf: Optional[Mapping[str, Optional[float]]] = None) -> str:
    """Markdown table of ``stages.json``: each stage's pseudo-label mIoU, with CRF when measured, and the paper's
    Table 1 (``paper``: without CRF, ``paper_crf``: with; the val mIoU of networks trained on each stage's labels)."""
    rows = []
    has_crf = any("miou_crf" in r for r in stages["stages"].values())
    for s, r in stages["stages"].items():
        row = [f"`{s}`", pct(r["miou"])]
        if has_crf:
            row += [pct(r.get("miou_subset")), pct(r.get("miou_crf"))]
        for table in (paper, paper_crf):
            if table is not None:
                row.append("n/a" if table.get(s) is None else f"{table[s]:.1f}")
        rows.append(row)
    header = [f"stage (walk beta {stages['beta']:g})" if "beta" in stages else "stage", f"mIoU, {stages['images']} images"]
    if has_crf:
        header += [f"mIoU, {stages['crf_images']} images", f"+ CRF, {stages['crf_images']} images"]
    if paper is not None:
        header.append("paper" if paper_crf is None else "paper (val)")
    if paper_crf is not None:
        header.append("paper + CRF (val)")
    return markdown_table(header, rows)


def result_file(name: str, suffix: str, results_dir: Optional[os.PathLike] = None) -> Path:
    """``<results_dir>/<name><suffix>``, the same folder as :func:`result_path` (e.g. a ``.npz``)."""
    return result_path(name, results_dir).with_suffix(suffix)


def load_arrays(name: str, results_dir: Optional[os.PathLike] = None) -> Optional[Dict[str, Any]]:
    """The arrays of ``<name>.npz`` in the results folder (a dict of numpy arrays), or None when the file
    is missing. Per-image confusion matrices, e.g. ``stages_per_image``: ``ids`` (N,) and
    ``plain/<stage>`` (N, 21, 21); ``crf_ids`` and ``crf/<stage>`` for the CRF subset (rows ground truth,
    columns prediction)."""
    import numpy as np

    path = result_file(name, ".npz", results_dir)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npz ({exc}); rerun the benchmark that writes it") from None


def claims(per_image: Mapping[str, Any], kind: str = "plain", paper: Optional[Mapping[str, float]] = None,
           n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> list:
    """Each of :data:`CLAIMS` tested by a paired bootstrap over images
    (:func:`sgwsss.evaluate.bootstrap.paired_bootstrap`) on per-image confusion matrices.

    Args:
        per_image: ``{f"{kind}/{stage}": (N, C, C)}`` (as :func:`load_arrays` returns), the same
            images in the same order for every stage.
        kind: ``"plain"`` or ``"crf"``.
        paper: the paper's mIoU (%) per stage (default :data:`sgwsss.paper.PAPER_TABLE1`, or
            ``PAPER_TABLE1_CRF`` for ``kind="crf"``).

    Returns:
        One dict per claim: ``claim``, ``a``, ``b``, ``side``, ``paper_delta`` (points, a - b),
        ``delta``, ``low``, ``high`` (ours, mIoU points, the ``confidence`` interval), ``images`` and
        ``verdict``: ``supported`` / ``contradicted`` / ``not resolved`` from the interval, or
        ``not measured`` when a stage is missing.
    """
    from sgwsss.evaluate.bootstrap import paired_bootstrap
    from sgwsss.paper import PAPER_TABLE1, PAPER_TABLE1_CRF

    if kind not in ("plain", "crf"):
        raise ValueError(f"kind must be 'plain' or 'crf', got {kind!r}")
    paper = paper if paper is not None else (PAPER_TABLE1 if kind == "plain" else PAPER_TABLE1_CRF)
    out = []
    for a, b, side, text in CLAIMS:
        row = {"claim": text, "a": a, "b": b, "side": side, "delta": None, "low": None, "high": None,
               "images": None, "verdict": "not measured",
               "paper_delta": None if a not in paper or b not in paper else paper[a] - paper[b]}
        ca, cb = per_image.get(f"{kind}/{a}"), per_image.get(f"{kind}/{b}")
        if ca is not None and cb is not None:
            r = paired_bootstrap(ca, cb, n_resamples=n_resamples, confidence=confidence, seed=seed)
            row.update(delta=100 * r.delta, low=100 * r.low, high=100 * r.high, images=r.n_images,
                       verdict=r.verdict(side))
        out.append(row)
    return out


def claims_markdown(per_image: Mapping[str, Any], kind: str = "plain", **kwargs) -> str:
    """:func:`claims` as a markdown table (differences in mIoU points, a - b)."""
    def num(v, fmt="{:+.1f}"):
        return "-" if v is None else fmt.format(v)

    rows, images = [], None
    found = claims(per_image, kind, **kwargs)
    for c in found:
        ci = "-" if c["low"] is None else f"[{c['low']:+.1f}, {c['high']:+.1f}]"
        images = images or c["images"]
        rows.append([c["claim"], f"`{c['a']}` {'>' if c['side'] == 'greater' else '<'} `{c['b']}`",
                     num(c["paper_delta"]), num(c["delta"]), ci, c["verdict"]])
    level = round(100 * kwargs.get("confidence", 0.95))
    return markdown_table(["the paper's finding", "claim", "paper (val mIoU, points)",
                           f"ours (train pseudo labels, {images or 0} images)", f"{level}% interval", "verdict"],
                          rows)


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


def guided_filter_table(gf: Mapping[str, Any]) -> str:
    """Markdown table of ``guided_filter.json`` (``benchmarks/guided_filter.py``): the median ms per image of
    the whole self-guided refinement, sgwsss and OpenCV, per thread count, input kind and number of classes,
    with the ratio OpenCV / sgwsss (above 1: sgwsss is faster) and sgwsss's breakdown. A file in the older
    format (no ``summary``) gives its one headline row."""
    rows = []
    for s in gf.get("summary") or []:
        b = s.get("breakdown_ms_sgwsss") or {}
        parts = " / ".join(f"{b[k]:.1f}" for k in ("statistics", "otsu", "filter", "other") if k in b)
        rows.append([s["threads"], s["kind"], s["classes"], f"{s['ms_sgwsss']:.1f}", f"{s['ms_opencv']:.1f}",
                     f"{s['ratio']:.2f}", parts or "-"])
    if not rows:
        rows.append([gf.get("threads", "?"), "trained", "all", f"{gf['refine_ms_sgwsss']:.1f}",
                     f"{gf['refine_ms_opencv']:.1f}", f"{gf['refine_ratio']:.2f}", "-"])
    return markdown_table(["threads", "input maps", "classes", "sgwsss ms", "OpenCV ms", "OpenCV / sgwsss",
                           "sgwsss: statistics / Otsu / filter / other ms"], rows, align="lllrrrr")


def slower_cases(gf: Mapping[str, Any]) -> list:
    """The rows of ``guided_filter.json``'s summary (or its headline) where sgwsss is slower than OpenCV
    (ratio below 1): a list of ``(threads, kind, classes, ratio)``."""
    rows = gf.get("summary") or [{"threads": gf.get("threads"), "kind": "trained", "classes": "all",
                                   "ratio": gf["refine_ratio"]}]
    return [(r["threads"], r["kind"], r["classes"], r["ratio"]) for r in rows if r["ratio"] < 1]


#: Column titles of :func:`rounds_table` for the keys ``benchmarks/rounds.py`` writes per round.
ROUND_COLUMNS = {"pseudo_label_miou_train": "pseudo labels, train mIoU", "val_miou": "network, val mIoU",
                 "val_miou_crf": "network + CRF, val mIoU"}


def rounds_table(rounds: Mapping[str, Any]) -> str:
    """Markdown table of ``rounds.json`` (Algorithm 1 run for n rounds): one row per round, a column per
    measured fraction (the keys of :data:`ROUND_COLUMNS` first, then any other number in [0, 1]).
    ``rounds["rounds"]`` is a list of dicts (each with ``round``) or a dict keyed by the round; or, as
    ``benchmarks/rounds.py`` writes it, the number of rounds with ``rounds["results"]`` keyed
    ``pseudo/round{r}``, ``val/round{r}`` and ``val_crf/round{r}`` (each with ``miou``)."""
    items = rounds.get("rounds")
    if isinstance(items, int) and not isinstance(items, bool):
        names = {"pseudo": "pseudo_label_miou_train", "val": "val_miou", "val_crf": "val_miou_crf"}
        results = rounds.get("results") or {}
        items = [{"round": r, **{col: results[f"{kind}/round{r}"]["miou"] for kind, col in names.items()
                                 if f"{kind}/round{r}" in results}} for r in range(1, items + 1)]
    if isinstance(items, Mapping):
        items = [{"round": k, **v} for k, v in items.items()]
    if not items:
        raise ValueError("rounds.json has no 'rounds' entry")
    keys = [k for k in ROUND_COLUMNS if any(k in r for r in items)]
    keys += sorted({k for r in items for k, v in r.items() if k not in keys and k != "round"
                    and isinstance(v, float) and 0 <= v <= 1})
    rows = [[f"round {r.get('round', i + 1)}", *(pct(r.get(k)) for k in keys)] for i, r in enumerate(items)]
    return markdown_table(["", *(ROUND_COLUMNS.get(k, k) for k in keys)], rows)


def step2_guided_table(result: Mapping[str, Any]) -> str:
    """Markdown table of ``step2_guided.json`` (``benchmarks/step2_guided.py``): one row per step 2
    (plain, through the guided-filter layer), its val mIoU with the network's own arg-max and with the
    guided-filtered logits' arg-max, and step 2's minutes; then one line per prediction kind with the
    paired-bootstrap difference (guided-layer minus plain) and its 95% interval."""
    rows = [[name, pct(r.get("val_miou")), pct(r.get("val_miou_guided_prediction")),
             f"{r['step2_seconds'] / 60:.1f}" if "step2_seconds" in r else "-"]
            for name, r in (result.get("results") or {}).items()]
    if not rows:
        raise ValueError("step2_guided.json has no 'results' entry")
    text = markdown_table(["step 2", "val mIoU", "val mIoU, prediction guided-filtered", "step 2 minutes"], rows)
    what = {"raw": "the network's arg-max", "guided": "the guided-filtered arg-max"}
    for kind, b in (result.get("bootstrap_guided_minus_plain") or {}).items():
        text += (f"\n\nGuided-filter layer minus plain, {what.get(kind, kind)}: {100 * b['delta']:+.2f} points, "
                 f"95% interval [{100 * b['low']:+.2f}, {100 * b['high']:+.2f}] over {b['n_images']} val images.")
    return text


def paired_delta(arrays: Mapping[str, Any], key_a: str, key_b: str, n_resamples: int = 2000, seed: int = 0):
    """``mIoU(a) - mIoU(b)`` in points with its 95% paired-bootstrap interval, from two ``(N, C, C)`` arrays of
    ``arrays``: a dict ``delta``, ``low``, ``high``, ``images``; None when either key is missing."""
    from sgwsss.evaluate.bootstrap import paired_bootstrap

    if key_a not in arrays or key_b not in arrays:
        return None
    r = paired_bootstrap(arrays[key_a], arrays[key_b], n_resamples=n_resamples, seed=seed)
    return {"delta": 100 * r.delta, "low": 100 * r.low, "high": 100 * r.high, "images": r.n_images}


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
        _, ax = plt.subplots(figsize=(12, 4.8))  # readable at a 1280-px page width
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, vals) in enumerate(series.items()):
        v = [np.nan if a is None else 100 * a for a in vals]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=10)
    ax.set_xticks(x, names, fontsize=12)
    ax.set_ylabel("mIoU (%)", fontsize=12)
    ax.set_title("Table 1's stages measured on the VOC sample", fontsize=14)
    ax.legend(fontsize=11, loc="lower right")
    return ax.figure
