"""Live refinement figures for the static book: the refinement stages run in the reader's browser.

:func:`live_figure` embeds, for a few training images, only what a browser cannot compute
(the RGB pixels, losslessly; the network's low-resolution maps of the present classes;
the aggregation features on the affinity grid; optionally the ground truth) and returns an
HTML display object. On the rendered book page the module ``_static/sgwsss_live.mjs``
(with ``sgwsss_live_core.mjs``, the operators, ``sgwsss_live_worker.mjs`` and
``sgwsss_live_wasm.mjs``, WebAssembly SIMD kernels assembled at load time: plain ES modules
served by Sphinx from ``html_static_path``; ``.mjs`` because Jupyter Book adds every
``_static/**/*.js`` to each page as a classic script) reproduces the package's operators --
Otsu's threshold, the colour guided filter (Eqs. 6-8) and its iterations, the affinity
random walk (Eqs. 2, 3, 5), Eq. 11, the stages as :func:`sgwsss.refine.stages.refine_stage`
assembles them (stage A: normalise, then upsample) -- and redraws the figure when a control
moves. Where the module cannot run (Jupyter, Colab, a browser without the features) a static
figure of the default setting stays, with one line saying why.

A chapter uses it as::

    from sgwsss.book import live
    explorers = [book.Explorer(model, train[i], config=meta["config"]) for i in (3, 10, 40, 80, 120, 200)]
    live.live_figure(explorers, controls=("image", "class", "stage", "radius", "eps", "iterations", "threshold"))

and tags the cells whose ipywidgets need a kernel with the cell tag ``sgwsss-kernel-only``:
on the static book page the module hides their outputs (with one line saying why); in a
kernel they stay. :func:`stage_maps` is the Python computation the browser reproduces.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["LiveImage", "LiveFigure", "live_figure", "as_live_image", "stage_maps", "image_payload",
           "fnv1a", "MODULE_FILES", "CONTROLS", "write_page", "serve", "demo_image"]

#: The files of the browser module, in the repository's ``_static/`` (served with the book).
MODULE_FILES = ("sgwsss_live.mjs", "sgwsss_live_core.mjs", "sgwsss_live_worker.mjs", "sgwsss_live_wasm.mjs")
#: Control names accepted by ``live_figure(controls=...)``.
CONTROLS = ("image", "class", "stage", "beta", "steps", "threshold", "radius", "eps", "iterations")
_VERSION = 1


@dataclass
class LiveImage:
    """One image's inputs of the live figure.

    ``image`` (3, H, W) float in [0, 1] holding 8-bit values (``k / 255``, as the data
    loader makes them); ``cam`` (C, h, w) the network's raw localization maps;
    ``labels`` (C,) image-level labels; ``feat`` (k, h', w') the aggregation features
    (resampled to the grid here); ``mask`` (H, W) optional ground truth for display.
    """

    id: str
    image: Any
    cam: Any
    labels: Any
    feat: Any
    mask: Any = None


def as_live_image(obj) -> LiveImage:
    """A :class:`LiveImage` from an :class:`~sgwsss.book.Explorer`, a dict or a LiveImage."""
    if isinstance(obj, LiveImage):
        return obj
    if isinstance(obj, dict):
        missing = [k for k in ("image", "cam", "labels", "feat") if k not in obj]
        if missing:
            raise ValueError(f"a live image dict needs the keys image, cam, labels, feat; missing {missing}")
        return LiveImage(str(obj.get("id", "image")), obj["image"], obj["cam"], obj["labels"], obj["feat"],
                         obj.get("mask"))
    if all(hasattr(obj, a) for a in ("image", "cam", "labels", "item")):
        if getattr(obj, "feat", None) is None:
            raise ValueError("the Explorer has no aggregation features (.feat); build it with this version of "
                             "sgwsss.book.Explorer")
        item = obj.item
        return LiveImage(str(item.get("id", "image")), obj.image[0], obj.cam[0], obj.labels[0], obj.feat[0],
                         item.get("mask"))
    raise TypeError(f"cannot make a live image from {type(obj).__name__}; pass an Explorer, a dict or a LiveImage")


def fnv1a(data: bytes) -> int:
    """FNV-1a (32 bit) of ``data``: the checksum the browser verifies after decoding the pixels."""
    h = 0x811C9DC5
    for b in data:  # sequential by definition
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _image_u8(image) -> np.ndarray:
    """(3, H, W) float image of 8-bit values -> (H, W, 3) uint8; a clear error otherwise."""
    a = _to_numpy(image)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {a.shape}")
    u8 = np.clip(np.round(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if not np.array_equal(u8.astype(np.float32) / np.float32(255), a.astype(np.float32)):
        raise ValueError("image must hold 8-bit values (k / 255 in float32, as VOCSegmentation gives them): the "
                         "browser's guided filter needs the exact guide the Python side uses")
    return np.ascontiguousarray(u8.transpose(1, 2, 0))


def _lossless(pixels: np.ndarray) -> dict:
    """(H, W, 3) or (H, W) uint8 -> {mime, data (base64), fnv1a}: lossless WebP, else PNG."""
    from PIL import Image, features

    im = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    buf = io.BytesIO()
    if pixels.ndim == 3 and features.check("webp"):
        im.save(buf, "WEBP", lossless=True, quality=100, method=5, exact=True)
        mime = "image/webp"
    else:
        im.save(buf, "PNG", optimize=True)
        mime = "image/png"
    data = buf.getvalue()
    back = np.asarray(Image.open(io.BytesIO(data)).convert(im.mode))
    if not np.array_equal(back, pixels):  # pragma: no cover - a broken codec
        raise RuntimeError(f"the {mime} encoder is not lossless here")
    return {"mime": mime, "data": base64.b64encode(data).decode("ascii"), "fnv1a": fnv1a(pixels.tobytes())}


def _b64_float32(x) -> str:
    a = np.ascontiguousarray(_to_numpy(x), dtype="<f4")
    return base64.b64encode(a.tobytes()).decode("ascii")


def _present(labels) -> list[int]:
    return [int(c) for c in np.nonzero(_to_numpy(labels) != 0)[0]]


def image_payload(img: LiveImage, grid: int) -> dict:
    """What the page embeds for one image (see the module docstring)."""
    import torch

    from sgwsss.refine.affinity import resize_to_grid

    rgb = _image_u8(img.image)
    cam = torch.as_tensor(_to_numpy(img.cam), dtype=torch.float32)
    present = _present(img.labels)
    if cam.ndim != 3 or len(_to_numpy(img.labels)) != cam.shape[0]:
        raise ValueError(f"cam must be (C, h, w) with one label per class, got cam {tuple(cam.shape)} and "
                         f"labels {np.shape(_to_numpy(img.labels))}")
    if not present:
        raise ValueError(f"image {img.id}: no present class in labels; the live figure needs at least one")
    feat = torch.as_tensor(_to_numpy(img.feat), dtype=torch.float32)
    if feat.ndim != 3:
        raise ValueError(f"feat must be (k, h, w), got {tuple(feat.shape)}")
    fg = resize_to_grid(feat[None], grid)[0]
    out = {
        "id": img.id, "h": int(rgb.shape[0]), "w": int(rgb.shape[1]), "classes": present,
        "rgb": _lossless(rgb),
        "cam": {"h": int(cam.shape[1]), "w": int(cam.shape[2]), "data": _b64_float32(cam[present])},
        "feat": {"k": int(fg.shape[0]), "grid": int(grid), "data": _b64_float32(fg)},
    }
    if img.mask is not None:
        mask = _to_numpy(img.mask).astype(np.uint8)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask must have shape {rgb.shape[:2]}, got {mask.shape}")
        out["mask"] = _lossless(np.ascontiguousarray(mask))
    return out


def stage_maps(img: LiveImage, stage: str = "G-iter15", *, grid: int = 50, beta: float = 1.0, steps: int = 1,
               radius: int = 17, eps: float = 1e-6, iterations: int | None = None, threshold: float | None = None,
               dtype=None):
    """The Python computation the live figure reproduces: (maps (K, H, W), labels (H, W)).

    ``maps`` are the present classes' maps of ``stage`` (:func:`sgwsss.refine.stages.refine_stage`
    when the settings are a Table 1 stage's: one walk step, the stage's iterations, Otsu);
    otherwise the same operators with ``steps`` walk steps, ``iterations`` refinement
    iterations and a fixed ``threshold``. ``labels`` are Eq. 11 of those maps.
    ``dtype`` (default float32, the book's) is the computation's precision.
    """
    import torch
    import torch.nn.functional as F

    from sgwsss.constants import STAGES
    from sgwsss.refine.affinity import affinity_matrix, resize_to_grid, transition_matrix
    from sgwsss.refine.pseudo_label import pseudo_label
    from sgwsss.refine.random_walk import random_walk
    from sgwsss.refine.self_guided import self_guided_refine
    from sgwsss.refine.stages import normalize_maps, refine_stage

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    dtype = torch.float32 if dtype is None else dtype
    image = torch.as_tensor(_to_numpy(img.image)).to(dtype)[None]
    cam = torch.as_tensor(_to_numpy(img.cam)).to(dtype)[None]
    labels = torch.as_tensor(_to_numpy(img.labels)).float()[None]
    feat = torch.as_tensor(_to_numpy(img.feat)).to(dtype)[None]
    present = _present(img.labels)
    transition = transition_matrix(affinity_matrix(resize_to_grid(feat.float(), grid).to(dtype), grid=grid), beta)
    stage_iters = {"A": 0, "R": 0, "G-w/o-aff": 1, "G": 1, "G-iter15-w/o-aff": 15, "G-iter15": 15}[stage]
    k = stage_iters if iterations is None or stage_iters == 0 else int(iterations)
    with torch.no_grad():
        if steps == 1 and k == stage_iters and threshold is None:
            maps = refine_stage(stage, image, cam, labels, transition, grid=grid, radius=radius, eps=eps)
        else:
            a = normalize_maps(cam, labels)
            size = tuple(image.shape[-2:])
            if stage in ("A", "G-w/o-aff", "G-iter15-w/o-aff"):
                maps = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            else:
                r = random_walk(transition, resize_to_grid(a, grid), steps=steps)
                maps = F.interpolate(r.to(a.dtype), size=size, mode="bilinear", align_corners=False)
            if k > 0:
                maps = self_guided_refine(image, maps, iterations=k, radius=radius, eps=eps, labels=labels,
                                          threshold=threshold)
        return maps[0, present], pseudo_label(maps, labels)[0]


def _jet(v: np.ndarray) -> np.ndarray:
    """matplotlib's 'jet' as the module draws it: (...,) in [0, 1] -> (..., 3) in [0, 1]."""
    v = np.round(np.clip(v, 0, 1) * 255) / 255
    return np.clip(1.5 - np.abs(4 * v[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def render_static(img: LiveImage, maps, labels, slot: int = 0, *, scale: float = 0.5, gap: int = 6) -> bytes:
    """The figure the module draws (map of class ``slot`` | pseudo label | ground truth), as a JPEG.

    Shown where the module cannot run; ``scale`` shrinks it to keep the page small.
    """
    from PIL import Image

    from sgwsss.data import PALETTE

    rgb = _image_u8(img.image).astype(np.float64)
    m = _to_numpy(maps[slot]).astype(np.float64)
    panels = [0.5 * rgb + 0.5 * 255 * _jet(m), 0.45 * rgb + 0.55 * PALETTE[_to_numpy(labels).astype(np.intp)]]
    if img.mask is not None:
        panels.append(0.45 * rgb + 0.55 * PALETTE[_to_numpy(img.mask).astype(np.intp)])
    white = np.full((rgb.shape[0], gap, 3), 255.0)
    canvas = np.concatenate([p if i == 0 else np.concatenate([white, p], 1) for i, p in enumerate(panels)], 1)
    im = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=82)
    return buf.getvalue()


def _config_values(config, images) -> dict:
    """grid, beta, radius, eps of the run: ``config`` (a TrainConfig, preset name, checkpoint dict or a
    dict of just these four), else the first Explorer's configuration, else the paper's defaults."""
    from sgwsss.train.config import TrainConfig, as_config

    keys = ("grid", "beta", "radius", "eps")
    if config is None:
        config = next((i.config for i in images if getattr(i, "config", None) is not None), None)
    if isinstance(config, dict) and set(config) <= set(keys):
        missing = [k for k in keys if k not in config]
        if missing:
            raise ValueError(f"config dict needs grid, beta, radius and eps; missing {missing}")
        values = dict(config)
    else:
        cfg = TrainConfig() if config is None else as_config(config)
        values = {k: getattr(cfg, k) for k in keys}
    return {"grid": int(values["grid"]), "beta": float(values["beta"]), "radius": int(values["radius"]),
            "eps": float(values["eps"])}


_BOOTSTRAP = """
const root = document.getElementById(%(uid)s);
const note = root.querySelector(".sgwsss-live-note");
const book = !!document.documentElement.dataset.content_root;
const url = %(url)s || (book ? document.documentElement.dataset.content_root + "_static/sgwsss_live.mjs" : "");
const hideKernelOnly = () => {
  for (const n of document.querySelectorAll(".tag_sgwsss-kernel-only .cell_output, [data-sgwsss-kernel-only]")) {
    if (n.dataset.sgwsssHidden) continue;
    n.dataset.sgwsssHidden = "1"; n.style.display = "none";
    const p = document.createElement("p"); p.className = "sgwsss-live-kernel-note";
    p.textContent = "These ipywidgets controls need a running kernel (open the chapter in Colab or Jupyter).";
    n.after(p);
  }
};
if (!url) {
  note.textContent = "Static figure (default settings): the live version runs on the rendered book page; " +
    "with a kernel, use the ipywidgets controls.";
} else {
  import(url).then((m) => m.mount(root)).catch((e) => {
    if (root.getAttribute("data-state") !== "failed") {
      root.setAttribute("data-state", "failed");
      note.textContent = "Static figure: the live module could not load (" + (e && e.message || e) + ").";
    }
    if (book) hideKernelOnly();
  });
}
"""


class LiveFigure:
    """The HTML of a live figure (``_repr_html_``: Jupyter and Jupyter Book display it).

    Built by :func:`live_figure`. ``html`` is the element; ``sizes()`` the embedded bytes
    per image and in all; ``payload`` the data the module reads.
    """

    def __init__(self, payload: dict, static_jpeg: bytes | None, module_url: str | None = None):
        self.payload = payload
        self.static_jpeg = static_jpeg
        self.module_url = module_url
        self.uid = "sgwsss-live-" + uuid.uuid4().hex[:10]

    @property
    def html(self) -> str:
        data = json.dumps(self.payload, separators=(",", ":")).replace("</", "<\\/")
        boot = _BOOTSTRAP % {"uid": json.dumps(self.uid), "url": json.dumps(self.module_url)}
        img = ""
        if self.static_jpeg is not None:
            src = "data:image/jpeg;base64," + base64.b64encode(self.static_jpeg).decode("ascii")
            first = self.payload["images"][0]["id"]
            img = (f'<img class="sgwsss-live-static" src="{src}" style="max-width:100%" '
                   f'alt="{html.escape(first)}: map, pseudo label (default settings)"/>')
        note = ("Static figure (default settings): the live version runs on the rendered book page, "
                "where scripts may run.")
        return (f'<div class="sgwsss-live" id="{self.uid}">{img}'
                f'<p class="sgwsss-live-note" style="font-size:.85em;color:#555">{note}</p>'
                f'<script type="application/json" class="sgwsss-live-data">{data}</script>'
                f'<script type="module">{boot}</script></div>')

    def _repr_html_(self) -> str:
        return self.html

    def sizes(self) -> dict:
        """Embedded bytes (as base64 text) per image and part, the static figure, and the whole element."""
        per = []
        for im in self.payload["images"]:
            parts = {k: len(im[k]["data"]) for k in ("rgb", "cam", "feat", "mask") if k in im}
            per.append({"id": im["id"], **parts, "total": sum(parts.values())})
        static = 0 if self.static_jpeg is None else (len(self.static_jpeg) + 2) // 3 * 4
        return {"images": per, "static": static, "html": len(self.html.encode())}


def live_figure(images: Sequence, *, config=None, controls: Sequence[str] | None = None, defaults: dict | None = None,
                module_url: str | None = None, static: bool = True) -> LiveFigure:
    """A live refinement figure for ``images`` (Explorers, dicts or :class:`LiveImage`).

    ``config``: the run's grid, beta, radius, eps (default: the first Explorer's
    configuration); ``controls``: which of :data:`CONTROLS` to show (default all);
    ``defaults``: initial values (``stage``, ``iterations``, ``beta``, ``steps``,
    ``radius``, ``eps``, ``threshold`` (None: Otsu), ``image``); ``module_url``: where the
    module is (default: the book's ``_static/`` next to the page); ``static``: embed a
    static figure of the defaults (computed here with :func:`stage_maps`) for front-ends
    where the module cannot run.
    """
    from sgwsss.data import CLASSES, PALETTE

    images = list(images)
    if not images:
        raise ValueError("live_figure needs at least one image")
    cfg = _config_values(config, images)
    controls = list(CONTROLS if controls is None else controls)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown controls {unknown}; valid: {', '.join(CONTROLS)}")
    defaults = {"stage": "G-iter15", **(defaults or {})}
    live = [as_live_image(i) for i in images]
    payload = {
        "version": _VERSION, "config": cfg, "controls": controls, "defaults": defaults,
        "classNames": list(CLASSES), "palette": bytes(np.asarray(PALETTE, dtype=np.uint8).reshape(-1)).hex(),
        "images": [image_payload(i, cfg["grid"]) for i in live],
    }
    jpeg = None
    if static:
        first = live[int(defaults.get("image", 0))]
        d = {k: defaults[k] for k in ("iterations", "steps", "threshold") if k in defaults}
        maps, labels = stage_maps(first, defaults["stage"], grid=cfg["grid"], beta=defaults.get("beta", cfg["beta"]),
                                  radius=defaults.get("radius", cfg["radius"]), eps=defaults.get("eps", cfg["eps"]), **d)
        jpeg = render_static(first, maps, labels)
    return LiveFigure(payload, jpeg, module_url)


def module_dir() -> Path:
    """The repository's ``_static/`` folder holding :data:`MODULE_FILES` (a clone, not a pip install)."""
    path = Path(__file__).resolve().parents[2] / "_static"
    missing = [f for f in MODULE_FILES if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"the live module files {missing} are not in {path} (they ship with the repository's "
                                f"_static/, not with a pip install)")
    return path


def write_page(folder, figure: LiveFigure, *, book_page: bool = True, name: str = "index.html",
               extra_html: str = "") -> Path:
    """A standalone page holding ``figure``, the module copied into ``folder/_static`` (for tests, benchmarks).

    ``book_page=True`` marks the page as the static book does (``data-content_root``), so
    kernel-only outputs are hidden; ``extra_html`` goes before the figure.
    """
    folder = Path(folder)
    (folder / "_static").mkdir(parents=True, exist_ok=True)
    for f in MODULE_FILES:
        shutil.copyfile(module_dir() / f, folder / "_static" / f)
    root = ' data-content_root="./"' if book_page else ""
    if figure.module_url is None and not book_page:
        figure = LiveFigure(figure.payload, figure.static_jpeg, "./_static/sgwsss_live.mjs")
    page = (f'<!DOCTYPE html><html lang="en"{root}><head><meta charset="utf-8"><title>sgwsss live</title></head>'
            f'<body style="max-width:1200px;margin:1em auto;font-family:sans-serif">{extra_html}'
            f'{figure.html}</body></html>')
    out = folder / name
    out.write_text(page, encoding="utf-8")
    return out


@contextlib.contextmanager
def serve(folder):
    """Serve ``folder`` over HTTP on localhost (module workers do not load from file://); yields the base URL."""
    import functools
    import http.server
    import socketserver
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def demo_image(item, classes: Sequence[int] = (6, 11, 14), seed: int = 0) -> LiveImage:
    """A real VOC image (a ``VOCSegmentation`` item) with smooth synthetic maps of ``classes``
    (overlapping Gaussian blobs at stride 16) and synthetic features (stride 4): inputs for tests and
    benchmarks that need no trained network."""
    import torch

    g = torch.Generator().manual_seed(seed)
    image = item["image"]
    h, w = image.shape[-2:]
    ch, cw = -(-h // 16), -(-w // 16)
    y, x = torch.meshgrid(torch.arange(ch, dtype=torch.float32), torch.arange(cw, dtype=torch.float32), indexing="ij")
    cam = torch.randn(20, ch, cw, generator=g) * 0.05
    spots = [(0.45, 0.4, 1.0, 2.0), (0.55, 0.6, 1.3, 1.5), (0.5, 0.5, 0.8, 1.8), (0.3, 0.7, 0.9, 1.6)]
    for c, (fy, fx, s, a) in zip(classes, spots * (1 + len(classes) // len(spots))):
        cam[c] += a * torch.exp(-((y - ch * fy) ** 2 + (x - cw * fx) ** 2) / (2 * (s * ch / 5) ** 2))
    labels = torch.zeros(20)
    labels[list(classes)] = 1
    small = torch.nn.functional.interpolate(image[None], size=(-(-h // 4), -(-w // 4)), mode="bilinear",
                                            align_corners=False, antialias=True)[0]
    mix = torch.randn(3, 3, generator=g)
    feat = torch.einsum("ck,khw->chw", mix, small) * 3 + 0.02 * torch.randn(small.shape, generator=g)
    return LiveImage(str(item["id"]), image, cam, labels, feat, item.get("mask"))
