"""Detectron2 extension: datasets, loaders, trainers and (later) the MMT-PSM / CKS methods.

``import d2ext`` registers the built-in datasets (and, as they are added, meta-architectures).
"""

from . import data as _  # registration
from .config import add_sslseg_config, resolve_device

__all__ = ["add_sslseg_config", "resolve_device"]
