"""MMT-PSM (Zhou et al., MICCAI 2020) for detectron2: see README.md in this folder.

Importing the package registers ``MMTPSMRCNN`` in detectron2's ``META_ARCH_REGISTRY`` and
``MMTPSMTrainer`` in ``d2ext.engine.TRAINER_REGISTRY`` (the "auto" trainer of ``MMTPSMRCNN``).
The visualiser's drawing code (:mod:`d2ext.mmt_psm.visualize`, used by
``tools/visualize.py``) is imported on demand.
"""

from .config import add_mmt_psm_config
from .hooks import UnsupWeightHook, unsup_weight
from .kview_mapper import KViewMapper
from .meta_arch import MMTPSMRCNN, PseudoLabels, flip_boxes
from .trainer import MMTPSMTrainer

__all__ = [
    "KViewMapper",
    "MMTPSMRCNN",
    "MMTPSMTrainer",
    "PseudoLabels",
    "UnsupWeightHook",
    "add_mmt_psm_config",
    "flip_boxes",
    "unsup_weight",
]
