"""``MMTPSMTrainer``: the project's Trainer with MMT-PSM's two-stream data and hooks.

- train loader: labeled images through detectron2's ``DatasetMapper``, unlabeled images through
  :class:`d2ext.data.KViewMapper`, zipped 1:1 by ``build_two_stream_train_loader``; the unlabeled
  stream is only drawn from while lambda(t) > 0 (not during the labeled-only burn-in);
- hooks: :class:`UnsupWeightHook` (lambda(t), before the step) and :class:`EMATeacherHook`
  (teacher update, after the step, before checkpointing and evaluation);
- evaluation: the teacher by default (``MODEL.MMT_PSM.EVAL_MODEL``); results go to
  ``inference/<dataset>_<teacher|student>/`` and final_metrics.json says which network.
"""

import logging
import os

from detectron2.data import DatasetMapper
from detectron2.engine import hooks as d2_hooks

from d2ext.data.kview_mapper import KViewMapper
from d2ext.data.two_stream import build_two_stream_train_loader

from .ema import EMATeacherHook, unwrap_model
from .schedules import UnsupWeightHook
from .trainer import Trainer

__all__ = ["MMTPSMTrainer"]

logger = logging.getLogger(__name__)


class MMTPSMTrainer(Trainer):
    """Trainer for ``MODEL.META_ARCHITECTURE: MMTPSMRCNN`` (see the module docstring)."""

    # adapters (and the unlabeled branch) get no gradient in labeled-only steps
    find_unused_parameters = True

    def __init__(self, cfg):
        super().__init__(cfg)
        model = unwrap_model(self.model)
        self.data_loader.unlabeled_gate = lambda: model.unsup_weight > 0

    @classmethod
    def build_train_loader(cls, cfg):
        return build_two_stream_train_loader(
            cfg, mapper=DatasetMapper(cfg, True), unlabeled_mapper=KViewMapper(cfg)
        )

    def build_hooks(self):
        hooks = super().build_hooks()
        c = self.cfg.MODEL.MMT_PSM
        ema = EMATeacherHook(c.EMA_START_ITER, c.EMA_MAX_ALPHA)
        # the teacher must be updated before PeriodicCheckpointer/EvalHook run after the step
        at = next(
            (i for i, h in enumerate(hooks)
             if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))),
            len(hooks),
        )
        hooks.insert(at, ema)
        hooks.insert(0, UnsupWeightHook(self.cfg))
        return hooks

    @classmethod
    def results_tags(cls, model) -> dict:
        return {"evaluated_model": unwrap_model(model).evaluated_model()}

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(
                cfg.OUTPUT_DIR, "inference", f"{dataset_name}_{cfg.MODEL.MMT_PSM.EVAL_MODEL}"
            )
        return super().build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        logger.info(f"[MMTPSMTrainer] evaluating the {unwrap_model(model).evaluated_model()}")
        return super().test(cfg, model, evaluators)
