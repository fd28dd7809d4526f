"""Names shared by the package, the configuration and the command line (no torch import).

:data:`STAGES` are the rows of Table 1 of Ke & Hsu (see :mod:`sgwsss.refine.stages`);
:data:`AFFINITY_STAGES` are those that start from the affinity random walk (Eq. 5)
and so need the transition matrix ``T`` (Eqs. 2-3); :data:`CLASSIFIER_INITS` are the
starts of the classification branch.
"""

STAGES = ("A", "R", "G-w/o-aff", "G", "G-iter15-w/o-aff", "G-iter15")
AFFINITY_STAGES = ("R", "G", "G-iter15")

#: Starts of the classification branch (see :meth:`sgwsss.model.SGNet.init_classifier`):
#: ``"normal"``: N(0, 0.01), bias 0, like every new layer (DeepLab-v2; the paper);
#: ``"identity"``: A^c starts as segmentation map c + 1.
CLASSIFIER_INITS = ("normal", "identity")
