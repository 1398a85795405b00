"""Supervised 2D UNet bundle (ACDC-style slices, volumes scored slice by slice).

The bundle is configuration only (``configs/*.json``); ``BUNDLE_ROOT`` is the bundle's folder,
used as ``bundle_root`` so checkpoints and outputs land in the bundle whatever the working
directory.
"""
import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
