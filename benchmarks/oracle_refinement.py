"""When does the self-guided refinement pay? Degraded ground truth as the localization maps.

    python benchmarks/oracle_refinement.py [--images 60] [--iterations 1,3,15] [--grow=-16,0,16,32]

For each growth ``g`` (pixels; negative shrinks) the ground-truth masks of the
``train`` images are grown, then blurred like stride-16 localization maps, and
the pseudo labels (Eq. 11) of these maps and of their self-guided refinement
(Otsu + guided filter, radius 17, eps 1e-6, each iteration count) are scored
(:func:`sgwsss.evaluate.oracle_refinement`). No network is involved, so the rows
isolate what the refinement does to maps that are too small, right but blurred,
or too large. Prints a table and saves ``sgwsss/book/results/oracle_refinement.json``.
Exits 0.
"""
import argparse
import time

from sgwsss.data import VOCSegmentation, resolve_root
from sgwsss.book.report import oracle_table, save_result
from sgwsss.evaluate import oracle_refinement, pct, subset_indices


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--iterations", default="1,3,15")
    ap.add_argument("--grow", default="-16,0,16,32", help="comma-separated growths in pixels")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    iterations = [int(k) for k in args.iterations.split(",")]
    grows = [int(g) for g in args.grow.split(",")]
    ds = VOCSegmentation(resolve_root(args.voc_root), split="train", with_mask=True)
    idx = subset_indices(len(ds), args.images)
    out = {}
    t0 = time.perf_counter()
    for g in grows:
        out[str(g)] = oracle_refinement(ds, idx, stride=args.stride, grow=g, iterations=iterations)
        print(f"{g:+d} px:", {k: pct(v) for k, v in out[str(g)].items()}, flush=True)
    record = {"split": "train", "images": len(idx), "stride": args.stride, "iterations": iterations, "grow": grows,
              "miou": out}
    print(f"train: {len(idx)} images, stride {args.stride}, radius 17, eps 1e-6")
    print(oracle_table(record))
    print(f"seconds: {time.perf_counter() - t0:.0f}")
    if not args.no_save:
        print(f"saved {save_result('oracle_refinement', record)}")


if __name__ == "__main__":
    main()
