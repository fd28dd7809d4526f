"""The numbers Ke & Hsu report, transcribed from the paper (``../shared/paper``), for comparison.

No torch import: the book, the benchmarks and the tests read these without the model.

* :data:`PAPER_TABLE1` -- Table 1: val mIoU (%) of a segmentation network trained on each
  stage's pseudo labels, without and with dense CRF.
* :data:`PAPER_TABLE2` -- Table 2: per-class IoU (%) of the final network on VOC 2012 *test*.
* :data:`PAPER_TABLE3` -- Table 3: published methods on VOC 2012 val, with the extra data and
  external models each uses.
* :data:`PAPER_SETTINGS` -- the training settings of Sec. 4.1 and Algorithm 1.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

__all__ = ["PAPER_TABLE1", "PAPER_TABLE1_CRF", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_SETTINGS"]

#: Table 1, "w/o CRF" column: VOC 2012 val mIoU (%) of the segmentation network trained on
#: each stage's pseudo labels (DeepLab-v2, ResNet-101).
PAPER_TABLE1: Dict[str, float] = {
    "A": 42.7, "R": 43.5, "G-w/o-aff": 41.1, "G": 43.1, "G-iter15-w/o-aff": 46.8, "G-iter15": 47.3,
}
#: Table 1, "w/ CRF" column.
PAPER_TABLE1_CRF: Dict[str, float] = {
    "A": 45.3, "R": 46.3, "G-w/o-aff": 43.5, "G": 45.8, "G-iter15-w/o-aff": 49.4, "G-iter15": 50.5,
}

#: Table 2: per-class IoU (%) on the VOC 2012 *test* set (not val), keyed by the VOC class
#: names of :data:`sgwsss.data.CLASSES`; ``"miou"`` is the paper's mean (47.2).
PAPER_TABLE2: Dict[str, float] = {
    "background": 78.6, "aeroplane": 46.5, "bicycle": 19.8, "bird": 62.7, "boat": 20.0, "bottle": 47.2,
    "bus": 61.8, "car": 53.0, "cat": 67.3, "chair": 16.7, "cow": 49.4, "diningtable": 36.5, "dog": 57.1,
    "horse": 50.9, "motorbike": 63.2, "person": 52.5, "pottedplant": 37.2, "sheep": 51.8, "sofa": 40.0,
    "train": 42.8, "tvmonitor": 36.1, "miou": 47.2,
}

#: Table 3: (method, extra data, external model, val mIoU w/o CRF, val mIoU w/ CRF); ``None``
#: where the paper gives no number ("-"), ``""`` where a method uses no extra data / model.
PAPER_TABLE3: List[Tuple[str, str, str, Optional[float], Optional[float]]] = [
    ("AffinityNet (ResNet38)", "", "AffinityNet", None, 61.7),
    ("AffinityNet (DeepLab)", "", "AffinityNet", None, 58.4),
    ("DCSP (ResNet101)", "", "Saliency", 59.5, 60.8),
    ("DCSP (VGG16)", "", "Saliency", 56.5, 58.6),
    ("SaliencyNet (DeepLab)", "10K Box", "Saliency", 51.2, 55.7),
    ("AE-PSL (DeepLab)", "", "Saliency", None, 55.0),
    ("AugFeed (DeepLab)", "", "MCG", 50.4, 54.3),
    ("CombiningCues (DeepLab)", "", "CRF-RNN", None, 52.8),
    ("TransferNet", "60K Pixel", "", None, 52.1),
    ("SEC (DeepLab)", "", "", 44.3, 50.7),
    ("STC (DeepLab)", "40K Image", "Saliency", None, 49.8),
    ("BFBP (VGG16)", "", "", 44.8, 46.6),
    ("DCSM (VGG16)", "", "", 40.5, 44.1),
    ("SN-B (DeepLab)", "", "MCG/Saliency", None, 41.9),
    ("WSSL-ing (DeepLab)", "", "", None, 38.2),
    ("MIL w/ILP", "", "", 32.6, None),
    ("MIL (VGG16)", "", "", 25.0, None),
    ("G-iter15 (DeepLab)", "", "", 46.2, 48.7),
    ("G-iter15 (ResNet-101)", "", "", 47.3, 50.5),
]

#: Sec. 4.1 (Implementation, Parameter Setting) and Algorithm 1: the training settings of the paper, keyed by
#: the :class:`sgwsss.train.TrainConfig` field each one sets (``None`` where the paper gives no value).
PAPER_SETTINGS: Dict[str, object] = {
    "backbone": "resnet101",       # DeepLab-v2 initialised from ImageNet ResNet-101
    "crop_size": 321,              # random 321 x 321 crops
    "step1_batch_size": 10, "step1_lr": 1e-3, "step1_iters": 50_000,
    "step2_batch_size": 8, "step2_lr": 5e-4, "step2_iters": 10_000,
    "rounds": 2,                   # n in Algorithm 1
    "lam": 1.0,                    # lambda of Eq. 13
    "grid": 50,                    # w = h = 50 for the affinity-guided refinement
    "radius": 17,                  # filtering window 35 = 2 r + 1
    "eps": 1e-6,                   # epsilon of Eq. 8
    "beta": None,                  # the walk's exponent: not in the paper (T = D^-1 W, i.e. beta = 1)
    "train_split": "train_aug",    # 10,582 images (VOC 2012 + SBD)
    "poly_power": None,            # 'poly' policy; the power is not given
}
