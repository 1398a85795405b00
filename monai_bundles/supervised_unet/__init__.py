"""Supervised 2D UNet bundle (ACDC-style slices, volumes scored slice by slice).

The bundle is configuration only (``configs/*.json``); ``BUNDLE_ROOT`` is the bundle's folder
(the configs' ``bundle_root``, read only); runs write under ``./output/supervised_unet/`` of the
working directory (``output_root``), never into the installed package.
"""

import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
