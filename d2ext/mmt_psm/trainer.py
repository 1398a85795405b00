"""``MMTPSMTrainer``: the project's Trainer with MMT-PSM's two-stream data and hooks.

- train loader: labeled images through detectron2's ``DatasetMapper``, unlabeled images through
  :class:`KViewMapper`, zipped 1:1 by ``build_two_stream_train_loader``; the unlabeled stream is
  only drawn from while lambda(t) > 0 (not during the labeled-only burn-in);
- hooks: :class:`UnsupWeightHook` (lambda(t), before the step) and :class:`EMATeacherHook`
  (teacher update, after the step, before checkpointing and evaluation);
- evaluation: the teacher by default (``MODEL.MMT_PSM.EVAL_MODEL``); results go to
  ``inference/<dataset>_<teacher|student>/`` and final_metrics.json says which network;
- exact resume as in :class:`d2ext.engine.Trainer`: on ``--resume`` the labeled sampler continues
  after one batch per step and the unlabeled one after one batch per step with lambda(t) > 0.
"""

import logging
import os

from detectron2.data import DatasetMapper
from detectron2.engine import hooks as d2_hooks

from d2ext.data.two_stream import build_two_stream_train_loader, split_batch_size
from d2ext.engine import EMATeacherHook, Trainer, register_trainer, unwrap_model

from .hooks import UnsupWeightHook, unsup_weight
from .kview_mapper import KViewMapper
from .meta_arch import MMTPSMRCNN

__all__ = ["MMTPSMTrainer"]

logger = logging.getLogger(__name__)


@register_trainer(MMTPSMRCNN)
class MMTPSMTrainer(Trainer):
    """Trainer for ``MODEL.META_ARCHITECTURE: MMTPSMRCNN`` and its subclasses (module docstring);
    registered in ``d2ext.engine.TRAINER_REGISTRY`` as their "auto" trainer."""

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
            (
                i
                for i, h in enumerate(hooks)
                if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))
            ),
            len(hooks),
        )
        hooks.insert(at, ema)
        hooks.insert(0, UnsupWeightHook(self.cfg))
        return hooks

    def drawn_batches(self, iterations: int) -> list:
        """The labeled stream gave one batch per step, the unlabeled stream one per step with
        lambda(t) > 0 (with workers, their augmentation random streams restart on resume)."""
        hook = next(h for h in self._hooks if isinstance(h, UnsupWeightHook))
        unlabeled_steps = sum(unsup_weight(t, **hook.kwargs) > 0 for t in range(iterations))
        cfg = self.cfg
        batches = split_batch_size(cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.UNLABELED_RATIO)
        return list(zip((iterations, unlabeled_steps), batches))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(
                cfg.OUTPUT_DIR, "inference", f"{dataset_name}_{cfg.MODEL.MMT_PSM.EVAL_MODEL}"
            )
        return super().build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate the network ``model.evaluated_model()`` names (the student while the teacher
        is not initialised); outputs go to ``OUTPUT_DIR/inference/<dataset>_<that name>/``."""
        name = unwrap_model(model).evaluated_model()
        logger.info(f"[MMTPSMTrainer] evaluating the {name}")
        if name != cfg.MODEL.MMT_PSM.EVAL_MODEL:
            cfg = cfg.clone()  # only names the output folders; the model decides what runs
            cfg.defrost()
            cfg.MODEL.MMT_PSM.EVAL_MODEL = name
            cfg.freeze()
        return super().test(cfg, model, evaluators)

    @classmethod
    def results_tags(cls, model) -> dict:
        return {"evaluated_model": unwrap_model(model).evaluated_model()}
