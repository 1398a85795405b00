"""DMD bundle: Deep Mutual Distillation for semi-supervised segmentation (Xie et al., MICCAI 2023).

Two networks of the same architecture, trained together: each one is supervised by a Dice loss on
the labeled images and distilled towards the other's temperature-softened prediction on labeled
and unlabeled images. ``networks`` holds the paper's V-Net (3D) and 2D U-Net, ``losses`` the
softened Dice/KL distillation, ``trainer`` the two-network MONAI trainer; the bundle's
``configs/*.json`` wire them together. ``BUNDLE_ROOT`` is the bundle's folder, used as
``bundle_root`` so checkpoints and outputs land in the bundle whatever the working directory.
"""
import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
