"""ATSO bundle: Asynchronous Teacher-Student Optimization (Huo et al., CVPR 2021).

Self-training in which every student restarts from the supervised model M0 and each fold of the
unlabeled (reference) set is pseudo-labelled by the student trained on the other fold, so no
teacher labels data it was just trained on ("lazy mimicking"). Baselines (M0 alone,
self-learning, STSO) are switches of the same driver. ``procedure`` holds the step list, folds
and ledger, ``models`` the per-view networks, ``steps`` what each step runs, ``workflow`` the
whole-procedure driver; ``configs/*.json`` wire them together. ``BUNDLE_ROOT`` is the bundle's
folder (read only); runs write under ``./output/atso/`` of the working directory.
"""

import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
