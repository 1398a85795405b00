"""Detectron2 extension: shared datasets, loaders, trainers, and one package per method.

``import d2ext`` registers the built-in datasets and every method's meta-architecture and trainer
(``d2ext.mmt_psm``, ``d2ext.cks``).
"""

from . import cks as _c  # noqa: F401  (registration)
from . import data as _  # registration
from . import mmt_psm as _m  # noqa: F401  (registration)
from .cks import add_cks_config
from .config import add_sslseg_config, build_cfg, default_cfg, resolve_device
from .mmt_psm import add_mmt_psm_config

__all__ = [
    "add_cks_config",
    "add_mmt_psm_config",
    "add_sslseg_config",
    "build_cfg",
    "default_cfg",
    "resolve_device",
]
