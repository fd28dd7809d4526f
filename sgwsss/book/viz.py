"""Figures used by the book: sample grids, class-frequency bars, map overlays.

Every function returns the matplotlib ``Figure`` it drew so a chapter can show or
save it; none of them computes anything the package does not already provide.

All of them draw in the book's style (:data:`BOOK_STYLE`, applied once, the first time a
figure is drawn): figures at most 9 inches wide with 14 pt panel titles and colour-bar labels,
so that on the rendered page (a 1280-px browser shows a figure at most 688 px wide) they are at
least the size of the body's small print (14 px, measured in headless Chromium). Label maps (pseudo
labels, ground truth, predictions) are drawn in the VOC palette blended over the image, with
each region's outline (:func:`overlay_labels`), so a dark class colour stays visible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


#: The book's matplotlib style (rcParams). In a 1280-px browser the book's text column is 688 px wide and its
#: small print (code, outputs, tables) 14 px; a figure of at most MAX_WIDTH = 9 in at 100 dpi (900 px) is shown
#: at 0.76 of its size or more, so 14 pt titles and colour-bar labels (19.4 px in the PNG) read as 14.7 px or more.
BOOK_STYLE = {
    "font.size": 13,
    "axes.titlesize": 14,
    "axes.labelsize": 14,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 13,
    "figure.titlesize": 15,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
#: Widest figure the book draws (inches): wider ones would shrink their text below the small print.
MAX_WIDTH = 9.0
_styled = False


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib's rcParams (once; every figure function calls it)."""
    global _styled
    import matplotlib

    if not _styled:
        matplotlib.rcParams.update(BOOK_STYLE)
        _styled = True


def _plt():
    import matplotlib.pyplot as plt

    use_book_style()
    return plt


def _width(per_panel: float, n: int) -> float:
    return min(per_panel * n, MAX_WIDTH)


def overlay_labels(image, labels, *, alpha: float = 0.6, outline: bool = True) -> np.ndarray:
    """A label map (H, W) of VOC indices drawn over ``image``: (H, W, 3) uint8.

    Each class pixel is blended with its VOC palette colour (weight ``alpha``); background (0)
    keeps the image, slightly dimmed; ``255`` (ignored) is blended with white. With
    ``outline`` the boundary pixels of every region are drawn in white, so that even the
    darkest palette colours (cat, aeroplane) stand out.
    """
    from sgwsss.data import PALETTE

    rgb = to_hwc_uint8(image).astype(np.float32)
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"labels must have the image's size {rgb.shape[:2]}, got {lab.shape}")
    out = rgb * 0.85
    fg = (lab > 0) & (lab < 255)
    colour = PALETTE[np.clip(lab, 0, 255)].astype(np.float32)
    out[fg] = (1 - alpha) * rgb[fg] + alpha * colour[fg]
    ignore = lab == 255
    out[ignore] = 0.5 * rgb[ignore] + 0.5 * 255
    if outline:
        edge = np.zeros(lab.shape, bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[1:] |= lab[1:] != lab[:-1]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        out[edge] = 255
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _legend(fig, classes, *, ncol: int = 7):
    """A legend of VOC class colours for the class indices ``classes`` (background and 255 left out)."""
    import matplotlib.patches as mpatches

    from sgwsss.data import CLASSES, PALETTE

    handles = [mpatches.Patch(facecolor=PALETTE[c] / 255.0, edgecolor="k", label=CLASSES[c])
               for c in sorted(set(int(c) for c in classes)) if 0 < c < len(CLASSES)]
    if handles:
        constrained = type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
        fig.legend(handles=handles, loc="outside lower center" if constrained else "lower center",
                   ncol=min(len(handles), ncol), frameon=False)
    return handles


def to_hwc_uint8(image) -> np.ndarray:
    """(3,H,W) float tensor/array in [0,1] or (H,W,3) uint8 -> (H,W,3) uint8."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr


def show_samples(dataset, indices: Sequence[int], *, ncols: int = 4, title: str | None = None):
    """Grid of images (top) and their ground-truth masks (bottom, blended over the image in the VOC
    palette), titled with the image-level labels: what the method may use (labels) and what it
    must not (masks)."""
    from sgwsss.data import label_to_names

    plt = _plt()
    indices = list(indices)
    ncols = max(1, min(ncols, len(indices)))
    nrows = 2 * ((len(indices) + ncols - 1) // ncols)
    width = _width(2.25, ncols) if ncols > 1 else 5.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, width / ncols * 0.82 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, idx in enumerate(indices):
        item = dataset[idx]
        r, c = 2 * (k // ncols), k % ncols
        axes[r, c].imshow(to_hwc_uint8(item["image"]))
        axes[r, c].set_title(", ".join(label_to_names(item["label"])) or "(no object)")
        if "mask" in item:
            axes[r + 1, c].imshow(overlay_labels(item["image"], item["mask"]))
            axes[r + 1, c].set_title(f"{item['id']} (mask)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_frequency_bar(counts, class_names: Sequence[str], *, title: str = "Images per class"):
    """Horizontal bar chart of how many images contain each class, sorted."""
    plt = _plt()
    counts = np.asarray(counts)
    order = np.argsort(counts)
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 0.32 * len(counts) + 1.2))
    ax.barh([class_names[i] for i in order], counts[order], color="tab:blue")
    for y, v in enumerate(counts[order]):
        ax.text(v, y, f" {int(v)}", va="center", fontsize=11)
    ax.set_xlabel("number of images containing the class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import io

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure_to_jpeg(fig, dpi: int = 100, quality: int = 90) -> bytes:
    """Render a matplotlib figure to JPEG bytes and close it: photo-heavy frames for :func:`frame_slider`
    at about a fifth of the PNG's size."""
    import io

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, bbox_inches="tight", facecolor="white",
                pil_kwargs={"quality": int(quality)})
    plt.close(fig)
    return buf.getvalue()


def _image_mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    raise ValueError("frame_slider frames must be PNG or JPEG bytes (figure_to_png / figure_to_jpeg)")


def frame_slider(frames: Sequence[bytes], labels: Sequence[str], *, title: str = "", start: int = 0):
    """A kernel-free slider over pre-rendered PNG or JPEG frames (for the static book).

    ``frames`` are PNG or JPEG bytes (see :func:`figure_to_png`, :func:`figure_to_jpeg`), ``labels`` the slider's
    value names. Returns an ``IPython.display.HTML`` object holding the images
    (base64) and a few lines of JavaScript that swap them as the slider moves, so
    a reader of the rendered page can move it with no kernel at all.
    """
    import base64
    import html
    import uuid

    from IPython.display import HTML

    if len(frames) != len(labels) or not frames:
        raise ValueError(f"frame_slider needs as many labels as frames, got {len(frames)} frames and {len(labels)} labels")
    uid = "sgw" + uuid.uuid4().hex[:8]
    srcs = [f"data:{_image_mime(f)};base64," + base64.b64encode(f).decode("ascii") for f in frames]
    imgs = "".join(
        f'<img src="{s}" style="display:{"block" if i == start else "none"};max-width:100%" '
        f'data-frame="{i}" alt="{html.escape(str(lab))}"/>'
        for i, (s, lab) in enumerate(zip(srcs, labels))
    )
    import json

    body = f"""
<div class="sgwsss-frame-slider" id="{uid}">
  <div style="font-weight:bold">{html.escape(title)}</div>
  <input type="range" min="0" max="{len(frames) - 1}" value="{start}" step="1" style="width:60%"/>
  <span class="sgwsss-frame-label">{html.escape(str(labels[start]))}</span>
  {imgs}
</div>
<script>
(function() {{
  var root = document.getElementById("{uid}");
  var labels = {json.dumps([str(lab) for lab in labels])};
  var slider = root.querySelector("input[type=range]");
  var imgs = root.querySelectorAll("img[data-frame]");
  slider.addEventListener("input", function() {{
    for (var i = 0; i < imgs.length; i++) imgs[i].style.display = (i == slider.value) ? "block" : "none";
    root.querySelector(".sgwsss-frame-label").textContent = labels[slider.value];
  }});
}})();
</script>"""
    return HTML(body)


def interactive_figure(draw, **controls):
    """Widget controls that redraw a matplotlib figure.

    ``draw(**values) -> Figure`` is called with the controls' values (ipywidgets
    ``ValueWidget``s passed by keyword) once at start-up and again whenever one
    changes. The controls are displayed, then the figure as an ordinary image
    output with a display id that later redraws update in place: the first
    rendering stays in the notebook as a static image for readers of the rendered
    page, and no ``Output`` widget is needed. Figures are closed after display.
    """
    import ipywidgets as widgets
    from IPython.display import display

    plt = _plt()

    def render():
        fig = draw(**{name: w.value for name, w in controls.items()})
        png = figure_to_png(fig, dpi=90)
        plt.close(fig)
        from IPython.display import Image

        return Image(data=png, format="png")

    display(widgets.HBox(list(controls.values())))
    handle = display(render(), display_id=True)

    def redraw(_change=None):
        handle.update(render())

    for w in controls.values():
        w.observe(redraw, names="value")


def plot_metrics(metrics_path, *, title: str = "Training losses"):
    """Loss curves from a run's ``metrics.jsonl`` (one panel per step of Algorithm 1)."""
    from sgwsss.train import loss_records

    plt = _plt()
    if not Path(metrics_path).exists():
        raise FileNotFoundError(f"no metrics log at {metrics_path}: train with this work_dir first")
    rows = loss_records(metrics_path)
    steps = sorted({(r["round"], r["step"]) for r in rows})
    fig, axes = plt.subplots(1, max(len(steps), 1), figsize=(_width(5, max(len(steps), 1)), 3.6), squeeze=False)
    for ax, (rnd, step) in zip(axes.flat, steps):
        sel = [r for r in rows if (r["round"], r["step"]) == (rnd, step)]
        its = [r["iteration"] for r in sel]
        marker = "o" if len(its) <= 10 else None  # a curve of one or a few points is otherwise invisible
        ax.plot(its, [r["loss"] for r in sel], label="total", marker=marker)
        for key in ("cls", "aff", "seg"):
            if any(key in r for r in sel):
                ax.plot(its, [r.get(key, np.nan) for r in sel], label=key, alpha=0.8, marker=marker)
        name = {1: "step 1: L_cls + λ L_aff", 2: "step 2: L_seg"}.get(step, f"step {step}")
        ax.set_title(f"round {rnd}, {name}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_maps(image, maps, labels, *, title: str = "", cmap: str = "jet", vmax=None):
    """The image and, for each present class, its map overlaid as a heat map.

    image (3,H,W) in [0,1]; maps (20,H,W) (or (20,h,w): shown stretched); labels (20,).
    """
    from sgwsss.data import CLASSES

    plt = _plt()
    maps = maps.detach().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    present = np.flatnonzero(labels > 0.5)
    rgb = to_hwc_uint8(image)
    n = 1 + len(present)
    fig, axes = plt.subplots(1, n, figsize=(_width(3.0, n), 2.9), squeeze=False, layout="constrained")
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image")
    im = None
    for ax, c in zip(axes[0, 1:], present):
        ax.imshow(rgb)
        im = ax.imshow(maps[c], cmap=cmap, alpha=0.5, vmin=0, vmax=vmax if vmax is not None else max(maps[c].max(), 1e-6),
                       extent=(-0.5, rgb.shape[1] - 0.5, rgb.shape[0] - 0.5, -0.5))
        ax.set_title(CLASSES[c + 1])
    for ax in axes.flat:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(axes.flat[1:]), fraction=0.03, label="map value")
    if title:
        fig.suptitle(title)
    return fig


def show_transition_row(image, transition, similarity, *, row: int | None = None, col: int | None = None,
                        transition_title: str = "row of T", similarity_title: str = "row of M (row-normalised)"):
    """One grid cell's row of the transition matrix T (unnumbered in the paper)
    beside its row of the colour similarity M.

    image (1,3,H,W) or (3,H,W) in [0,1]; transition and similarity (1,N,N) or (N,N) with N = g*g
    for a g x g grid; ``row``/``col`` pick the cell (default: the centre). Left: the image with
    the cell marked; middle and right: where a walker standing on the cell steps next.
    """
    plt = _plt()
    image = image[0] if image.ndim == 4 else image
    mats = [m[0] if m.ndim == 3 else m for m in (transition, similarity)]
    n = mats[0].shape[-1]
    g = int(round(n ** 0.5))
    if g * g != n or any(m.shape != (n, n) for m in mats):
        raise ValueError(f"transition and similarity must be (N, N) for a square grid, got "
                         f"{tuple(mats[0].shape)} and {tuple(mats[1].shape)}")
    row = g // 2 if row is None else int(row)
    col = g // 2 if col is None else int(col)
    if not (0 <= row < g and 0 <= col < g):
        raise ValueError(f"row and col must lie in [0, {g - 1}], got ({row}, {col})")
    p = row * g + col
    fig, axes = plt.subplots(1, 3, figsize=(MAX_WIDTH, 3.6))
    h, w = image.shape[-2:]
    axes[0].imshow(to_hwc_uint8(image))
    axes[0].plot((col + 0.5) * w / g, (row + 0.5) * h / g, "w+", ms=14, mew=3)
    axes[0].set_title("image and the chosen cell")
    for ax, mat, name in ((axes[1], mats[0], transition_title), (axes[2], mats[1], similarity_title)):
        values = mat[p].detach().cpu().numpy() if hasattr(mat, "detach") else np.asarray(mat[p])
        im = ax.imshow(values.reshape(g, g), cmap="viridis")
        ax.plot(col, row, "r+", ms=12, mew=2)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046, label="transition probability" if mat is mats[0]
                     else "similarity (row sums to 1)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def show_refinement(image, maps, labels, *, radius: int = 17, eps: float = 1e-6, iterations: int = 1,
                    threshold: float | None = None, cls: int | None = None):
    """One class through the self-guided refinement: the map A, its binarisation B and the guided filter's output.

    image (1,3,H,W) in [0,1]; maps (1,20,H,W) localization maps at the image size; labels (1,20).
    ``cls`` (0-based channel) defaults to the first present class; ``threshold=None`` binarises
    with Otsu's threshold, as :func:`sgwsss.refine.self_guided.self_guided_refine` does.
    """
    import torch

    from sgwsss.data import CLASSES
    from sgwsss.refine.otsu import otsu_threshold
    from sgwsss.refine.self_guided import self_guided_refine

    plt = _plt()
    present = torch.nonzero(torch.as_tensor(labels)[0] > 0.5).flatten().tolist()
    c = (present[0] if present else 0) if cls is None else int(cls)
    a = maps[:, c:c + 1]
    t = float(otsu_threshold(a)[0, 0]) if threshold is None else float(threshold)
    q = self_guided_refine(image, a, iterations=iterations, radius=radius, eps=eps, threshold=threshold)
    fig, axes = plt.subplots(1, 4, figsize=(MAX_WIDTH, 3.2))
    a, b, q = (m[0, 0].detach().cpu().float().numpy() for m in (a, (a > t).float(), q))
    panels = [(to_hwc_uint8(image[0]), "image", None), (a, f"A ({CLASSES[c + 1]})", "jet"),
              (b, f"B = A > {t:.2f}" + (" (Otsu)" if threshold is None else ""), "gray"),
              (q, f"guided filter x{iterations}", "jet")]
    im = None
    for ax, (img, name, cmap) in zip(axes, panels):
        shown = ax.imshow(img, cmap=cmap, vmin=None if cmap is None else 0, vmax=None if cmap is None else 1)
        im = shown if cmap == "jet" else im
        ax.set_title(name)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.02, label="map value")
    fig.suptitle(f"radius {radius} (window {2 * radius + 1}), eps {eps:.0e}")
    return fig


def show_label_maps(image, label_maps: dict, *, gt=None, title: str = "", ncols: int = 4):
    """The image, optionally its ground truth, and several label maps (name -> (H,W) ints), each drawn
    in the VOC palette blended over the image (:func:`overlay_labels`), with a legend of the classes
    that appear."""
    plt = _plt()
    panels = [("image", to_hwc_uint8(image))]
    if gt is not None:
        panels.append(("ground truth", overlay_labels(image, np.asarray(gt))))
    shown = set()
    for name, lab in label_maps.items():
        lab = np.asarray(lab.detach().cpu() if hasattr(lab, "detach") else lab)
        shown |= set(np.unique(lab).tolist())
        panels.append((name, overlay_labels(image, lab)))
    if gt is not None:
        shown |= set(np.unique(np.asarray(gt)).tolist())
    ncols = min(ncols, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    width = _width(2.25, ncols)
    h, w = panels[0][1].shape[:2]
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * (width / ncols) * h / w + 0.9), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, panels):
        ax.imshow(img)
        ax.set_title(name)
    _legend(fig, shown, ncol=6)
    if title:
        fig.suptitle(title)
    return fig


def pipeline_figure(explorer, *, stages=("A", "R", "G", "G-iter15")):
    """The pipeline at a glance on one image (an :class:`sgwsss.book.Explorer`), two rows at the page's width:
    the image, the maps of each stage (strongest present class per pixel, ÷ its maximum), the pseudo
    labels of the last stage (Eq. 11) and the ground truth, both in the VOC palette over the image."""
    plt = _plt()
    item = explorer.item
    names = ", ".join(_names(item["label"]))
    panels = [("image", to_hwc_uint8(item["image"]), None)]
    for s in stages:
        strongest = explorer.stage(s)[0].max(0).values.cpu().numpy()
        panels.append((f"stage {s}", strongest / max(float(strongest.max()), 1e-12), "jet"))
    label = explorer.pseudo_label(stages[-1]).cpu().numpy()
    panels.append((f"{stages[-1]} labels", overlay_labels(item["image"], label), None))
    shown = set(np.unique(label).tolist())
    if "mask" in item:
        mask = np.asarray(item["mask"])
        panels.append(("ground truth", overlay_labels(item["image"], mask), None))
        shown |= set(np.unique(mask).tolist())
    ncols = (len(panels) + 1) // 2
    h, w = panels[0][1].shape[:2]
    width = MAX_WIDTH
    fig, axes = plt.subplots(2, ncols, figsize=(width, 2 * (width / ncols) * h / w + 1.3), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for ax, (name, img, cmap) in zip(axes.flat, panels):
        shown_im = ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
        im = shown_im if cmap else im
        ax.set_title(name)
    if im is not None:
        fig.colorbar(im, ax=list(axes.flat[1:1 + len(stages)]), fraction=0.03, label="strongest map ÷ max")
    _legend(fig, shown)
    fig.suptitle(f"{item['id']} ({names}): maps → random walk → guided filter → labels")
    return fig


def _names(label):
    from sgwsss.data import label_to_names

    return label_to_names(label)
