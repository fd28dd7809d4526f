"""sgwsss: self-guided weakly supervised semantic segmentation (Ke & Hsu).

The package follows the paper's pipeline:

* :mod:`sgwsss.data` -- PASCAL VOC 2012 (+ SBD) with image-level labels.
* :mod:`sgwsss.model` -- DeepLab-v2 style network, classification branch,
  aggregation layer (step 1, localization maps).
* :mod:`sgwsss.losses` -- Eqs. 1, 4, 12, 13.
* :mod:`sgwsss.refine` -- affinity (Eqs. 2-3, 5), Otsu, guided filter
  (Eqs. 6-8; as a trainable layer, Eqs. 9-10), self-guided refinement, pseudo labels (Eq. 11),
  Table 1 stages.
* :mod:`sgwsss.crf`, :mod:`sgwsss.evaluate` -- dense CRF; mIoU and the quality of each
  Table 1 stage's pseudo labels.
* :mod:`sgwsss.pipeline` -- the one pseudo-label pipeline: network -> affinity -> Table 1 stage
  -> Eq. 11 -> CRF, which training, the command line, the scores, the benchmarks and the book call.
* :mod:`sgwsss.train` -- Algorithm 1 (alternating training).
* :mod:`sgwsss.files` -- atomic writes (temp file + rename) for everything the package writes.
* :mod:`sgwsss.paper` -- the paper's reported numbers (Tables 1-3).
* :mod:`sgwsss.book` -- book-only helpers (figures, results tables, the chapters' explorer);
  the modules above never import it.
"""

__version__ = "0.1.0"
