// sgwsss live refinement: the page side (controls, canvas figure, Web Workers). Plain ES module.
//
// A figure is an element made by sgwsss.book.live (Python) holding a static figure, a note
// line, and its data in <script type="application/json" class="sgwsss-live-data">. The
// element's inline bootstrap imports this module and calls mount(root); if that fails the
// static figure stays and the note says why. On the static book page this module also
// hides the outputs of cells tagged "sgwsss-kernel-only" (ipywidgets that need a kernel).
//
// The numbers come from sgwsss_live_core.mjs (the Python operators, step for step), run in
// up to two module Web Workers (the present classes split between them; they agree on the
// skip_constant crop of each iteration), or on the page when workers are unavailable.
//
// For tests and benchmarks: window.sgwsssLive = {figures, compute(opts), computeEncoded(opts),
// ready}; a figure has set(values) -> Promise (after the redraw), state(), timing.

import * as core from "./sgwsss_live_core.mjs";

const VERSION = 1;
const KERNEL_ONLY = ".tag_sgwsss-kernel-only .cell_output, [data-sgwsss-kernel-only]";

// ------------------------------------------------------------------------------ decoding

function base64Bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function float32s(s) {
  const b = base64Bytes(s);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** FNV-1a (32 bit) of a byte array: the exporter's checksum of the decoded pixels. */
export function fnv1a(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
  return h >>> 0;
}

async function decodePixels(spec, channels) {
  // a lossless WebP/PNG -> planar channels (Uint8Array channels * h * w), checked against the checksum
  const blob = new Blob([base64Bytes(spec.data)], { type: spec.mime });
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width: w, height: h } = bitmap;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const n = w * h;
  const planar = new Uint8Array(channels * n);
  const inter = new Uint8Array(channels * n);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < channels; c++) {
      planar[c * n + i] = rgba[4 * i + c];
      inter[channels * i + c] = rgba[4 * i + c];
    }
  }
  if (fnv1a(inter) !== spec.fnv1a) {
    throw new Error("this browser altered the embedded image's pixels when reading them back " +
      "(a canvas privacy setting?), so it cannot reproduce the book's numbers");
  }
  return { planar, h, w };
}

// ------------------------------------------------------------------------------- workers

class InPage {
  // the worker protocol answered on the page (no Web Workers)
  constructor() { this.engines = new Map(); this.kind = "page"; }
  request(msg) { return Promise.resolve().then(() => core.handleMessage(this.engines, msg).reply); }
}

class WorkerLink {
  constructor(worker) {
    this.worker = worker;
    this.kind = "worker";
    this.next = 0;
    this.pending = new Map();
    worker.onmessage = (e) => {
      const p = this.pending.get(e.data.id);
      this.pending.delete(e.data.id);
      if (!p) return;
      if (e.data.error) p.reject(new Error(e.data.error));
      else p.resolve(e.data.reply);
    };
    worker.onerror = (e) => {
      for (const p of this.pending.values()) p.reject(new Error(e.message || "worker error"));
      this.pending.clear();
    };
  }
  request(msg, transfer) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, msg }, transfer || []);
    });
  }
}

let poolPromise = null;

/** Up to two module workers (the machine's cores), or the page itself when they cannot start. */
function pool() {
  if (poolPromise) return poolPromise;
  poolPromise = (async () => {
    const n = Math.max(1, Math.min(2, navigator.hardwareConcurrency || 2));
    const inPage = async (why) => {
      const link = new InPage();
      return { links: [link], why, simd: (await link.request({ op: "hello" })).simd };
    };
    if (typeof Worker === "undefined" || globalThis.sgwsssLiveNoWorkers) return inPage("no Web Workers");
    try {
      const links = [];
      for (let i = 0; i < n; i++) {
        const link = new WorkerLink(new Worker(new URL("./sgwsss_live_worker.mjs", import.meta.url), { type: "module" }));
        links.push(link);
      }
      const replies = await Promise.all(links.map((l) => Promise.race([l.request({ op: "hello" }),
        new Promise((_, reject) => setTimeout(() => reject(new Error("worker start timed out")), 8000))])));
      return { links, why: "", simd: replies.every((r) => r.simd) };
    } catch (err) {
      return inPage(`module workers unavailable (${err.message || err})`);
    }
  })();
  return poolPromise;
}

// ------------------------------------------------------------------------- computations

function union(parts, h, w) {
  const rows = new Uint8Array(h), cols = new Uint8Array(w);
  for (const p of parts) {
    for (let i = 0; i < h; i++) rows[i] |= p.rows[i];
    for (let i = 0; i < w; i++) cols[i] |= p.cols[i];
  }
  return { rows, cols };
}

/** The settings a computation needs, normalised: {stage, kind, iterations, beta, steps, radius, eps, threshold}. */
export function settingsOf(opts, config) {
  const stage = opts.stage || "G-iter15";
  if (!core.STAGES.includes(stage)) throw new Error(`unknown stage ${stage}; valid: ${core.STAGES.join(", ")}`);
  let iterations = core.STAGE_ITERATIONS[stage];
  if (iterations > 0 && opts.iterations !== undefined && opts.iterations !== null) iterations = opts.iterations | 0;
  if (iterations < 0 || iterations > 50) throw new Error(`iterations must lie in 1..50, got ${opts.iterations}`);
  const num = (v, d) => (v === undefined || v === null ? d : Number(v));
  return {
    stage,
    kind: core.STAGE_SOURCE[stage],
    iterations,
    beta: num(opts.beta, config.beta),
    steps: num(opts.steps, 1) | 0,
    radius: num(opts.radius, config.radius) | 0,
    eps: num(opts.eps, config.eps),
    threshold: opts.threshold === undefined || opts.threshold === null || opts.threshold === "otsu" ? null : Number(opts.threshold),
  };
}

class ImageData_ {
  constructor(spec, index) {
    this.spec = spec;
    this.index = index;
    this.key = `${spec.id}#${index}#${Math.random().toString(36).slice(2)}`;
    this.decoded = null;
    this.sentTo = new Set();
  }
  async decode() {
    if (!this.decoded) {
      this.decoded = (async () => {
        const s = this.spec;
        const { planar, h, w } = await decodePixels(s.rgb, 3);
        if (h !== s.h || w !== s.w) throw new Error(`image ${s.id}: decoded ${w}x${h}, expected ${s.w}x${s.h}`);
        let mask = null;
        if (s.mask) mask = (await decodePixels(s.mask, 1)).planar;
        return {
          rgb: planar, mask,
          data: {
            h, w, rgb: planar, classes: s.classes, cam: float32s(s.cam.data), ch: s.cam.h, cw: s.cam.w,
            feat: float32s(s.feat.data), k: s.feat.k, grid: s.feat.grid,
          },
        };
      })();
    }
    return this.decoded;
  }
}

/**
 * Run one setting on one image: the present classes split over the pool, one round trip
 * per iteration so that all classes use the package's shared skip_constant crop.
 * ``stale()`` returning true abandons the loop (the stored iterations are kept).
 * Returns {maps (per present class), thresholds, labels (Eq. 11), ms} or null if abandoned.
 */
async function runSetting(img, settings, stale = () => false) {
  const t0 = performance.now();
  const { links } = await pool();
  const dec = await img.decode();
  const { h, w } = dec.data;
  const classes = img.spec.classes;
  const slotsOf = links.map((_, i) => classes.map((_, j) => j).filter((j) => j % links.length === i));
  const parts = links.map((link, i) => ({ link, slots: slotsOf[i] })).filter((p) => p.slots.length > 0);
  await Promise.all(parts.map(async (p) => {
    if (!img.sentTo.has(p.link)) {
      img.sentTo.add(p.link);
      await p.link.request({ op: "image", image: img.key, data: dec.data });
    }
  }));
  const job = { kind: settings.kind, iterations: settings.iterations, beta: settings.beta, steps: settings.steps,
    radius: settings.radius, eps: settings.eps, threshold: settings.threshold };
  const ask = (op, extra) => Promise.all(parts.map((p) => p.link.request({ op, image: img.key, job, slots: p.slots, ...extra })));
  const T = settings.iterations;
  if (T > 0) {
    const done = Math.min(...(await ask("status")).map((r) => r.done));
    if (done < T) {
      let rc = await ask("mask", { t: done });
      for (let t = done; t < T; t++) {
        if (stale()) return null;
        const { rows, cols } = union(rc, h, w);
        const box = core.activeRegion(rows, cols, h, w, settings.radius);
        rc = await ask("filter", { box, next: t + 1 < T });
      }
    }
  }
  if (stale()) return null;
  const res = await ask("result", { t: T });
  const maps = new Array(classes.length), thresholds = new Array(classes.length);
  parts.forEach((p, i) => p.slots.forEach((j, s) => { maps[j] = res[i].maps[s]; thresholds[j] = res[i].thresholds[s]; }));
  const { labels } = core.pseudoLabel(maps, classes, h * w, thresholds);
  return { maps, thresholds, labels, classes, h, w, ms: performance.now() - t0 };
}

// -------------------------------------------------------------------------------- drawing

function jet(v) {
  const c = (x) => Math.max(0, Math.min(1, x));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}
const JET = Array.from({ length: 256 }, (_, i) => jet(i / 255).map((x) => Math.round(255 * x)));

function drawPanels(ctx, dec, result, slot, palette, gap) {
  const { h, w } = result;
  const n = h * w;
  const panels = dec.mask ? 3 : 2;
  const img = ctx.createImageData(panels * w + (panels - 1) * gap, h);
  const out = img.data, W = img.width, rgb = dec.rgb;
  const map = result.maps[slot];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const r = rgb[i], g = rgb[n + i], b = rgb[2 * n + i];
      const v = Math.max(0, Math.min(255, Math.round(map[i] * 255)));
      const jc = JET[v];
      let o = 4 * (y * W + x);
      out[o] = 0.5 * r + 0.5 * jc[0]; out[o + 1] = 0.5 * g + 0.5 * jc[1]; out[o + 2] = 0.5 * b + 0.5 * jc[2]; out[o + 3] = 255;
      const pc = palette[result.labels[i]];
      o += 4 * (w + gap);
      out[o] = 0.45 * r + 0.55 * pc[0]; out[o + 1] = 0.45 * g + 0.55 * pc[1]; out[o + 2] = 0.45 * b + 0.55 * pc[2]; out[o + 3] = 255;
      if (dec.mask) {
        const mc = palette[dec.mask[i]];
        o += 4 * (w + gap);
        out[o] = 0.45 * r + 0.55 * mc[0]; out[o + 1] = 0.45 * g + 0.55 * mc[1]; out[o + 2] = 0.45 * b + 0.55 * mc[2]; out[o + 3] = 255;
      }
    }
  }
  for (let y = 0; y < h; y++) for (let p = 1; p < panels; p++) for (let x = 0; x < gap; x++) {
    const o = 4 * (y * W + p * w + (p - 1) * gap + x);
    out[o] = out[o + 1] = out[o + 2] = out[o + 3] = 255;
  }
  ctx.canvas.width = W;
  ctx.canvas.height = h;
  ctx.putImageData(img, 0, 0);
}

// -------------------------------------------------------------------------------- controls

const CONTROL_NAMES = ["image", "class", "stage", "beta", "steps", "threshold", "radius", "eps", "iterations"];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function slider(name, label, min, max, step, value, format) {
  const input = el("input", { type: "range", min, max, step, value: String(value), "data-control": name, "aria-label": label });
  const out = el("output", { class: "sgwsss-live-readout" });
  // the readout shows the value in use (set by the figure), not the slider's snapped position
  const show = (v = Number(input.value)) => { out.textContent = format(v); };
  show(value);
  return { node: el("label", { class: "sgwsss-live-control" }, el("span", { text: label }), input, out), input, show };
}

function select(name, label, options, value) {
  const s = el("select", { "data-control": name, "aria-label": label });
  for (const [v, text] of options) {
    const o = el("option", { value: String(v), text });
    if (String(v) === String(value)) o.selected = true;
    s.append(o);
  }
  return { node: el("label", { class: "sgwsss-live-control" }, el("span", { text: label }), s), input: s };
}

const STYLE = `
.sgwsss-live-controls{display:flex;flex-wrap:wrap;gap:.3em 1.2em;margin:.4em 0;font-size:.9em}
.sgwsss-live-control{display:inline-flex;align-items:center;gap:.4em;margin:0}
.sgwsss-live-control input[type=range]{width:8em}
.sgwsss-live-readout{min-width:3.5em;font-variant-numeric:tabular-nums}
.sgwsss-live-titles{display:flex;font-size:.85em;color:#444}
.sgwsss-live-titles div{flex:1;text-align:center}
.sgwsss-live-canvas{width:100%;height:auto;image-rendering:auto}
.sgwsss-live-status{font-size:.85em;color:#555;margin:.2em 0}
.sgwsss-live-legend{font-size:.85em;display:flex;flex-wrap:wrap;gap:.2em 1em}
.sgwsss-live-legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em;border:1px solid #888}
.sgwsss-live-kernel-note{font-size:.85em;color:#555;font-style:italic}
`;

function injectStyle() {
  if (document.getElementById("sgwsss-live-style")) return;
  document.head.append(el("style", { id: "sgwsss-live-style" }, STYLE));
}

class Figure {
  constructor(root, payload) {
    this.root = root;
    this.p = payload;
    const hex = payload.palette; // 256 VOC colours as hex, rrggbb each
    this.p.palette = Array.from({ length: hex.length / 6 }, (_, i) =>
      [0, 2, 4].map((o) => parseInt(hex.slice(6 * i + o, 6 * i + o + 2), 16)));
    this.images = payload.images.map((s, i) => new ImageData_(s, i));
    const d = payload.defaults || {};
    const cfg = payload.config;
    this.values = {
      image: d.image || 0,
      class: null,
      stage: d.stage || "G-iter15",
      beta: d.beta !== undefined ? d.beta : cfg.beta,
      steps: d.steps || 1,
      thresholdMode: d.threshold === undefined || d.threshold === null ? "otsu" : "manual",
      threshold: d.threshold === undefined || d.threshold === null ? 0.5 : d.threshold,
      radius: d.radius !== undefined ? d.radius : cfg.radius,
      eps: d.eps !== undefined ? d.eps : cfg.eps,
      iterations: d.iterations !== undefined ? d.iterations : Math.max(1, core.STAGE_ITERATIONS[d.stage || "G-iter15"]),
    };
    this.generation = 0;
    this.simd = true;
    this.token = 0;
    this.timing = null;
    this.busy = null;
    this.waiters = [];
  }

  build() {
    injectStyle();
    const shown = new Set(this.p.controls || CONTROL_NAMES);
    const v = this.values, c = {};
    const imgs = this.p.images;
    c.image = select("image", "image", imgs.map((s, i) => [i, `${s.id} (${s.classes.map((k) => this.p.classNames[k + 1]).join(", ")})`]), v.image);
    c.class = select("class", "class", [], "");
    c.stage = select("stage", "stage", core.STAGES.map((s) => [s, s]), v.stage);
    c.beta = slider("beta", "walk beta", -1, 2, 0.01, Math.log10(v.beta), (x) => `${+Math.pow(10, x).toPrecision(3)}`);
    c.steps = slider("steps", "walk steps", 1, 10, 1, v.steps, (x) => `${x}`);
    c.thresholdMode = select("thresholdMode", "threshold", [["otsu", "Otsu"], ["manual", "manual"]], v.thresholdMode);
    c.threshold = slider("threshold", "manual threshold", 0.01, 0.99, 0.01, v.threshold, (x) => x.toFixed(2));
    c.radius = slider("radius", "radius", 1, 40, 1, v.radius, (x) => `${x} (window ${2 * x + 1})`);
    c.eps = slider("eps", "eps", -8, 0, 0.25, Math.log10(v.eps), (x) => `1e${+x.toFixed(2)}`);
    c.iterations = slider("iterations", "iterations", 1, 15, 1, v.iterations, (x) => `${x}`);
    this.controls = c;
    const row = el("div", { class: "sgwsss-live-controls" });
    for (const name of ["image", "class", "stage", "beta", "steps", "thresholdMode", "threshold", "radius", "eps", "iterations"]) {
      const key = name === "thresholdMode" ? "threshold" : name;
      if (shown.has(key) && !(name === "image" && imgs.length < 2)) row.append(c[name].node);
    }
    this.titles = el("div", { class: "sgwsss-live-titles" });
    this.canvas = el("canvas", { class: "sgwsss-live-canvas", "data-sgwsss-live-canvas": "" });
    this.ctx = this.canvas.getContext("2d");
    this.status = el("div", { class: "sgwsss-live-status", role: "status" });
    this.legend = el("div", { class: "sgwsss-live-legend" });
    this.ui = el("div", { class: "sgwsss-live-ui" }, row, this.titles, this.canvas, this.legend, this.status);
    this.root.append(this.ui);
    for (const [name, ctl] of Object.entries(c)) {
      ctl.input.addEventListener(ctl.input.tagName === "SELECT" ? "change" : "input", (e) => this.onControl(name, e));
    }
    this.fillClasses();
    this.syncControls();
  }

  fillClasses() {
    const spec = this.p.images[this.values.image];
    const s = this.controls.class.input;
    s.replaceChildren(...spec.classes.map((k, j) => el("option", { value: String(j), text: this.p.classNames[k + 1] })));
    if (this.values.class === null || this.values.class >= spec.classes.length) this.values.class = 0;
    s.value = String(this.values.class);
  }

  syncControls() {
    // the inputs show this.values (after a programmatic change or a stage switch)
    const c = this.controls, v = this.values;
    c.image.input.value = String(v.image);
    c.class.input.value = String(v.class);
    c.stage.input.value = v.stage;
    c.beta.input.value = String(Math.log10(v.beta)); c.beta.show(Math.log10(v.beta));
    c.steps.input.value = String(v.steps); c.steps.show(v.steps);
    c.thresholdMode.input.value = v.thresholdMode;
    c.threshold.input.value = String(v.threshold); c.threshold.show(v.threshold);
    c.radius.input.value = String(v.radius); c.radius.show(v.radius);
    c.eps.input.value = String(Math.log10(v.eps)); c.eps.show(Math.log10(v.eps));
    c.iterations.input.value = String(v.iterations); c.iterations.show(v.iterations);
  }

  /** Apply one control's value (the rules that keep every control effective). */
  apply(name, raw) {
    const v = this.values;
    const refinedStage = (kind, k) => (kind === "A" ? (k === 15 ? "G-iter15-w/o-aff" : "G-w/o-aff") : (k === 15 ? "G-iter15" : "G"));
    const kind = core.STAGE_SOURCE[v.stage];
    const refined = core.STAGE_ITERATIONS[v.stage] > 0;
    if (name === "image") { v.image = Number(raw); v.class = 0; this.fillClasses(); }
    else if (name === "class") v.class = Number(raw);
    else if (name === "stage") { v.stage = raw; if (core.STAGE_ITERATIONS[raw] > 0) v.iterations = core.STAGE_ITERATIONS[raw]; }
    else if (name === "beta" || name === "steps") {
      if (name === "beta") v.beta = +Math.pow(10, Number(raw)).toPrecision(6);
      else v.steps = Number(raw);
      if (kind === "A") v.stage = refined ? refinedStage("R", v.iterations) : "R";
    } else {
      if (name === "thresholdMode") v.thresholdMode = raw;
      else if (name === "threshold") { v.threshold = Number(raw); v.thresholdMode = "manual"; }
      else if (name === "radius") v.radius = Number(raw);
      else if (name === "eps") v.eps = +Math.pow(10, Number(raw)).toPrecision(6);
      else if (name === "iterations") v.iterations = Number(raw);
      if (!refined || name === "iterations") v.stage = refinedStage(kind, v.iterations);
    }
  }

  onControl(name, event) {
    // the event's time (same clock as performance.now()): the latency includes the event dispatch
    this.changedAt = event && event.timeStamp > 0 ? event.timeStamp : performance.now();
    this.apply(name, this.controls[name].input.value);
    this.syncControls();
    this.update();
  }

  /** Set controls programmatically ({image, class, stage, beta, steps, threshold, radius, eps, iterations}). */
  set(values) {
    this.changedAt = performance.now();
    for (const [k, val] of Object.entries(values)) {
      if (k === "threshold") {
        if (val === null || val === "otsu") this.apply("thresholdMode", "otsu");
        else this.apply("threshold", val);
      } else if (k === "beta" || k === "eps") this.apply(k, Math.log10(val));
      else if (CONTROL_NAMES.includes(k)) this.apply(k, val);
      else throw new Error(`unknown control ${k}`);
    }
    if (values.eps !== undefined) this.values.eps = values.eps;
    if (values.beta !== undefined) this.values.beta = values.beta;
    this.syncControls();
    return this.update();
  }

  state() {
    return { ...this.values, generation: this.generation, timing: this.timing };
  }

  settings() {
    const v = this.values;
    return settingsOf({ stage: v.stage, iterations: v.iterations, beta: v.beta, steps: v.steps, radius: v.radius,
      eps: v.eps, threshold: v.thresholdMode === "otsu" ? null : v.threshold }, this.p.config);
  }

  /** Recompute (latest settings win) and redraw; resolves after the redraw of these settings. */
  update() {
    const token = ++this.token;
    const changedAt = this.changedAt || performance.now();
    this.root.setAttribute("data-state", "busy");
    const done = new Promise((resolve, reject) => this.waiters.push({ token, resolve, reject }));
    const go = async () => {
      const img = this.images[this.values.image];
      const settings = this.settings();
      let res;
      try {
        res = await runSetting(img, settings, () => token !== this.token);
      } catch (err) {
        this.fail(err);
        return;
      }
      if (res === null || token !== this.token) return;
      const dec = await img.decode();
      const slot = Math.min(this.values.class, res.maps.length - 1);
      drawPanels(this.ctx, dec, res, slot, this.p.palette, 6);
      this.last = res;
      this.drawText(img.spec, settings, res, slot);
      await new Promise((r) => requestAnimationFrame(() => r()));
      if (token !== this.token) return;
      this.generation += 1;
      this.timing = { computeMs: res.ms, latencyMs: performance.now() - changedAt };
      this.root.setAttribute("data-state", "ready");
      this.root.setAttribute("data-generation", String(this.generation));
      const waiters = this.waiters.filter((w) => w.token <= token);
      this.waiters = this.waiters.filter((w) => w.token > token);
      for (const w of waiters) w.resolve(this.state());
    };
    this.busy = (this.busy || Promise.resolve()).then(go, go);
    return done;
  }

  drawText(spec, s, res, slot) {
    const names = this.p.classNames;
    const cls = names[spec.classes[slot] + 1];
    const what = s.iterations > 0 ? `${s.stage}${s.iterations !== core.STAGE_ITERATIONS[s.stage] ? ` (${s.iterations} iterations)` : ""}` : s.stage;
    const titles = [`${what}: map of ${cls} (0 blue, 1 red)`, "pseudo label (Eq. 11)"];
    if (spec.mask) titles.push("ground truth");
    this.titles.replaceChildren(...titles.map((t) => el("div", { text: t })));
    const present = spec.classes.map((k) => k + 1);
    this.legend.replaceChildren(...[0, ...present].map((k) => {
      const c = this.p.palette[k];
      return el("span", {}, el("i", { style: `background:rgb(${c[0]},${c[1]},${c[2]})` }), names[k]);
    }));
    const parts = [spec.id, s.kind === "R" ? `beta ${s.beta}, ${s.steps} step${s.steps > 1 ? "s" : ""}` : "no walk"];
    if (s.iterations > 0) {
      parts.push(`radius ${s.radius}, eps ${s.eps.toExponential(0)}, ${s.iterations} iteration${s.iterations > 1 ? "s" : ""}`);
      parts.push(s.threshold === null ? "Otsu thresholds" : `threshold ${s.threshold}`);
    }
    parts.push(`label thresholds ${res.thresholds.map((t) => t.toFixed(3)).join(", ")}`);
    parts.push(`computed in your browser in ${res.ms.toFixed(0)} ms${this.simd ? "" : " (without WebAssembly SIMD)"}`);
    this.status.textContent = parts.join(" · ");
  }

  fail(err) {
    this.root.setAttribute("data-state", "failed");
    const note = this.root.querySelector(".sgwsss-live-note");
    if (this.ui) this.ui.style.display = "none";
    const img = this.root.querySelector(".sgwsss-live-static");
    if (img) img.style.display = "";
    if (note) note.textContent = `Static figure: the live figure stopped (${err.message || err}).`;
    for (const w of this.waiters) w.reject(err);
    this.waiters = [];
  }
}

// ------------------------------------------------------------------------------ mounting

function missingFeature() {
  if (typeof createImageBitmap !== "function") return "this browser cannot decode images for scripts (no createImageBitmap)";
  if (typeof Math.fround !== "function" || typeof Float32Array !== "function") return "this browser lacks typed arrays";
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) return "this machine is big-endian; the embedded data is little-endian";
  const c = document.createElement("canvas");
  if (!c.getContext || !c.getContext("2d")) return "this browser has no 2D canvas";
  return "";
}

/** True on the rendered book (a Sphinx page), where no kernel runs behind the ipywidgets. */
export function isStaticBook() {
  return typeof globalThis.DOCUMENTATION_OPTIONS !== "undefined" || !!document.documentElement.dataset.content_root;
}

/** Hide the outputs of kernel-only cells (ipywidgets) on the static book, with one line instead. */
export function hideKernelOnly() {
  if (!isStaticBook()) return 0;
  let n = 0;
  for (const node of document.querySelectorAll(KERNEL_ONLY)) {
    if (node.dataset.sgwsssHidden) continue;
    node.dataset.sgwsssHidden = "1";
    node.style.display = "none";
    node.after(el("p", { class: "sgwsss-live-kernel-note", text: "These ipywidgets controls need a running kernel " +
      "(open the chapter in Colab or Jupyter); on this page the live figure runs the same computation in your browser." }));
    n++;
  }
  return n;
}

/** Mount one figure element; on failure keep its static figure and say why. */
export async function mount(root) {
  if (root.sgwsssFigure) return root.sgwsssFigure;
  hideKernelOnly();
  const note = root.querySelector(".sgwsss-live-note");
  try {
    const missing = missingFeature();
    if (missing) throw new Error(missing);
    const payload = JSON.parse(root.querySelector("script.sgwsss-live-data").textContent);
    if (payload.version !== VERSION) throw new Error(`data version ${payload.version}, module version ${VERSION}`);
    const fig = new Figure(root, payload);
    root.sgwsssFigure = fig;
    fig.build();
    const img = root.querySelector(".sgwsss-live-static");
    fig.ui.style.display = "none";
    await fig.images[fig.values.image].decode();
    await fig.update();
    if (img) img.style.display = "none";
    fig.ui.style.display = "";
    const { why, simd } = await pool();
    fig.simd = simd;
    fig.drawText(fig.images[fig.values.image].spec, fig.settings(), fig.last, Math.min(fig.values.class, fig.last.maps.length - 1));
    if (note) note.textContent = why ? `Live figure (computed on this page: ${why}).` : "";
    api.figures.push(fig);
    return fig;
  } catch (err) {
    root.setAttribute("data-state", "failed");
    if (root.sgwsssFigure && root.sgwsssFigure.ui) root.sgwsssFigure.ui.style.display = "none";
    if (note) note.textContent = `Static figure: the live version cannot run here (${err.message || err}).`;
    throw err;
  }
}

// ----------------------------------------------------------------------- the test interface

function encode(arr) {
  const b = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
  return btoa(s);
}

const api = {
  version: VERSION,
  figures: [],
  core,
  /**
   * Compute one setting without touching the controls: {figure (index, default 0), image
   * (index or id), stage, iterations, beta, steps, radius, eps, threshold (null: Otsu)}.
   * Returns {classes, maps: Float32Array[] (H * W, present classes), labels: Uint8Array, thresholds, h, w, ms}.
   */
  async compute(opts = {}) {
    const fig = api.figures[opts.figure || 0];
    if (!fig) throw new Error("no live figure is mounted");
    let i = opts.image === undefined ? fig.values.image : opts.image;
    if (typeof i === "string") i = fig.p.images.findIndex((s) => s.id === i);
    if (!(i >= 0 && i < fig.images.length)) throw new Error(`no image ${opts.image}`);
    return runSetting(fig.images[i], settingsOf(opts, fig.p.config));
  },
  /** compute() with the arrays as base64 strings (little-endian float32 / uint8), for tests. */
  async computeEncoded(opts = {}) {
    const r = await api.compute(opts);
    return { classes: r.classes, h: r.h, w: r.w, ms: r.ms, thresholds: r.thresholds, maps: r.maps.map(encode), labels: encode(r.labels) };
  },
  /** Where the numbers are computed: {workers (0: on the page), simd (WebAssembly kernels), why}. */
  async info() {
    const { links, why, simd } = await pool();
    return { workers: links[0].kind === "worker" ? links.length : 0, simd, why };
  },
  mount,
  hideKernelOnly,
};
globalThis.sgwsssLive = Object.assign(globalThis.sgwsssLive || {}, api);
