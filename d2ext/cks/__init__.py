"""CKS (Ji Yu, point-supervised single-cell segmentation via collaborative knowledge sharing):
the LACSS model for detectron2; see README.md in this folder.

Importing the package registers the backbones ``build_lacss_convnext_backbone`` and
``build_lacss_resnet_backbone`` (``BACKBONE_REGISTRY``), the ``LPN`` proposal generator, the
``LACSS`` meta-architecture and its trainer ``CKSTrainer`` (``d2ext.engine.TRAINER_REGISTRY``).
"""

from .backbone import ConvNeXt, LacssFPN, build_lacss_convnext_backbone, build_lacss_resnet_backbone
from .checks import check_cks_dicts
from .collaborator import Collaborator
from .config import add_cks_config
from .lpn import LPN
from .mapper import CKSDatasetMapper
from .meta_arch import LACSS, standardize_image
from .segmentor import InstanceSegmentor, paste_masks
from .trainer import CKSTrainer

__all__ = [
    "CKSDatasetMapper",
    "CKSTrainer",
    "Collaborator",
    "ConvNeXt",
    "InstanceSegmentor",
    "LACSS",
    "LPN",
    "LacssFPN",
    "add_cks_config",
    "build_lacss_convnext_backbone",
    "build_lacss_resnet_backbone",
    "check_cks_dicts",
    "paste_masks",
    "standardize_image",
]
