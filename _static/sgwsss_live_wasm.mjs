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

/** The module's bytes: the kernels, importing their memory as env.mem. */
export function moduleBytes(funcs = [coefKernel(), outputKernel(), slideKernel(), rows1Kernel(), rows3Kernel()]) {
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
 * @returns {{memory: WebAssembly.Memory, coef, output, slide, rows1, rows3} | null}
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
