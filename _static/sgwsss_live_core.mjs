// sgwsss live refinement: the numerical core (no DOM). Plain ES module, served with the book.
//
// Each function mirrors one Python operator of the package, step for step, so that the
// browser reproduces what the book computes (the Python code is the reference):
//
//   otsuThreshold      sgwsss.refine.otsu.otsu_threshold        (numpy/skimage bins, float32)
//   normalizeMap       sgwsss.refine.stages.normalize_maps      (per-class min-max, float32)
//   interpolate        torch.nn.functional.interpolate(bilinear, align_corners=False), float32
//   resizeToGrid       sgwsss.refine.affinity.resize_to_grid
//   affinityDistances  sgwsss.refine.affinity.affinity_matrix   (Eq. 2; the walk runs in float64)
//   transitionMatrix   sgwsss.refine.affinity.transition_matrix (Eq. 3, beta as a power of W)
//   randomWalk         sgwsss.refine.random_walk.random_walk    (Eq. 5, T^t A)
//   guideStatistics    sgwsss.refine.guided_filter.guide_statistics (float64)
//   GuidedFilterState  sgwsss.refine.guided_filter.GuidedFilter (Eqs. 6-8, skip_constant crops;
//                      the fused kernel of sgwsss.refine._cpu_kernels, pass for pass)
//   activeRegion       sgwsss.refine.guided_filter._active_region
//   pseudoLabel        sgwsss.refine.pseudo_label.pseudo_label  (Eq. 11)
//   ImageEngine        one image's stages (sgwsss.refine.stages.refine_stage, self_guided_refine)
//
// The hot loops also exist as WebAssembly SIMD kernels (sgwsss_live_wasm.mjs) doing the same
// float64 operations in the same order; GuidedFilterState uses them where the browser can.
//
// Numbers. Maps are float32 (Float32Array), as in the package's default CPU path; every
// running sum is accumulated in float64 (JS numbers) and stored in float32, as the package's
// fused kernels do (sgwsss/refine/_cpu_kernels.py), so eps = 1e-6 stays accurate. Where
// the package rounds to float32, Math.fround rounds here.

import { createKernels } from "./sgwsss_live_wasm.mjs";

const f32 = Math.fround;

// ------------------------------------------------------------------------------------ Otsu

/**
 * Otsu's threshold of a float32 map, as sgwsss.refine.otsu.otsu_threshold (= skimage's
 * threshold_otsu): 256 equal bins over [min, max] with numpy's edges (linspace in float32)
 * and numpy's edge-exact bin rule, bin centres as candidates, the between-class variance
 * evaluated with float32 running sums, its first maximum. A constant map returns its value.
 * @param {Float32Array} x  the map (any length >= 1)
 * @returns {number} the threshold (a float32 value)
 */
export function otsuThreshold(x, nbins = 256) {
  const n = x.length;
  let lo = x[0], hi = x[0];
  for (let i = 1; i < n; i++) {
    const v = x[i];
    if (v < lo) lo = v;
    else if (v > hi) hi = v;
  }
  if (lo === hi) return lo;
  return otsuFromRange(lo, hi, nbins, (scale, edges) => histogram(x, lo, scale, edges, nbins));
}

/** Otsu's threshold of a non-constant map with range [lo, hi]; ``counts(scale, edges)`` bins it. */
function otsuFromRange(lo, hi, nbins, counts) {
  const span = f32(hi - lo);
  const step = f32(span / nbins);
  const scale = f32(nbins / span);
  const edges = new Float64Array(nbins + 1); // float32 values: fl(fl(i * step) + lo), last = hi
  for (let i = 0; i <= nbins; i++) edges[i] = f32(f32(i * step) + lo);
  const c = counts(scale, edges);
  edges[nbins] = hi;
  return otsuFromHistogram(c, edges, nbins);
}

function histogram(x, lo, scale, edges, nbins) {
  // the package's bin rule: an estimate within one bin, fixed up against the edges
  const counts = new Int32Array(nbins);
  const last = nbins - 1;
  for (let i = 0, n = x.length; i < n; i++) {
    const v = x[i];
    let t = Math.trunc((v - lo) * scale); // an estimate within one bin of numpy's
    if (t > last) t = last;
    if (v < edges[t]) t -= 1;
    else if (t < last && v >= edges[t + 1]) t += 1;
    counts[t]++;
  }
  return counts;
}

function otsuFromHistogram(counts, edges, nbins) {
  // numpy float32 arithmetic of sgwsss.refine.otsu._otsu_from_histograms
  const centers = new Float64Array(nbins);
  const cm = new Float64Array(nbins);
  for (let i = 0; i < nbins; i++) {
    centers[i] = f32(f32(edges[i] + edges[i + 1]) / 2);
    cm[i] = f32(counts[i] * centers[i]);
  }
  const w1 = new Float64Array(nbins), m1 = new Float64Array(nbins);
  const w2 = new Float64Array(nbins), m2 = new Float64Array(nbins);
  let cw = 0, cs = 0;
  for (let i = 0; i < nbins; i++) {
    cw = f32(cw + counts[i]);
    cs = f32(cs + cm[i]);
    w1[i] = cw;
    m1[i] = f32(cs / cw);
  }
  cw = 0;
  cs = 0;
  for (let i = nbins - 1; i >= 0; i--) {
    cw = f32(cw + counts[i]);
    cs = f32(cs + cm[i]);
    w2[i] = cw;
    m2[i] = f32(cs / cw);
  }
  let best = -Infinity, idx = 0;
  for (let i = 0; i < nbins - 1; i++) {
    const d = f32(m1[i] - m2[i + 1]);
    const v = f32(f32(w1[i] * w2[i + 1]) * f32(d * d));
    if (v > best || (Number.isNaN(v) && best !== best)) {
      best = v;
      idx = i;
    }
    if (Number.isNaN(v)) { idx = i; break; } // numpy's argmax returns the first NaN
  }
  return centers[idx];
}

/**
 * ``map > threshold`` of an (h, w) map, compared in float32 (as torch does with a Python float),
 * into the bytes ``out``, marking in ``rows`` / ``cols`` where the mask differs from a 4-neighbour.
 */
export function binarizeChanges(map, threshold, h, w, out, rows, cols) {
  const t = f32(threshold);
  for (let x = 0; x < w; x++) {
    const v = map[x] > t ? 1 : 0;
    out[x] = v;
    if (x > 0 && out[x - 1] !== v) { rows[0] = 1; cols[x - 1] = 1; cols[x] = 1; }
  }
  for (let y = 1; y < h; y++) {
    const o = y * w;
    let changed = 0;
    for (let x = 0; x < w; x++) {
      const i = o + x, v = map[i] > t ? 1 : 0;
      out[i] = v;
      if (x > 0 && out[i - 1] !== v) { changed = 1; cols[x - 1] = 1; cols[x] = 1; }
      if (out[i - w] !== v) { rows[y - 1] = 1; changed = 1; cols[x] = 1; }
    }
    if (changed) rows[y] = 1;
  }
  return out;
}

// --------------------------------------------------------------------- maps and resampling

/** sgwsss.refine.stages.normalize_maps for one present class: (cam - min) / (max - min), float32. */
export function normalizeMap(cam) {
  let lo = cam[0], hi = cam[0];
  for (let i = 1; i < cam.length; i++) {
    if (cam[i] < lo) lo = cam[i];
    if (cam[i] > hi) hi = cam[i];
  }
  const span = f32(hi - lo);
  const out = new Float32Array(cam.length);
  if (span > 0) for (let i = 0; i < cam.length; i++) out[i] = f32(cam[i] - lo) / span;
  return out;
}

function taps(inSize, outSize) {
  // torch's compute_source_index_and_lambda (align_corners=False), in float32
  const i0 = new Int32Array(outSize), i1 = new Int32Array(outSize);
  const l0 = new Float64Array(outSize), l1 = new Float64Array(outSize);
  const scale = f32(inSize / outSize);
  for (let i = 0; i < outSize; i++) {
    if (inSize === outSize) {
      i0[i] = i;
      i1[i] = i;
      l0[i] = 1;
      l1[i] = 0;
      continue;
    }
    let real = f32(scale * (i + 0.5) - 0.5);
    if (real < 0) real = 0;
    const k = Math.min(Math.floor(real), inSize - 1);
    i0[i] = k;
    i1[i] = k < inSize - 1 ? k + 1 : k;
    const lam = Math.min(Math.max(f32(real - k), 0), 1);
    l1[i] = lam;
    l0[i] = f32(1 - lam);
  }
  return { i0, i1, l0, l1 };
}

/**
 * Bilinear resampling of one (h, w) float32 map to (H, W) with torch's
 * F.interpolate(mode="bilinear", align_corners=False) semantics (no antialias).
 * Large outputs follow torch's generic CPU kernel: t0 * w0 + t1 * w1 per axis, the
 * first product rounded, the sum fused (what torch's compiled kernel computes).
 * @returns {Float32Array} (H * W)
 */
export function interpolate(src, h, w, H, W) {
  const ty = taps(h, H), tx = taps(w, W);
  const out = new Float32Array(H * W);
  for (let y = 0; y < H; y++) {
    const r0 = ty.i0[y] * w, r1 = ty.i1[y] * w;
    const a0 = ty.l0[y], a1 = ty.l1[y];
    const o = y * W;
    for (let x = 0; x < W; x++) {
      const c0 = tx.i0[x], c1 = tx.i1[x];
      const b0 = tx.l0[x], b1 = tx.l1[x];
      const t0 = f32(src[r0 + c0] * b0 + f32(src[r0 + c1] * b1));
      const t1 = f32(src[r1 + c0] * b0 + f32(src[r1 + c1] * b1));
      out[o + x] = f32(t0 * a0 + f32(t1 * a1));
    }
  }
  return out;
}

/** sgwsss.refine.affinity.resize_to_grid for one (h, w) map: (grid * grid) float32. */
export function resizeToGrid(src, h, w, grid) {
  if (h === grid && w === grid) return new Float32Array(src);
  if (H_PLUS_W_SMALL(grid, grid)) {
    // torch's channels-last kernel for small outputs: i00 w00 + i01 w01 + i10 w10 + i11 w11
    const ty = taps(h, grid), tx = taps(w, grid);
    const out = new Float32Array(grid * grid);
    for (let y = 0; y < grid; y++) {
      for (let x = 0; x < grid; x++) {
        const w00 = f32(ty.l0[y] * tx.l0[x]), w01 = f32(ty.l0[y] * tx.l1[x]);
        const w10 = f32(ty.l1[y] * tx.l0[x]), w11 = f32(ty.l1[y] * tx.l1[x]);
        let s = f32(src[ty.i0[y] * w + tx.i0[x]] * w00);
        s = f32(src[ty.i0[y] * w + tx.i1[x]] * w01 + s);
        s = f32(src[ty.i1[y] * w + tx.i0[x]] * w10 + s);
        s = f32(src[ty.i1[y] * w + tx.i1[x]] * w11 + s);
        out[y * grid + x] = s;
      }
    }
    return out;
  }
  return interpolate(src, h, w, grid, grid);
}

function H_PLUS_W_SMALL(H, W) {
  return H + W <= 128;
}

// ------------------------------------------------------------------ affinity and the walk

/**
 * Eq. 2 on the grid: the distances d_pq = ||F_p - F_q|| behind W_pq = exp(-d_pq)
 * (sgwsss.refine.affinity.affinity_matrix, with its smoothing sqrt(d^2 + 1e-10) - 1e-5 and
 * zeros on the diagonal). Computed in float64, stored in float32.
 *
 * The walk is the one step computed in float64 here: the package's float32 walk carries
 * about 1e-6 to 1e-4 of rounding noise (torch's vectorised sqrt, exp and pow are not
 * correctly rounded, and W^beta multiplies relative errors by beta), which no browser can
 * reproduce bit for bit; float64 gives the value that noise is around.
 * @param {Float32Array} feat  (k, N) features already resampled to the grid (N = grid^2)
 * @returns {Float32Array} (N * N) row-major distances
 */
export function affinityDistances(feat, k, n) {
  const d = new Float32Array(n * n);
  for (let p = 0; p < n; p++) {
    for (let q = p + 1; q < n; q++) {
      let s = 0;
      for (let c = 0; c < k; c++) {
        const v = feat[c * n + p] - feat[c * n + q];
        s += v * v;
      }
      const v = Math.sqrt(s + 1e-10) - 1e-5;
      d[p * n + q] = v;
      d[q * n + p] = v;
    }
  }
  return d;
}

/**
 * Eq. 3: T = D^-1 W^beta with W = exp(-d) (rows sum to 1), as
 * sgwsss.refine.affinity.transition_matrix: W^beta = exp(-beta d), beta an inverse temperature.
 * @returns {Float32Array} (N * N)
 */
export function transitionMatrix(d, n, beta) {
  if (!(beta > 0)) throw new RangeError(`beta must be > 0, got ${beta}`);
  const T = new Float32Array(n * n);
  const row = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    const o = p * n;
    let s = 0;
    for (let q = 0; q < n; q++) {
      row[q] = Math.exp(-beta * d[o + q]);
      s += row[q];
    }
    for (let q = 0; q < n; q++) T[o + q] = row[q] / s;
  }
  return T;
}

/** Eq. 5: R = T^steps A for one grid map (sgwsss.refine.random_walk.random_walk), float64 sums. */
export function randomWalk(T, a, n, steps = 1) {
  let cur = new Float64Array(a);
  for (let t = 0; t < steps; t++) {
    const next = new Float64Array(n);
    for (let p = 0; p < n; p++) {
      let s = 0;
      const o = p * n;
      for (let q = 0; q < n; q++) s += T[o + q] * cur[q];
      next[p] = s;
    }
    cur = next;
  }
  return new Float32Array(cur); // r.to(a.dtype): the float32 maps
}

// --------------------------------------------------------------------------- guided filter

function windowLengths(length, r) {
  // 1 / (number of positions in each clipped 1-D window), float64
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) out[i] = 1 / (Math.min(i + r, length - 1) - Math.max(i - r, 0) + 1);
  return out;
}

/**
 * The guide's window means and inverse regularised covariances (Eq. 7), computed in float64
 * exactly as the package's kernel does (sgwsss.refine._cpu_kernels.guide_stats), then
 * stored as the per-map kernel uses them, in float32: ``planes`` holds 9 (H * W) planes,
 * the mean mu_k (3) and (Sigma_k + eps U)^-1 / n_k (6, packed 00 01 02 11 12 22).
 * @param {Float32Array[]} guide  three (H * W) planes, values u8 / 255 in float32
 */
export function guideStatistics(guide, h, w, radius, eps) {
  const r = radius, hw = h * w;
  const rows = guideRowSums(guide, h, w, r);
  const invNh = windowLengths(h, r), invNw = windowLengths(w, r);
  const planes = Array.from({ length: 9 }, () => new Float32Array(hw)); // mean (3), inverse / n (6)
  const [P0, P1, P2, P3, P4, P5, P6, P7, P8] = planes;
  const acc = new Float64Array(9 * w); // column window sums, 9 per column
  for (let y = 0, m = Math.min(r, h - 1); y <= m; y++) {
    const o = y * w * 9;
    for (let x = 0; x < 9 * w; x++) acc[x] += rows[o + x];
  }
  const zero = new Float64Array(9 * w);
  for (let y = 0; y < h; y++) {
    const kh = invNh[y], nh = Math.min(y + r, h - 1) - Math.max(y - r, 0) + 1;
    for (let x = 0, j = 0; x < w; x++, j += 9) {
      const k = kh * invNw[x];
      const m0 = acc[j] * k, m1 = acc[j + 1] * k, m2 = acc[j + 2] * k;
      const s00 = acc[j + 3] * k - m0 * m0 + eps, s01 = acc[j + 4] * k - m0 * m1;
      const s02 = acc[j + 5] * k - m0 * m2, s11 = acc[j + 6] * k - m1 * m1 + eps;
      const s12 = acc[j + 7] * k - m1 * m2, s22 = acc[j + 8] * k - m2 * m2 + eps;
      const c00 = s11 * s22 - s12 * s12, c01 = s02 * s12 - s01 * s22, c02 = s01 * s12 - s02 * s11;
      const c11 = s00 * s22 - s02 * s02, c12 = s01 * s02 - s00 * s12, c22 = s00 * s11 - s01 * s01;
      const det = s00 * c00 + s01 * c01 + s02 * c02;
      const count = nh * (Math.min(x + r, w - 1) - Math.max(x - r, 0) + 1);
      const q = y * w + x;
      P0[q] = m0; P1[q] = m1; P2[q] = m2;
      P3[q] = c00 / det / count; P4[q] = c01 / det / count; P5[q] = c02 / det / count;
      P6[q] = c11 / det / count; P7[q] = c12 / det / count; P8[q] = c22 / det / count;
    }
    // move the windows down one row: add row y + r + 1, then subtract row y - r (zero rows past the ends)
    const add = y + r + 1 < h ? rows : zero, ao = y + r + 1 < h ? (y + r + 1) * w * 9 : 0;
    const sub = y - r >= 0 ? rows : zero, so = y - r >= 0 ? (y - r) * w * 9 : 0;
    for (let x = 0; x < 9 * w; x++) acc[x] = acc[x] + add[ao + x] - sub[so + x];
  }
  return { h, w, radius: r, eps, guide, planes, invNh, invNw };
}

function guideRowSums(guide, h, w, r) {
  // clipped row window sums of I_0, I_1, I_2 and I_i I_j (i <= j), float64, 9 per pixel
  const [g0, g1, g2] = guide;
  const rows = new Float64Array(9 * h * w);
  for (let y = 0; y < h; y++) {
    const base = y * w;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
    for (let x = 0, m = Math.min(r, w - 1); x <= m; x++) {
      const a = g0[base + x], b = g1[base + x], c = g2[base + x];
      s0 += a; s1 += b; s2 += c; s3 += a * a; s4 += a * b; s5 += a * c; s6 += b * b; s7 += b * c; s8 += c * c;
    }
    for (let x = 0; x < w; x++) {
      const o = 9 * (base + x);
      rows[o] = s0; rows[o + 1] = s1; rows[o + 2] = s2; rows[o + 3] = s3; rows[o + 4] = s4;
      rows[o + 5] = s5; rows[o + 6] = s6; rows[o + 7] = s7; rows[o + 8] = s8;
      if (x + r + 1 < w) {
        const i = base + x + r + 1, a = g0[i], b = g1[i], c = g2[i];
        s0 += a; s1 += b; s2 += c; s3 += a * a; s4 += a * b; s5 += a * c; s6 += b * b; s7 += b * c; s8 += c * c;
      }
      if (x - r >= 0) {
        const i = base + x - r, a = g0[i], b = g1[i], c = g2[i];
        s0 -= a; s1 -= b; s2 -= c; s3 -= a * a; s4 -= a * b; s5 -= a * c; s6 -= b * b; s7 -= b * c; s8 -= c * c;
      }
    }
  }
  return rows;
}

/**
 * Where the filter can change the masks of an image (skip_constant): the package's _active_region
 * over all maps together, from the rows / cols where a mask differs from a 4-neighbour
 * (binarizeChanges). Returns null when every mask is constant, else {a: [y0, y1, x0, x1],
 * c: [y0, y1, x0, x1]} (the active box, and the crop the computation needs).
 */
export function activeRegion(rows, cols, h, w, radius) {
  let y0 = -1, y1 = -1, x0 = -1, x1 = -1;
  for (let y = 0; y < h; y++) if (rows[y]) { if (y0 < 0) y0 = y; y1 = y + 1; }
  if (y0 < 0) return null;
  for (let x = 0; x < w; x++) if (cols[x]) { if (x0 < 0) x0 = x; x1 = x + 1; }
  const grow = (a0, a1, m, size) => [Math.max(a0 - m, 0), Math.min(a1 + m, size)];
  const snap = ([a0, a1], size) => [a0 - (a0 % 16), Math.min(a1 + ((16 - (a1 % 16)) % 16), size)];
  const a = [...grow(y0, y1, 2 * radius, h), ...grow(x0, x1, 2 * radius, w)];
  const c = [...snap(grow(y0, y1, 4 * radius, h), h), ...snap(grow(x0, x1, 4 * radius, w), w)];
  return { a, c };
}

/**
 * The package's fused guided-filter kernel (sgwsss.refine._cpu_kernels.filter_maps) for binary
 * masks on a crop of the image, with the same arithmetic in the same order: (1) row window
 * sums of [p, I p], (2) their column sums -> a_k, b_k (Eqs. 7-8), (3) row window sums of
 * [a, b], (4) their column sums -> q (Eq. 6); sums in float64, stored in float32. The four
 * passes stream through two ring buffers of 2r + 2 rows (plus a zero row), so the working
 * set stays in cache. Passes 2 and 4 run as WebAssembly SIMD kernels where the browser has
 * them (sgwsss_live_wasm.mjs: the same operations, the same bits), else in JS.
 */
export class GuidedFilterState {
  /** @param kernels  createKernels() of sgwsss_live_wasm.mjs, or null for the JS passes */
  constructor(kernels = null) {
    this.k = kernels;
    this.stats = null;
    this.layoutKey = "";
  }

  _layout(h, w) {
    // one buffer (the kernels' memory, or an ArrayBuffer) holding the image's guide and statistics and the
    // scratch rows, sized for every radius the controls offer (a radius change copies statistics only);
    // byte offsets in this.o, typed views in this.v
    const r = MAX_RADIUS, n = h * w, wp = w + 2, rows = 2 * r + 3; // ring rows + an always-zero row
    const key = `${h}x${w}`;
    if (key === this.layoutKey) return;
    // ab rows and mask rows have r + 1 zeros on both sides; the guide has 512 spare bytes on both sides
    const pad = r + 1, abw = wp + 2 * pad;
    const ps = n + 4; // plane stride of the statistics (a spare value for the kernels' second lane)
    const sizes = { pre: 512, guide: 3 * n * 4 + 512, planes: 9 * ps * 4 + 16, nw: wp * 8, out: n * 4 + 16,
      r1: 4 * rows * wp * 4, r3: 4 * rows * wp * 4, ab: 4 * abw * 4, acc2: 4 * wp * 8, acc4: 4 * wp * 8, prow: abw + 16,
      edges: 257 * 8, counts: 256 * 4, range: 16, grows: 9 * rows * wp * 8, gacc: 9 * wp * 8, ncol: wp * 8,
      mask: n + 16, mrows: h + 16, mcols: w + 16 };
    const o = {};
    let total = 0;
    for (const [name, bytes] of Object.entries(sizes)) { o[name] = total; total += Math.ceil(bytes / 64) * 64; }
    let buffer;
    if (this.k) {
      const have = this.k.memory.buffer.byteLength;
      if (total > have) this.k.memory.grow(Math.ceil((total - have) / 65536));
      buffer = this.k.memory.buffer;
    } else {
      buffer = new ArrayBuffer(total);
    }
    const planes = (off, count, len, stride = len, T = Float32Array) =>
      Array.from({ length: count }, (_, c) => new T(buffer, off + c * stride * T.BYTES_PER_ELEMENT, len));
    new Uint8Array(buffer, 0, total).fill(0);
    this.v = {
      guide: planes(o.guide, 3, n), planes: planes(o.planes, 9, n, ps), nw: new Float64Array(buffer, o.nw, wp),
      out: new Float32Array(buffer, o.out, n), r1: planes(o.r1, 4, rows * wp), r3: planes(o.r3, 4, rows * wp),
      ab: planes(o.ab + 4 * pad, 4, wp, abw), acc2: planes(o.acc2, 4, wp, wp, Float64Array),
      acc4: planes(o.acc4, 4, wp, wp, Float64Array), prow: new Uint8Array(buffer, o.prow + pad, wp),
      edges: new Float64Array(buffer, o.edges, 257), counts: new Int32Array(buffer, o.counts, 256),
      range: new Float32Array(buffer, o.range, 2), grows: planes(o.grows, 9, rows * wp, rows * wp, Float64Array),
      gacc: planes(o.gacc, 9, wp, wp, Float64Array), ncol: new Float64Array(buffer, o.ncol, wp),
      mask: new Uint8Array(buffer, o.mask, n), mrows: new Uint8Array(buffer, o.mrows, h), mcols: new Uint8Array(buffer, o.mcols, w),
    };
    Object.assign(this, { o, n, ps, wp, rows, pad, abw, layoutKey: key, stats: null, guideSrc: null });
  }

  /** guideStatistics(), with the kernels when they run (the same bits), left loaded for filterMask. */
  statistics(guide, h, w, radius, eps) {
    if (!this.k) return guideStatistics(guide, h, w, radius, eps);
    this._layout(h, w);
    const r = radius, o = this.o, v = this.v, ring = 2 * r + 2, rp = 8 * this.rows * this.wp;
    if (this.guideSrc !== guide) {
      guide.forEach((g, c) => v.guide[c].set(g));
      this.guideSrc = guide;
    }
    const invNh = windowLengths(h, r), invNw = windowLengths(w, r);
    v.nw.set(invNw);
    for (let x = 0; x < w; x++) v.ncol[x] = Math.min(x + r, w - 1) - Math.max(x - r, 0) + 1;
    for (const a of v.grows) a.fill(0, ring * w, ring * w + w + 2); // the zero row
    for (const a of v.gacc) a.fill(0);
    const m = Math.min(r, w - 1) + 1;
    const rowSums = (y) => this.k.grows(w, o.guide + 4 * y * w, 4 * this.n, o.grows + 8 * (y % ring) * w, rp, r, m);
    for (let y = 0, last = Math.min(r, h - 1); y <= last; y++) {
      rowSums(y);
      const off = (y % ring) * w;
      for (let c = 0; c < 9; c++) { const a = v.gacc[c], src = v.grows[c]; for (let x = 0; x < w; x++) a[x] += src[off + x]; }
    }
    for (let y = 0; y < h; y++) {
      if (y + r + 1 < h) rowSums(y + r + 1);
      const add = y + r + 1 < h ? ((y + r + 1) % ring) * w : ring * w, sub = y - r >= 0 ? ((y - r) % ring) * w : ring * w;
      const nh = Math.min(y + r, h - 1) - Math.max(y - r, 0) + 1;
      this.k.gcols((w + 1) >> 1, o.gacc, o.grows + 8 * add, o.grows + 8 * sub, 8 * this.wp, rp, invNh[y], o.nw, nh, o.ncol, eps,
        o.planes + 4 * y * w, 4 * this.ps);
    }
    const stats = { h, w, radius: r, eps, guide, planes: v.planes.map((a) => a.slice()), invNh, invNw };
    this.stats = stats; // loaded: the kernels' planes hold it
    return stats;
  }

  _loadStats(stats) {
    this._layout(stats.h, stats.w);
    this.ring = 2 * stats.radius + 2;
    if (stats !== this.stats) {
      if (this.guideSrc !== stats.guide) stats.guide.forEach((g, c) => this.v.guide[c].set(g));
      this.guideSrc = stats.guide;
      stats.planes.forEach((g, c) => this.v.planes[c].set(g));
      this.v.nw.set(stats.invNw);
      this.stats = stats;
    }
  }

  /**
   * The mask of one iteration: ``map > threshold`` (threshold null: Otsu's) into ``mask``, marking
   * ``rows`` / ``cols`` as binarizeChanges does; with the kernels when they run. Returns the threshold.
   */
  binarize(map, threshold, h, w, mask, rows, cols) {
    if (!this.k) {
      const t = threshold === null ? otsuThreshold(map) : threshold;
      binarizeChanges(map, t, h, w, mask, rows, cols);
      return t;
    }
    this._layout(h, w);
    const t = threshold === null ? this.otsu(map, h, w) : threshold;
    if (threshold !== null) this.v.out.set(map);
    const v = this.v, o = this.o;
    v.mrows.fill(0);
    v.mcols.fill(0);
    this.k.binarize(h, w, o.out, t, o.mask, o.mrows, o.mcols);
    mask.set(v.mask);
    for (let y = 0; y < h; y++) rows[y] |= v.mrows[y];
    for (let x = 0; x < w; x++) cols[x] |= v.mcols[x];
    return t;
  }

  /** otsuThreshold of an (h, w) map, with the histogram kernels when they run (the same bins); leaves it in ``out``. */
  otsu(map, h, w) {
    if (!this.k) return otsuThreshold(map);
    this._layout(h, w);
    const o = this.o, out = this.v.out;
    out.set(map);
    this.k.minmax(h * w, o.out, o.range);
    const [lo, hi] = this.v.range;
    if (lo === hi) return lo;
    return otsuFromRange(lo, hi, 256, (scale, edges) => {
      this.v.edges.set(edges);
      this.v.counts.fill(0);
      this.k.hist(h * w, o.out, lo, scale, o.edges, o.counts, 255);
      return this.v.counts;
    });
  }

  /**
   * Filter one binary mask p (Uint8Array, H * W) of the image of ``stats`` with the crop box
   * (from activeRegion; null: every mask constant). Returns a new float32 (H * W) output: the
   * mask itself outside the active box, the guided filter (Eqs. 6-8) inside, as
   * GuidedFilter(..., skip_constant=True).
   */
  filterMask(stats, p, box) {
    const { h, w, radius: r } = stats;
    if (box === null) return new Float32Array(p);
    this._loadStats(stats);
    const out = this.v.out;
    const [cy0, cy1, cx0, cx1] = box.c;
    const full = cy0 === 0 && cy1 === h && cx0 === 0 && cx1 === w;
    // a crop as large as the image: the package keeps the filter's output everywhere
    const [ay0, ay1, ax0, ax1] = full ? box.c : box.a;
    if (!full && this.k) {
      this.v.mask.set(p);
      this.k.widen(h * w, this.o.mask, this.o.out);
    } else if (!full) {
      for (let i = 0; i < h * w; i++) out[i] = p[i];
    }
    const ch = cy1 - cy0, cw = cx1 - cx0, ring = this.ring;
    const crop = { p, cy0, cx0, ch, cw, ring, r };
    for (const a of [...this.v.acc2, ...this.v.acc4]) a.fill(0);
    for (const planes of [this.v.r1, this.v.r3]) for (const a of planes) a.fill(0, ring * cw, ring * cw + cw + 2);
    this._zeroMargins(cw);
    const first = Math.min(r, ch - 1);
    for (let y = 0; y <= first; y++) {
      this._rowsSource(crop, y);
      this._accumulate(this.v.acc2, this.v.r1, y % ring, cw);
    }
    for (let y = 0; y < ch; y++) {
      if (y + r + 1 < ch) this._rowsSource(crop, y + r + 1);
      this._coefficients(crop, y); // also slides the column windows to row y + 1
      this._rows4(y % ring, cw, r);
      if (y === first) for (let k = 0; k <= first; k++) this._accumulate(this.v.acc4, this.v.r3, k % ring, cw);
      if (y - r - 1 >= 0) this._output(y - r - 1, crop, ay0, ay1, ax0 - cx0, ax1 - cx0);
    }
    for (let y4 = Math.max(0, ch - r - 1); y4 < ch; y4++) this._output(y4, crop, ay0, ay1, ax0 - cx0, ax1 - cx0);
    return out.slice();
  }

  _zeroMargins(cw) {
    // the r + 1 values right of the crop's width in the mask row and the ab rows (earlier crops were wider)
    const { buffer } = this.v.prow;
    new Uint8Array(buffer, this.o.prow + this.pad + cw, this.pad + 1).fill(0);
    for (let c = 0; c < 4; c++) new Float32Array(buffer, this.o.ab + 4 * (c * this.abw + this.pad + cw), this.pad + 1).fill(0);
  }

  _accumulate(acc, planes, slot, cw) {
    const o = slot * cw;
    for (let c = 0; c < 4; c++) {
      const a = acc[c], src = planes[c];
      for (let x = 0; x < cw; x++) a[x] += src[o + x];
    }
  }

  _slideRows(y, ch, cw, r, ring) {
    // ring slots of the rows entering (y + r + 1) and leaving (y - r) the column windows; the zero row past the ends
    return [y + r + 1 < ch ? ((y + r + 1) % ring) * cw : ring * cw, y - r >= 0 ? ((y - r) % ring) * cw : ring * cw];
  }

  _rowsSource({ p, cy0, cx0, cw, ring, r }, y) {
    // pass 1, one row: clipped row window sums of [p, I_r p, I_g p, I_b p] (exact: p is 0/1)
    const { w } = this.stats;
    if (this.k) {
      const o = this.o, base = (cy0 + y) * w + cx0;
      this.v.prow.set(p.subarray(base, base + cw));
      this.k.rows1(cw, o.prow + this.pad, o.guide + 4 * base, 4 * this.n, o.r1 + 4 * (y % ring) * cw, 4 * this.rows * this.wp, r);
      return;
    }
    const [g0, g1, g2] = this.stats.guide;
    const [o0, o1, o2, o3] = this.v.r1;
    const base = (cy0 + y) * w + cx0, ob = (y % ring) * cw;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let x = 0, m = Math.min(r, cw - 1); x <= m; x++) {
      const i = base + x;
      if (p[i]) { s0 += 1; s1 += g0[i]; s2 += g1[i]; s3 += g2[i]; }
    }
    for (let x = 0; x < cw; x++) {
      o0[ob + x] = s0; o1[ob + x] = s1; o2[ob + x] = s2; o3[ob + x] = s3;
      if (x + r + 1 < cw) {
        const i = base + x + r + 1;
        if (p[i]) { s0 += 1; s1 += g0[i]; s2 += g1[i]; s3 += g2[i]; }
      }
      if (x - r >= 0) {
        const i = base + x - r;
        if (p[i]) { s0 -= 1; s1 -= g0[i]; s2 -= g1[i]; s3 -= g2[i]; }
      }
    }
  }

  _coefficients({ cy0, cx0, ch, cw, ring, r }, y) {
    // pass 2, one row: a_k = (Sigma_k + eps U)^-1 n_k cov_k(I, p) / n_k (Eq. 7), b_k (Eq. 8); then the
    // column windows move to row y + 1: (acc + row y + r + 1) - row y - r
    const { w, invNh } = this.stats;
    const [ao, so] = this._slideRows(y, ch, cw, r, ring);
    const kh = invNh[cy0 + y], g0 = (cy0 + y) * w + cx0;
    if (this.k) {
      const o = this.o, f = 4 * this.rows * this.wp;
      this.k.coef((cw + 1) >> 1, o.acc2, o.r1 + 4 * ao, o.r1 + 4 * so, o.planes + 4 * g0, 4 * this.ps, o.nw + 8 * cx0, kh,
        o.ab + 4 * this.pad, 4 * this.abw, 8 * this.wp, f);
      if (cw & 1) for (const a of this.v.ab) a[cw] = 0; // the kernel's second lane wrote into the zero margin
      return;
    }
    const [M0, M1, M2, Q0, Q1, Q2, Q3, Q4, Q5] = this.v.planes;
    const [o0, o1, o2, o3] = this.v.ab;
    const [c0, c1, c2, c3] = this.v.acc2;
    const [A0, A1, A2, A3] = this.v.r1;
    const nw = this.v.nw;
    for (let x = 0; x < cw; x++) {
      const g = g0 + x, s0 = c0[x], s1 = c1[x], s2 = c2[x], s3 = c3[x];
      const mu0 = M0[g], mu1 = M1[g], mu2 = M2[g];
      const d0 = s1 - mu0 * s0, d1 = s2 - mu1 * s0, d2 = s3 - mu2 * s0;
      const i0 = Q0[g], i1 = Q1[g], i2 = Q2[g], i3 = Q3[g], i4 = Q4[g], i5 = Q5[g];
      const a0 = i0 * d0 + i1 * d1 + i2 * d2;
      const a1 = i1 * d0 + i3 * d1 + i4 * d2;
      const a2 = i2 * d0 + i4 * d1 + i5 * d2;
      o0[x] = a0; o1[x] = a1; o2[x] = a2;
      o3[x] = s0 * kh * nw[cx0 + x] - a0 * mu0 - a1 * mu1 - a2 * mu2;
      c0[x] = s0 + A0[ao + x] - A0[so + x];
      c1[x] = s1 + A1[ao + x] - A1[so + x];
      c2[x] = s2 + A2[ao + x] - A2[so + x];
      c3[x] = s3 + A3[ao + x] - A3[so + x];
    }
  }

  _rows4(slot, cw, r) {
    // pass 3, one row: clipped row window sums of [a, b]: s += a[x + r + 1] - a[x - r] (0 past the ends)
    if (this.k) {
      const o = this.o;
      this.k.rows3(cw, o.ab + 4 * this.pad, 4 * this.abw, o.r3 + 4 * slot * cw, 4 * this.rows * this.wp, r);
      return;
    }
    const noSub = Math.min(r, cw), addEnd = Math.max(cw - r - 1, 0), ob = slot * cw;
    for (let c = 0; c < 4; c++) {
      const a = this.v.ab[c], o = this.v.r3[c];
      let s = 0;
      for (let x = 0, m = Math.min(r, cw - 1); x <= m; x++) s += a[x];
      let x = 0;
      for (; x < noSub && x < addEnd; x++) { o[ob + x] = s; s += a[x + r + 1] - 0; }
      for (; x < noSub; x++) { o[ob + x] = s; s += 0 - 0; }
      for (; x < addEnd; x++) { o[ob + x] = s; s += a[x + r + 1] - a[x - r]; }
      for (; x < cw; x++) { o[ob + x] = s; s += 0 - a[x - r]; }
    }
  }

  _output(y4, { cy0, cx0, ch, cw, ring, r }, yy0, yy1, x0, x1) {
    // pass 4, one row: q = (sum(a)^T I + sum(b)) / n (Eq. 6) inside the active box; then the column
    // windows move to row y4 + 1
    const { w, invNh } = this.stats;
    const yy = cy0 + y4;
    const [ao, so] = this._slideRows(y4, ch, cw, r, ring);
    let xs = x0; // the columns still to compute in JS
    if (this.k) {
      const o = this.o, pairs = (x1 - x0) >> 1;
      if (yy >= yy0 && yy < yy1 && pairs > 0) {
        const g = yy * w + cx0 + x0;
        this.k.output(pairs, o.acc4 + 8 * x0, o.guide + 4 * g, 4 * this.n, o.nw + 8 * (cx0 + x0), invNh[yy], o.out + 4 * g,
          8 * this.wp);
      }
      xs = x0 + 2 * pairs;
    }
    if (yy >= yy0 && yy < yy1) {
      const [g0, g1, g2] = this.v.guide;
      const [c0, c1, c2, c3] = this.v.acc4;
      const kh = invNh[yy], gb = yy * w + cx0, out = this.v.out, nw = this.v.nw;
      for (let x = xs; x < x1; x++) {
        const g = gb + x;
        out[g] = (c0[x] * g0[g] + c1[x] * g1[g] + c2[x] * g2[g] + c3[x]) * (kh * nw[cx0 + x]);
      }
    }
    if (this.k) {
      const o = this.o;
      this.k.slide((cw + 1) >> 1, o.acc4, o.r3 + 4 * ao, o.r3 + 4 * so, 8 * this.wp, 4 * this.rows * this.wp);
      return;
    }
    const [c0, c1, c2, c3] = this.v.acc4;
    const [A0, A1, A2, A3] = this.v.r3;
    for (let x = 0; x < cw; x++) {
      c0[x] = c0[x] + A0[ao + x] - A0[so + x];
      c1[x] = c1[x] + A1[ao + x] - A1[so + x];
      c2[x] = c2[x] + A2[ao + x] - A2[so + x];
      c3[x] = c3[x] + A3[ao + x] - A3[so + x];
    }
  }
}

// -------------------------------------------------------------------------------- Eq. 11

export const TIE_TOLERANCE = 1e-4; // sgwsss.refine.pseudo_label.TIE_TOLERANCE

/**
 * Eq. 11 (sgwsss.refine.pseudo_label.pseudo_label): each present class fires where its
 * refined map exceeds its Otsu threshold; the label is 1 + the first firing class within
 * TIE_TOLERANCE of the largest firing value, 0 (background) where none fires.
 * @param {Float32Array[]} maps  refined maps of the present classes, in channel order
 * @param {number[]} classes  their 0-based channels
 * @param {number[]} thresholds  their Otsu thresholds, when already known
 * @returns {{labels: Uint8Array, thresholds: number[]}}
 */
export function pseudoLabel(maps, classes, n, thresholds = maps.map((m) => otsuThreshold(m))) {
  const labels = new Uint8Array(n);
  const k = maps.length;
  const tol = f32(TIE_TOLERANCE);
  for (let i = 0; i < n; i++) {
    let best = -Infinity;
    for (let c = 0; c < k; c++) {
      const v = maps[c][i];
      if (v > thresholds[c] && v > best) best = v;
    }
    let lab = 0;
    if (best > -Infinity) {
      const floor = f32(best - tol); // float32, as torch subtracts the tolerance from a float32 map
      for (let c = 0; c < k; c++) {
        const v = maps[c][i];
        if (v > thresholds[c] && v >= floor) { lab = classes[c] + 1; break; }
      }
    }
    labels[i] = lab;
  }
  return { labels, thresholds };
}

// ---------------------------------------------------------------------- the stage engine

let filterState = null;
const MAX_RADIUS = 40; // the live figure's radius slider goes to 40

/** The guided filter of this thread (one scratch memory for all images), with the SIMD kernels when available. */
export function sharedFilter() {
  if (!filterState) filterState = new GuidedFilterState(createKernels());
  return filterState;
}

/** sgwsss.constants.STAGES, and what each one computes. */
export const STAGES = ["A", "R", "G-w/o-aff", "G", "G-iter15-w/o-aff", "G-iter15"];
export const STAGE_SOURCE = { A: "A", R: "R", "G-w/o-aff": "A", G: "R", "G-iter15-w/o-aff": "A", "G-iter15": "R" };
export const STAGE_ITERATIONS = { A: 0, R: 0, "G-w/o-aff": 1, G: 1, "G-iter15-w/o-aff": 15, "G-iter15": 15 };

class LRU {
  constructor(size) { this.size = size; this.map = new Map(); }
  get(key) {
    const v = this.map.get(key);
    if (v !== undefined) { this.map.delete(key); this.map.set(key, v); }
    return v;
  }
  set(key, value) {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.size) this.map.delete(this.map.keys().next().value);
    return value;
  }
}

/**
 * One image's data and everything derived from it for some of its present classes: the
 * stage sources (A, R), the guide statistics per (radius, eps) and the refinement
 * iterations per setting. A Web Worker holds one per image (or the page does, without
 * workers); the classes of an image may be split over several engines, which then agree
 * on the skip_constant crop of every iteration through activeRegion (see RefineClient).
 */
export class ImageEngine {
  /**
   * @param {object} d  {h, w, rgb (Uint8Array, 3 * h * w planar), classes (0-based channels),
   *   cam (Float32Array, K * ch * cw), ch, cw, feat (Float32Array, k * grid^2), k, grid}
   */
  constructor(d) {
    this.d = d;
    const n = d.h * d.w;
    this.guide = [0, 1, 2].map((c) => {
      const g = new Float32Array(n);
      const o = c * n;
      for (let i = 0; i < n; i++) g[i] = d.rgb[o + i] / 255; // float32(u8 / 255), as the data loader
      return g;
    });
    this.normalized = d.classes.map((_, j) => normalizeMap(d.cam.subarray(j * d.ch * d.cw, (j + 1) * d.ch * d.cw)));
    this.trim();
  }

  /** Drop everything derived (recomputed on demand); the image's own data stays. */
  trim() {
    this.sources = new LRU(6);
    this.statsCache = new LRU(2);
    this.runs = new LRU(4); // each holds up to 15 iterations per class (0.75 MB each for 500 x 375)
    this.dist = null;
    this.T = new LRU(2);
  }

  transition(beta) {
    const { grid, k } = this.d;
    const n = grid * grid;
    if (this.dist === null) this.dist = affinityDistances(this.d.feat, k, n);
    const key = String(beta);
    return this.T.get(key) || this.T.set(key, transitionMatrix(this.dist, n, beta));
  }

  /** The stage source of class slot j: "A" (normalised, upsampled) or "R" (walk, upsampled). */
  source(j, kind, beta, steps) {
    const key = kind === "A" ? `A|${j}` : `R|${j}|${beta}|${steps}`;
    let m = this.sources.get(key);
    if (m) return m;
    const { h, w, ch, cw, grid } = this.d;
    if (kind === "A") {
      m = interpolate(this.normalized[j], ch, cw, h, w);
    } else {
      const a = resizeToGrid(this.normalized[j], ch, cw, grid);
      const r = randomWalk(this.transition(beta), a, grid * grid, steps);
      m = interpolate(r, grid, grid, h, w);
    }
    return this.sources.set(key, m);
  }

  stats(radius, eps) {
    const key = `${radius}|${eps}`;
    return this.statsCache.get(key) ||
      this.statsCache.set(key, sharedFilter().statistics(this.guide, this.d.h, this.d.w, radius, eps));
  }

  /**
   * The iterations of one setting for the class slots ``slots``: {key, q: [[Q^1..]], masks}.
   * ``job``: {stage source kind, beta, steps, radius, eps, threshold (null: Otsu)}.
   */
  run(job, slots) {
    const key = [job.kind, job.kind === "R" ? job.beta : "", job.kind === "R" ? job.steps : "", job.radius, job.eps,
      job.threshold === null ? "otsu" : job.threshold, slots.join(",")].join("|");
    let run = this.runs.get(key);
    if (!run) {
      run = { key, slots, job, q: slots.map(() => []), mask: slots.map(() => null) };
      this.runs.set(key, run);
    }
    return run;
  }

  /** Binarise Q^t of every slot of ``run`` (t = 0: the source) and report the changed rows/cols. */
  maskStep(run, t) {
    const { h, w } = this.d;
    const { job } = run;
    const rows = new Uint8Array(h), cols = new Uint8Array(w);
    run.slots.forEach((j, s) => {
      run.q[s].length = t; // later iterations, if any, are recomputed from here
      const q = t === 0 ? this.source(j, job.kind, job.beta, job.steps) : run.q[s][t - 1];
      run.mask[s] = run.mask[s] || new Uint8Array(h * w);
      sharedFilter().binarize(q, job.threshold, h, w, run.mask[s], rows, cols);
    });
    return { rows, cols };
  }

  /** Filter every slot's current mask with the crop ``box`` (activeRegion over all classes). */
  filterStep(run, box) {
    const { job } = run;
    const stats = this.stats(job.radius, job.eps);
    const gf = sharedFilter();
    run.slots.forEach((_, s) => run.q[s].push(gf.filterMask(stats, run.mask[s], box)));
  }
}

// ------------------------------------------------------------------- the worker protocol

/**
 * Requests a worker (sgwsss_live_worker.mjs) or the page itself answers; ``engines`` maps an
 * image key to its ImageEngine. Returns {reply, transfer}.
 *   {op: "image", image, data}                          store an image's data
 *   {op: "mask", image, job, slots, t}                  binarise Q^t -> changed rows / cols
 *   {op: "filter", image, job, slots, box, next}        Q^{t+1} (+ the next mask if ``next``)
 *   {op: "result", image, job, slots, t}                Q^t (t = 0: the stage source) and its Otsu threshold
 *   {op: "status", image, job, slots}                   how many iterations are stored
 *   {op: "hello"}                                       {simd: whether the WebAssembly kernels run}
 */
export function handleMessage(engines, msg) {
  if (msg.op === "image") {
    if (!engines.has(msg.image)) engines.set(msg.image, new ImageEngine(msg.data));
    return { reply: { ok: true } };
  }
  if (msg.op === "hello") return { reply: { simd: sharedFilter().k !== null } };
  const engine = engines.get(msg.image);
  if (!engine) throw new Error(`no data for image ${msg.image}`);
  if (engines.recent !== msg.image) {
    // keep the derived arrays (tens of MB) of the two most recent images only
    engines.previous = engines.recent;
    engines.recent = msg.image;
    for (const [key, e] of engines) if (key !== engines.recent && key !== engines.previous) e.trim();
  }
  const run = msg.job.iterations === 0 ? null : engine.run(msg.job, msg.slots);
  if (msg.op === "status") return { reply: { done: run ? run.q[0].length : 0 } };
  if (msg.op === "mask") return rowsColsReply(engine.maskStep(run, msg.t));
  if (msg.op === "filter") {
    engine.filterStep(run, msg.box);
    return msg.next ? rowsColsReply(engine.maskStep(run, run.q[0].length)) : { reply: { done: run.q[0].length } };
  }
  if (msg.op === "result") {
    const { kind, beta, steps } = msg.job;
    const maps = msg.slots.map((j, s) => (msg.t === 0 ? engine.source(j, kind, beta, steps) : run.q[s][msg.t - 1]).slice());
    const thresholds = maps.map((m) => sharedFilter().otsu(m, engine.d.h, engine.d.w));
    return { reply: { maps, thresholds }, transfer: maps.map((m) => m.buffer) };
  }
  throw new Error(`unknown request ${msg.op}`);
}

function rowsColsReply({ rows, cols }) {
  return { reply: { rows, cols }, transfer: [rows.buffer, cols.buffer] };
}
