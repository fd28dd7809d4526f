"""Benchmark: the paired bootstrap of a difference in mIoU (sgwsss.evaluate.bootstrap).

Random per-image confusion matrices stand in for two methods' (B = A with extra correct pixels);
the script prints the median wall time of ``paired_bootstrap`` over ``--repeats`` runs and the
resulting interval. The goal: thousands of resamples over hundreds of images well under a second.
Example::

    python benchmarks/bootstrap.py --images 500 --resamples 2000 --classes 21
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sgwsss.evaluate.bootstrap import paired_bootstrap  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n, c = args.images, args.classes
    a = rng.integers(0, 2000, size=(n, c, c))
    b = a.copy()
    b[:, np.arange(c), np.arange(c)] += rng.integers(0, 300, size=(n, c))
    times = []
    for seed in range(args.repeats):
        t = time.perf_counter()
        r = paired_bootstrap(b, a, n_resamples=args.resamples, seed=seed)
        times.append(time.perf_counter() - t)
    print(f"{args.resamples} resamples x {n} images x {c} classes: median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f} s) over {args.repeats} runs")
    print(f"mIoU(B) - mIoU(A) = {r.delta:.4f}, 95% interval [{r.low:.4f}, {r.high:.4f}]: {r.verdict('greater')}")


if __name__ == "__main__":
    main()
