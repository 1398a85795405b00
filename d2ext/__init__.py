"""Detectron2 extension: datasets, loaders, trainers and (later) the MMT-PSM / CKS methods.

``import d2ext`` registers the built-in datasets (and, as they are added, meta-architectures).
"""

from . import data as _  # registration
from . import modeling as _m  # noqa: F401  (registration)
from .config import add_mmt_psm_config, add_sslseg_config, resolve_device

__all__ = ["add_mmt_psm_config", "add_sslseg_config", "resolve_device"]
