"""``CKSTrainer``: the project's Trainer for ``MODEL.META_ARCHITECTURE: LACSS``.

- train loader: :class:`CKSDatasetMapper` over ``DATASETS.TRAIN`` (resumable sampler, as every
  trainer of the project), after :func:`check_cks_dicts` checked every record for the mode;
- optimizer: ``SOLVER.OPTIMIZER`` "ADAMW" (the code's optax AdamW: decoupled weight decay on
  every parameter, scaled by the learning rate, as torch's) or "SGD" (detectron2's);
- evaluation: detectron2's test loader (``INPUT.MIN_SIZE_TEST: 0``: the model resizes by
  ``INPUT.CKS.SCALE``) and the cell evaluators with LoiAP, strict LACSS AP and the pooled Dice
  (``MODEL.CKS.EVAL``).
"""

import logging

import torch
from detectron2.data import DatasetCatalog
from detectron2.solver.build import maybe_add_gradient_clipping

from d2ext.data.resumable import build_resumable_train_loader
from d2ext.engine import Trainer, register_trainer

from .checks import check_cks_dicts
from .mapper import CKSDatasetMapper
from .meta_arch import LACSS

__all__ = ["CKSTrainer"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("ADAMW", "SGD")


@register_trainer(LACSS)
class CKSTrainer(Trainer):
    """Trainer of :class:`LACSS` (module docstring); its "auto" trainer."""

    # an image whose crop holds no point leaves the segmentor without gradient in that step
    find_unused_parameters = True

    @classmethod
    def build_train_loader(cls, cfg):
        check_cks_dicts({n: DatasetCatalog.get(n) for n in cfg.DATASETS.TRAIN}, cfg.MODEL.CKS.MODE)
        return build_resumable_train_loader(cfg, mapper=CKSDatasetMapper(cfg, True))

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = str(cfg.SOLVER.OPTIMIZER).upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(
                f"SOLVER.OPTIMIZER is {cfg.SOLVER.OPTIMIZER!r}: use one of {OPTIMIZERS}"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
