"""Benchmark: sgwsss self-guided refinement vs OpenCV's guided filter doing the same work.

For each of ``--images`` VOC images (no network needed) the class maps are the
ground-truth masks of the present classes, Gaussian-blurred (``--sigma``), as
float32. Both sides then run ``--iterations`` rounds of "Otsu binarisation +
guided filter (r, eps)" on every present class:

* sgwsss: ``self_guided_refine`` (guide statistics once per image, all classes
  filtered together, exact batched Otsu);
* OpenCV: ``cv2.ximgproc.createGuidedFilter(image, r, eps)`` once per image, then
  per class and iteration ``skimage.filters.threshold_otsu`` + ``filter``.

The two are run interleaved (alternating order) with the same thread count. The
script prints both medians (ms/image), their ratio (OpenCV / sgwsss), a
filter-only comparison (one filter pass over all classes, ms per map), and the
largest absolute difference of one filter pass of each from a float64 reference
(scipy running-sum box filters). Example::

    python benchmarks/guided_filter.py --images 50 --threads 2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgwsss.refine.guided_filter import GuidedFilter  # noqa: E402
from sgwsss.refine.self_guided import self_guided_refine  # noqa: E402


def reference_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Float64 guided filter (clipped windows) with scipy's box filter: guide (3, H, W), src (H, W)."""
    from scipy.ndimage import uniform_filter

    guide = guide.astype(np.float64)
    src = src.astype(np.float64)
    size = 2 * radius + 1
    count = uniform_filter(np.ones(src.shape), size, mode="constant")

    def mean(x):
        return uniform_filter(x, size, mode="constant") / count

    mu = np.stack([mean(g) for g in guide])
    mp = mean(src)
    cov = np.stack([mean(g * src) for g in guide]) - mu * mp
    sigma = np.empty(src.shape + (3, 3))
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = mean(guide[i] * guide[j]) - mu[i] * mu[j]
    sigma += eps * np.eye(3)
    a = np.moveaxis(np.linalg.solve(sigma, np.moveaxis(cov, 0, -1)[..., None])[..., 0], -1, 0)
    b = mp - (a * mu).sum(0)
    return (np.stack([mean(x) for x in a]) * guide).sum(0) + mean(b)


def load_examples(voc_root: pathlib.Path, split: str, count: int, sigma: float):
    import cv2

    voc = voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    for name in ids:
        mask = np.array(Image.open(voc / "SegmentationClassAug" / f"{name}.png"))
        classes = [int(c) for c in np.unique(mask) if 0 < c < 255]
        if not classes:
            continue
        image = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float32) / 255
        maps = np.stack([cv2.GaussianBlur((mask == c).astype(np.float32), (0, 0), sigma) for c in classes])
        yield name, image, classes, maps
        count -= 1
        if count == 0:
            return


def main(argv=None) -> int:
    default_root = os.environ.get("SGWSSS_VOC_ROOT", str(REPO.parent / "shared" / "voc-sample"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voc-root", default=default_root, help="folder holding VOCdevkit/ (default: %(default)s)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--radius", type=int, default=17)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--sigma", type=float, default=8.0, help="Gaussian blur of the ground-truth masks (px)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", help="device of the sgwsss side (cpu or cuda)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the float64 reference comparison")
    ap.add_argument("--save", default=None, metavar="NAME",
                    help="result name under sgwsss/book/results/ (default: guided_filter, or guided_filter_cuda)")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write the JSON")
    args = ap.parse_args(argv)

    import cv2
    from skimage.filters import threshold_otsu

    if not hasattr(cv2, "ximgproc"):
        print("cv2.ximgproc is missing: install opencv-contrib-python(-headless)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    r, eps, iters = args.radius, args.eps, args.iterations
    t_sg, t_cv, f_sg, f_cv, err_sg, err_cv, n_maps = [], [], [], [], [], [], 0
    for i, (name, image, classes, maps) in enumerate(
        load_examples(pathlib.Path(args.voc_root), args.split, args.images, args.sigma)
    ):
        k = len(classes)
        n_maps += k
        img_t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device)
        maps_t = torch.zeros(1, 20, *maps.shape[-2:], device=device)
        labels = torch.zeros(1, 20, device=device)
        for j, c in enumerate(classes):
            maps_t[0, c - 1] = torch.from_numpy(maps[j])
            labels[0, c - 1] = 1

        def run_sg():
            sync()
            t0 = time.perf_counter()
            self_guided_refine(img_t, maps_t, iterations=iters, radius=r, eps=eps, labels=labels)
            sync()
            return time.perf_counter() - t0

        def run_cv():
            t0 = time.perf_counter()
            gf = cv2.ximgproc.createGuidedFilter(image, r, eps)
            for q in maps:
                for _ in range(iters):
                    q = gf.filter((q > threshold_otsu(q)).astype(np.float32))
            return time.perf_counter() - t0

        if i == 0:  # warm-up (allocations, first-call overheads)
            run_sg(), run_cv()
        if i % 2:
            t_cv.append(run_cv())
            t_sg.append(run_sg())
        else:
            t_sg.append(run_sg())
            t_cv.append(run_cv())

        # filter only: one pass over the binary masks of all classes
        binary = np.stack([(m > threshold_otsu(m)).astype(np.float32) for m in maps])
        gf_cv = cv2.ximgproc.createGuidedFilter(image, r, eps)
        gf_sg = GuidedFilter(img_t, r, eps)
        bin_t = torch.from_numpy(binary)[None].to(device)
        q_sg = gf_sg(bin_t)
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            q_sg = gf_sg(bin_t)
            sync()
            f_sg.append((time.perf_counter() - t0) / k)
            t0 = time.perf_counter()
            q_cv = np.stack([gf_cv.filter(b) for b in binary])
            f_cv.append((time.perf_counter() - t0) / k)

        if not args.no_accuracy:
            ref = reference_guided_filter(image.transpose(2, 0, 1), binary[0], r, eps)
            err_sg.append(float(np.abs(q_sg[0, 0].double().cpu().numpy() - ref).max()))
            err_cv.append(float(np.abs(q_cv[0].astype(np.float64) - ref).max()))

    if not t_sg:
        print(f"no images found under {args.voc_root}", file=sys.stderr)
        return 1
    med_sg, med_cv = statistics.median(t_sg) * 1e3, statistics.median(t_cv) * 1e3
    print(
        f"{len(t_sg)} images ({n_maps} class maps), {iters} iterations, r={r}, eps={eps:g}, "
        f"threads={args.threads}, sgwsss on {device}, torch {torch.__version__}, OpenCV {cv2.__version__}"
    )
    print(f"self-guided refinement, median ms/image: sgwsss {med_sg:.1f}  OpenCV {med_cv:.1f}  "
          f"ratio OpenCV/sgwsss {med_cv / med_sg:.2f}")
    print(f"  (totals: sgwsss {sum(t_sg):.2f} s, OpenCV {sum(t_cv):.2f} s)")
    ms_sg, ms_cv = statistics.median(f_sg) * 1e3, statistics.median(f_cv) * 1e3
    print(f"one filter pass, median ms/map: sgwsss {ms_sg:.2f}  OpenCV {ms_cv:.2f}  ratio {ms_cv / ms_sg:.2f}")
    if err_sg:
        print(
            f"max |filter - float64 reference| over {len(err_sg)} images (eps={eps:g}): "
            f"sgwsss {max(err_sg):.2e} (median {statistics.median(err_sg):.1e})  "
            f"OpenCV {max(err_cv):.2e} (median {statistics.median(err_cv):.1e})"
        )
    if not args.no_save:
        from sgwsss.book.report import save_result

        name = args.save or ("guided_filter" if device.type == "cpu" else f"guided_filter_{device.type}")
        path = save_result(name, {
            "images": len(t_sg), "maps": n_maps, "iterations": iters, "radius": r, "eps": eps,
            "threads": args.threads, "device": str(device), "opencv": cv2.__version__,
            "backend": GuidedFilter(img_t[:, :, :8, :8], r, eps).backend,
            "refine_ms_sgwsss": med_sg, "refine_ms_opencv": med_cv, "refine_ratio": med_cv / med_sg,
            "filter_ms_sgwsss": ms_sg, "filter_ms_opencv": ms_cv, "filter_ratio": ms_cv / ms_sg,
            "max_error_sgwsss": max(err_sg) if err_sg else None, "max_error_opencv": max(err_cv) if err_cv else None,
            "median_error_sgwsss": statistics.median(err_sg) if err_sg else None,
            "median_error_opencv": statistics.median(err_cv) if err_cv else None,
        })
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
