// sgwsss live refinement: the guided filter's two column passes as WebAssembly SIMD kernels.
//
// No build step: the module's bytes are assembled here, at load time, from the few
// instructions below (the WebAssembly binary format, https://webassembly.github.io/spec/).
// Each kernel does exactly the float64 operations of the JS version in
// sgwsss_live_core.mjs (GuidedFilterState._coefficients / _output), in the same order, two
// columns at a time (f64x2 lanes are IEEE float64, no fused multiply-add), so the results
// are bit for bit the same; they only run faster (no bounds checks, two lanes).
//
//   coef(pairs, acc, add, sub, stats, plane, nw, kh, ab, abPlane, accPlane, ringPlane)
//     pass 2 of one row: window sums -> a_k, b_k (Eqs. 7-8), then the column windows slide
//   output(pairs, acc, guide, plane, nw, kh, out, accPlane)
//     pass 4 of one row: q = (sum(a)^T I + sum(b)) / n (Eq. 6)
//   slide(pairs, acc, add, sub, accPlane, ringPlane)
//     (acc + add row) - sub row, for pass 4
//   rows1(cw, p, guide, plane, out, ringPlane, r)
//     pass 1 of one row: clipped row window sums of [p, I p] (p: the crop's mask row as bytes,
//     with r + 1 zeros on both sides; exact sums, so the order of the additions is free)
//   grows(w, guide, plane, out, ringPlane, r, m) / gcols(pairs, acc, add, sub, accPlane, ringPlane, kh, nw, nh,
//     ncol, eps, out, outPlane)
//     the guide statistics (guide_statistics, Eq. 7): row sums of I and I_i I_j, then per pixel pair the
//     window means and the inverse of Sigma_k + eps U divided by n_k (strict float64, as the package's kernel)
//   binarize(h, w, x, t, out, rows, cols)
//     out = x > t (float32 compare) as bytes; rows / cols |= where a pixel differs from a 4-neighbour
//   widen(n, src, dst)
//     bytes -> float32 (a mask copied as the filter's output outside the active box)
//   minmax(n, x, range) / hist(n, x, lo, scale, edges, counts, last)
//     Otsu's range and histogram of a float32 map (numpy's bins: an estimate within one bin,
//     fixed up against the float32 edges, as sgwsss.refine.otsu does)
//   rows3(cw, ab, abPlane, out, ringPlane, r)
//     pass 3 of one row: row window sums of [a, b] (ab rows with r + 1 zeros on both sides:
//     s += a[x + r + 1] - a[x - r], which is the JS version's arithmetic with its zeros)
//
// Pointers are byte offsets into the memory; "pairs" counts column pairs; float32 rows are
// read two values at a time (v128.load64_zero + promote) and written back the same way.

const u32 = (n) => {
  const b = [];
  do {
    let x = n & 0x7f;
    n >>>= 7;
    if (n) x |= 0x80;
    b.push(x);
  } while (n);
  return b;
};
const s32 = (n) => {
  const b = [];
  for (;;) {
    const x = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(x & 0x40)) || (n === -1 && x & 0x40)) return [...b, x];
    b.push(x | 0x80);
  }
};
const name = (s) => [...u32(s.length), ...[...s].map((c) => c.charCodeAt(0))];
const vec = (items) => [...u32(items.length), ...items.flat()];
const I32 = 0x7f, F64 = 0x7c, V128 = 0x7b;
const f32load = (off = 0) => [0x2a, 2, ...u32(off)], f32store = [0x38, 2, 0], u8load = [0x2d, 0, 0];
const promote1 = [0xbb], demote1 = [0xb6], fromU = [0xb8]; // f64.promote_f32, f32.demote_f64, f64.convert_i32_u
const dadd = [0xa0], dsub = [0xa1], dmul = [0xa2], isub = [0x6b];
const f64zero = [0x44, 0, 0, 0, 0, 0, 0, 0, 0];

// instructions
const get = (i) => [0x20, ...u32(i)];
const set = (i) => [0x21, ...u32(i)];
const ic = (n) => [0x41, ...s32(n)];
const iadd = [0x6a], imul = [0x6c], ige = [0x4e];
const simd = (op, ...imm) => [0xfd, ...u32(op), ...imm];
const vload = simd(0x00, 4, 0), vstore = simd(0x0b, 4, 0);
const load2f32 = [...simd(0x5d, 3, 0), ...simd(0x5f)]; // v128.load64_zero, f64x2.promote_low_f32x4
const store2f32 = [...simd(0x5e), ...simd(0x5b, 3, 0, 0)]; // f32x4.demote_f64x2_zero, v128.store64_lane 0
const add = simd(0xf0), sub = simd(0xf1), mul = simd(0xf2), splat = simd(0x14);

/** ``for (x = 0; x < pairs; x++) body`` with ``x`` in local ``xi`` and the count in local ``n``. */
const loop = (xi, n, body) => [
  ...ic(0), ...set(xi),
  0x02, 0x40, 0x03, 0x40, // block, loop
  ...get(xi), ...get(n), ...ige, 0x0d, 1, // br_if (x >= pairs) out
  ...body,
  ...get(xi), ...ic(1), ...iadd, ...set(xi), 0x0c, 0, // x++, br loop
  0x0b, 0x0b,
];

/** Address ``base + x * bytes + plane * c`` (x: the pair index local). */
const at = (base, xi, bytes, plane = null, c = 0) =>
  [...get(base), ...get(xi), ...ic(bytes), ...imul, ...iadd, ...(c ? [...get(plane), ...ic(c), ...imul, ...iadd] : [])];

function coefKernel() {
  // params
  const [n, acc, addp, subp, st, plane, nw, kh, ab, abPlane, accPlane, ringPlane] = [...Array(12).keys()];
  // locals: s0..s3, mu0..mu2, d0..d2, a0..a2, khv (v128), x (i32)
  const [s0, s1, s2, s3, mu0, mu1, mu2, d0, d1, d2, a0, a1, a2, khv] = [...Array(14).keys()].map((i) => 12 + i);
  const x = 26;
  const S = [s0, s1, s2, s3];
  const stat = (c) => [...at(st, x, 8, plane, c), ...load2f32];
  const dot = (i, j, k) => [...stat(i), ...get(d0), ...mul, ...stat(j), ...get(d1), ...mul, ...add,
    ...stat(k), ...get(d2), ...mul, ...add];
  const body = [
    ...[0, 1, 2, 3].flatMap((c) => [...at(acc, x, 16, accPlane, c), ...vload, ...set(S[c])]),
    ...stat(0), ...set(mu0), ...stat(1), ...set(mu1), ...stat(2), ...set(mu2),
    ...get(s1), ...get(mu0), ...get(s0), ...mul, ...sub, ...set(d0), // d = sum(I p) - mu sum(p)
    ...get(s2), ...get(mu1), ...get(s0), ...mul, ...sub, ...set(d1),
    ...get(s3), ...get(mu2), ...get(s0), ...mul, ...sub, ...set(d2),
    ...dot(3, 4, 5), ...set(a0), ...dot(4, 6, 7), ...set(a1), ...dot(5, 7, 8), ...set(a2), // Eq. 7
    ...[a0, a1, a2].flatMap((v, c) => [...at(ab, x, 8, abPlane, c), ...get(v), ...store2f32]),
    ...at(ab, x, 8, abPlane, 3), // Eq. 8: b = s0 kh nw - a0 mu0 - a1 mu1 - a2 mu2
    ...get(s0), ...get(khv), ...mul, ...at(nw, x, 16), ...vload, ...mul,
    ...get(a0), ...get(mu0), ...mul, ...sub, ...get(a1), ...get(mu1), ...mul, ...sub,
    ...get(a2), ...get(mu2), ...mul, ...sub, ...store2f32,
    ...[0, 1, 2, 3].flatMap((c) => [...at(acc, x, 16, accPlane, c), ...get(S[c]), // slide
      ...at(addp, x, 8, ringPlane, c), ...load2f32, ...add, ...at(subp, x, 8, ringPlane, c), ...load2f32, ...sub,
      ...vstore]),
  ];
  return { name: "coef", params: [I32, I32, I32, I32, I32, I32, I32, F64, I32, I32, I32, I32], locals: [[14, V128], [1, I32]],
    code: [...get(kh), ...splat, ...set(khv), ...loop(x, n, body)] };
}

function outputKernel() {
  const [n, acc, guide, plane, nw, kh, out, accPlane] = [...Array(8).keys()];
  const [khv, x] = [8, 9];
  const term = (c) => [...at(acc, x, 16, accPlane, c), ...vload, ...at(guide, x, 8, plane, c), ...load2f32, ...mul];
  const body = [
    ...at(out, x, 8),
    ...term(0), ...term(1), ...add, ...term(2), ...add, ...at(acc, x, 16, accPlane, 3), ...vload, ...add,
    ...get(khv), ...at(nw, x, 16), ...vload, ...mul, ...mul, ...store2f32,
  ];
  return { name: "output", params: [I32, I32, I32, I32, I32, F64, I32, I32], locals: [[1, V128], [1, I32]],
    code: [...get(kh), ...splat, ...set(khv), ...loop(x, n, body)] };
}

function slideKernel() {
  const [n, acc, addp, subp, accPlane, ringPlane] = [...Array(6).keys()];
  const x = 6;
  const body = [0, 1, 2, 3].flatMap((c) => [...at(acc, x, 16, accPlane, c), ...at(acc, x, 16, accPlane, c), ...vload,
    ...at(addp, x, 8, ringPlane, c), ...load2f32, ...add, ...at(subp, x, 8, ringPlane, c), ...load2f32, ...sub, ...vstore]);
  return { name: "slide", params: [I32, I32, I32, I32, I32, I32], locals: [[1, I32]], code: loop(x, n, body) };
}

/** ``base + (x + k) * bytes`` for the i32 locals base and x and a constant or local offset. */
const addr = (base, xi, bytes, k = null, neg = false) => [...get(base), ...get(xi), ...(k === null ? [] : [...get(k), ...(neg ? isub : iadd)]),
  ...ic(bytes), ...imul, ...iadd];

function rows1Kernel() {
  // params: cw, p, guide, plane, out, ringPlane, r ; locals: s0..s3, va, vs (f64), x, m, ra (i32)
  const [cw, p, guide, plane, out, ringPlane, r] = [...Array(7).keys()];
  const [s0, s1, s2, s3, va, vs] = [7, 8, 9, 10, 11, 12];
  const [x, m, ra] = [13, 14, 15];
  const S = [s0, s1, s2, s3];
  const g = (c, xi, k, neg) => [...addr(guide, xi, 4, k, neg), ...(c ? [...get(plane), ...ic(c), ...imul, ...iadd] : []), ...f32load(), ...promote1];
  const pv = (xi, k, neg) => [...addr(p, xi, 1, k, neg), ...u8load, ...fromU];
  const init = [
    ...pv(x, null), ...set(va),
    ...get(s0), ...get(va), ...dadd, ...set(s0),
    ...[1, 2, 3].flatMap((c) => [...get(S[c]), ...get(va), ...g(c - 1, x, null), ...dmul, ...dadd, ...set(S[c])]),
  ];
  const body = [
    ...[0, 1, 2, 3].flatMap((c) => [...addr(out, x, 4), ...(c ? [...get(ringPlane), ...ic(c), ...imul, ...iadd] : []),
      ...get(S[c]), ...demote1, ...f32store]),
    ...pv(x, ra), ...set(va), ...pv(x, r, true), ...set(vs),
    ...get(s0), ...get(va), ...get(vs), ...dsub, ...dadd, ...set(s0),
    ...[1, 2, 3].flatMap((c) => [...get(S[c]), ...get(va), ...g(c - 1, x, ra), ...dmul, ...get(vs), ...g(c - 1, x, r, true), ...dmul,
      ...dsub, ...dadd, ...set(S[c])]),
  ];
  return { name: "rows1", params: [I32, I32, I32, I32, I32, I32, I32], locals: [[6, F64], [3, I32]],
    code: [...get(r), ...ic(1), ...iadd, ...set(ra), ...get(r), ...ic(1), ...iadd, ...set(m), // m = r + 1 (x <= r)
      ...loop(x, m, init), ...loop(x, cw, body)] };
}

function rows3Kernel() {
  // params: cw, ab, abPlane, out, ringPlane, r ; locals: s0..s3 (f64), x, m, ra (i32)
  const [cw, ab, abPlane, out, ringPlane, r] = [...Array(6).keys()];
  const S = [6, 7, 8, 9];
  const [x, m, ra] = [10, 11, 12];
  const a = (c, k, neg) => [...addr(ab, x, 4, k, neg), ...(c ? [...get(abPlane), ...ic(c), ...imul, ...iadd] : []), ...f32load(), ...promote1];
  const init = [0, 1, 2, 3].flatMap((c) => [...get(S[c]), ...a(c, null), ...dadd, ...set(S[c])]);
  const body = [0, 1, 2, 3].flatMap((c) => [
    ...addr(out, x, 4), ...(c ? [...get(ringPlane), ...ic(c), ...imul, ...iadd] : []), ...get(S[c]), ...demote1, ...f32store,
    ...get(S[c]), ...a(c, ra), ...a(c, r, true), ...dsub, ...dadd, ...set(S[c])]);
  return { name: "rows3", params: [I32, I32, I32, I32, I32, I32], locals: [[4, F64], [3, I32]],
    code: [...get(r), ...ic(1), ...iadd, ...set(ra), ...get(r), ...ic(1), ...iadd, ...set(m), ...loop(x, m, init), ...loop(x, cw, body)] };
}

const flt = [0x63], fgt = [0x64], fge = [0x66], ilt = [0x48], igt = [0x4a];
const ifThen = (cond, then, otherwise = null) => [...cond, 0x04, 0x40, ...then, ...(otherwise ? [0x05, ...otherwise] : []), 0x0b];

function minmaxKernel() {
  // params: n, x, range ; locals: lo, hi, v (f64), i (i32)
  const [n, x, range] = [0, 1, 2];
  const [lo, hi, v, i] = [3, 4, 5, 6];
  const body = [...at(x, i, 4), ...f32load(), ...promote1, ...set(v),
    ...ifThen([...get(v), ...get(lo), ...flt], [...get(v), ...set(lo)],
      ifThen([...get(v), ...get(hi), ...fgt], [...get(v), ...set(hi)]))];
  return { name: "minmax", params: [I32, I32, I32], locals: [[3, F64], [1, I32]],
    code: [...get(x), ...f32load(), ...promote1, ...set(lo), ...get(lo), ...set(hi), ...loop(i, n, body),
      ...get(range), ...get(lo), ...demote1, ...f32store, ...get(range), ...get(hi), ...demote1, 0x38, 2, 4] };
}

function histKernel() {
  // params: n, x, lo, scale, edges, counts, last ; locals: v (f64), i, t, c (i32)
  const [n, x, lo, scale, edges, counts, last] = [...Array(7).keys()];
  const [v, i, t, c] = [7, 8, 9, 10];
  const edge = (k) => [...get(edges), ...get(t), ...(k ? [...ic(k), ...iadd] : []), ...ic(8), ...imul, ...iadd, 0x2b, 3, 0];
  const body = [
    ...at(x, i, 4), ...f32load(), ...promote1, ...set(v),
    ...get(v), ...get(lo), ...dsub, ...get(scale), ...dmul, 0xfc, 0x02, ...set(t), // i32.trunc_sat_f64_s
    ...ifThen([...get(t), ...get(last), ...igt], [...get(last), ...set(t)]),
    ...ifThen([...get(v), ...edge(0), ...flt], [...get(t), ...ic(1), ...isub, ...set(t)],
      ifThen([...get(t), ...get(last), ...ilt], ifThen([...get(v), ...edge(1), ...fge], [...get(t), ...ic(1), ...iadd, ...set(t)]))),
    ...get(counts), ...get(t), ...ic(4), ...imul, ...iadd, ...set(c),
    ...get(c), ...get(c), 0x28, 2, 0, ...ic(1), ...iadd, 0x36, 2, 0, // counts[t] += 1
  ];
  return { name: "hist", params: [I32, I32, F64, F64, I32, I32, I32], locals: [[1, F64], [3, I32]], code: loop(i, n, body) };
}

function guideRowsKernel() {
  // params: w, guide, plane, out, ringPlane, r, m ; locals: s0..s8, a, b, c (f64), x (i32)
  const [w, guide, plane, out, ringPlane, r, m] = [...Array(7).keys()];
  const S = [7, 8, 9, 10, 11, 12, 13, 14, 15];
  const [a, b, c, x] = [16, 17, 18, 19];
  const gl = (ch, k, neg) => [...addr(guide, x, 4, k, neg), ...(ch ? [...get(plane), ...ic(ch), ...imul, ...iadd] : []), ...f32load(), ...promote1];
  const terms = [[a], [b], [c], [a, a], [a, b], [a, c], [b, b], [b, c], [c, c]];
  const update = (op, k, neg) => [...gl(0, k, neg), ...set(a), ...gl(1, k, neg), ...set(b), ...gl(2, k, neg), ...set(c),
    ...terms.flatMap((t, j) => [...get(S[j]), ...get(t[0]), ...(t.length > 1 ? [...get(t[1]), ...dmul] : []), ...op, ...set(S[j])])];
  const body = [
    ...S.flatMap((v, j) => [...addr(out, x, 8), ...(j ? [...get(ringPlane), ...ic(j), ...imul, ...iadd] : []), ...get(v), 0x39, 3, 0]),
    // if (x + r + 1 < w) add column x + r + 1 ; if (x - r >= 0) subtract column x - r
    ...ifThen([...get(x), ...get(r), ...iadd, ...ic(1), ...iadd, ...get(w), ...ilt], update(dadd, m)),
    ...ifThen([...get(x), ...get(r), ...isub, ...ic(0), 0x4e], update(dsub, r, true)),
  ];
  return { name: "grows", params: [I32, I32, I32, I32, I32, I32, I32], locals: [[12, F64], [1, I32]],
    code: [...loop(x, m, update(dadd, null)), ...loop(x, w, body)] };
}

function guideColumnsKernel() {
  // params: pairs, acc, add, sub, accPlane, ringPlane, kh, nw, nh, ncol, eps, out, outPlane
  const [n, acc, addp, subp, accPlane, ringPlane, kh, nw, nh, ncol, eps, out, outPlane] = [...Array(13).keys()];
  const A = [...Array(9).keys()].map((i) => 13 + i); // window sums
  const [k, m0, m1, m2, s00, s01, s02, s11, s12, s22, c00, c01, c02, c11, c12, c22, det, cnt, ev] =
    [...Array(19).keys()].map((i) => 22 + i);
  const x = 41;
  const g = get, ops = (...seq) => seq.flat();
  const cov = (j, p, q, withEps) => ops(g(A[j]), g(k), mul, g(p), g(q), mul, sub, withEps ? [...g(ev), ...add] : []);
  const cof = (p, q, r2, t) => ops(g(p), g(q), mul, g(r2), g(t), mul, sub);
  const store = (v, j) => ops(at(out, x, 8, outPlane, j), g(v), store2f32);
  const inv = (v, j) => ops(at(out, x, 8, outPlane, j), g(v), g(det), simd(0xf3), g(cnt), simd(0xf3), store2f32);
  const body = ops(
    ...A.map((v, j) => [...at(acc, x, 16, accPlane, j), ...vload, ...set(v)]),
    g(kh), splat, at(nw, x, 16), vload, mul, set(k),
    g(A[0]), g(k), mul, set(m0), g(A[1]), g(k), mul, set(m1), g(A[2]), g(k), mul, set(m2),
    cov(3, m0, m0, true), set(s00), cov(4, m0, m1, false), set(s01), cov(5, m0, m2, false), set(s02),
    cov(6, m1, m1, true), set(s11), cov(7, m1, m2, false), set(s12), cov(8, m2, m2, true), set(s22),
    cof(s11, s22, s12, s12), set(c00), cof(s02, s12, s01, s22), set(c01), cof(s01, s12, s02, s11), set(c02),
    cof(s00, s22, s02, s02), set(c11), cof(s01, s02, s00, s12), set(c12), cof(s00, s11, s01, s01), set(c22),
    g(s00), g(c00), mul, g(s01), g(c01), mul, add, g(s02), g(c02), mul, add, set(det),
    g(nh), splat, at(ncol, x, 16), vload, mul, set(cnt),
    store(m0, 0), store(m1, 1), store(m2, 2),
    inv(c00, 3), inv(c01, 4), inv(c02, 5), inv(c11, 6), inv(c12, 7), inv(c22, 8),
    ...A.map((v, j) => [...at(acc, x, 16, accPlane, j), ...g(v), ...at(addp, x, 16, ringPlane, j), ...vload, ...add,
      ...at(subp, x, 16, ringPlane, j), ...vload, ...sub, ...vstore]),
  );
  return { name: "gcols", params: [I32, I32, I32, I32, I32, I32, F64, I32, F64, I32, F64, I32, I32], locals: [[28, V128], [1, I32]],
    code: [...g(eps), ...splat, ...set(ev), ...loop(x, n, body)] };
}

function binarizeKernel() {
  // params: h, w, x, t (f32), out, rows, cols ; locals: y, i, v, q, left, up (i32)
  const [h, w, x, t, out, rows, cols] = [...Array(7).keys()];
  const [y, i, v, xx, n] = [7, 8, 9, 10, 11];
  const F32 = 0x7d;
  const u8at = (base, idx) => [...get(base), ...idx, ...iadd];
  const mark = (base, idx) => [...u8at(base, idx), ...ic(1), 0x3a, 0, 0]; // i32.store8 1
  const body = [
    // i = y * w + xx ; v = x[i] > t
    ...get(y), ...get(w), ...imul, ...get(xx), ...iadd, ...set(i),
    ...get(x), ...get(i), ...ic(4), ...imul, ...iadd, ...f32load(), ...get(t), 0x5e, ...set(v), // f32.gt
    ...u8at(out, get(i)), ...get(v), 0x3a, 0, 0,
    ...ifThen([...get(xx), ...ic(0), 0x4a], ifThen([...u8at(out, [...get(i), ...ic(1), ...isub]), ...u8load, ...get(v), 0x47], // i32.ne
      [...mark(rows, get(y)), ...mark(cols, [...get(xx), ...ic(1), ...isub]), ...mark(cols, get(xx))])),
    ...ifThen([...get(y), ...ic(0), 0x4a], ifThen([...u8at(out, [...get(i), ...get(w), ...isub]), ...u8load, ...get(v), 0x47],
      [...mark(rows, [...get(y), ...ic(1), ...isub]), ...mark(rows, get(y)), ...mark(cols, get(xx))])),
  ];
  const rowLoop = [...get(w), ...set(n), ...loop(xx, n, body)];
  return { name: "binarize", params: [I32, I32, I32, F32, I32, I32, I32], locals: [[5, I32]], code: loop(y, h, rowLoop) };
}

function widenKernel() {
  const [n, src, dst, i] = [0, 1, 2, 3];
  const body = [...at(dst, i, 4), ...get(src), ...get(i), ...iadd, ...u8load, 0xb3, ...f32store]; // f32.convert_i32_u
  return { name: "widen", params: [I32, I32, I32], locals: [[1, I32]], code: loop(i, n, body) };
}

/** The module's bytes: the kernels, importing their memory as env.mem. */
export function moduleBytes(funcs = [coefKernel(), outputKernel(), slideKernel(), rows1Kernel(), rows3Kernel(), minmaxKernel(),
  histKernel(), guideRowsKernel(), guideColumnsKernel(), binarizeKernel(), widenKernel()]) {
  const section = (id, body) => [id, ...u32(body.length), ...body];
  const types = funcs.map((f) => [0x60, ...vec(f.params.map((t) => [t])), 0]);
  const codes = funcs.map((f) => {
    const body = [...vec(f.locals.map(([k, t]) => [...u32(k), t])), ...f.code, 0x0b];
    return [...u32(body.length), ...body];
  });
  return new Uint8Array([
    0, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...section(1, vec(types)),
    ...section(2, vec([[...name("env"), ...name("mem"), 0x02, 0x00, ...u32(1)]])),
    ...section(3, vec(funcs.map((_, i) => u32(i)))),
    ...section(7, vec(funcs.map((f, i) => [...name(f.name), 0x00, ...u32(i)]))),
    ...section(10, vec(codes)),
  ]);
}

/**
 * The kernels on a fresh memory, or null where WebAssembly (with SIMD) is unavailable or
 * switched off (globalThis.sgwsssLiveNoWasm); the JS passes then run.
 * @returns {{memory: WebAssembly.Memory, coef, output, slide, rows1, rows3, minmax, hist, grows, gcols, binarize, widen} | null}
 */
export function createKernels() {
  try {
    if (globalThis.sgwsssLiveNoWasm || typeof WebAssembly !== "object") return null;
    const bytes = moduleBytes();
    if (!WebAssembly.validate(bytes)) return null;
    const memory = new WebAssembly.Memory({ initial: 1 });
    const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { mem: memory } });
    return { memory, ...exports };
  } catch (err) {
    return null;
  }
}
