"""DMD bundle: Deep Mutual Distillation for semi-supervised segmentation (Xie et al., MICCAI 2023).

Two networks of the same architecture, trained together: each one is supervised by a Dice loss on
the labeled images and distilled towards the other's temperature-softened prediction on labeled
and unlabeled images. ``networks`` holds the paper's V-Net (3D) and 2D U-Net, ``losses`` the
softened Dice/KL distillation, ``trainer`` the two-network MONAI trainer; the bundle's
``configs/*.json`` wire them together. ``BUNDLE_ROOT`` is the bundle's folder (the configs'
``bundle_root``, read only); runs write under ``./output/dmd/`` of the working directory
(``output_root``), never into the installed package.
"""

import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
