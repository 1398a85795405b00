"""``Trainer``: detectron2's DefaultTrainer with the project's evaluators and atomic checkpoints.

Differences from ``DefaultTrainer`` (everything else, hooks, writers, resume, is inherited):
- ``build_evaluator`` -> :func:`d2ext.evaluation.build_cell_evaluators` (COCO AP with enough
  detections per image for dense cells + cell-level metrics).
- checkpoints via :class:`AtomicDetectionCheckpointer`; periodic ones kept to the last
  ``SOLVER.CHECKPOINTS_TO_KEEP`` (:class:`KeepLastPeriodicCheckpointer`); at the start of a run
  the temp files of a killed save are removed and ``--resume`` falls back past an unreadable
  newest checkpoint.
- exact resume: the train loader's :class:`d2ext.data.ResumableTrainingSampler` continues after
  the batches the checkpoint's iteration already drew, and :class:`RNGStateHook` restores the
  global python/numpy/torch RNGs (detectron2 alone restarts the sampler and re-seeds), so with
  ``DATALOADER.NUM_WORKERS 0`` a resumed run repeats the uninterrupted one exactly.
- multi-process training on CPU (``launch`` picks gloo there) wraps the model in DDP without
  ``device_ids``, which torch rejects for CPU modules.
- after training, the last evaluation is written to ``OUTPUT_DIR/final_metrics.json``.
"""

import contextlib
import logging
import os
import weakref

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import DefaultTrainer, hooks
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils import comm

from d2ext.data.resumable import build_resumable_train_loader
from d2ext.evaluation import build_cell_evaluators
from sslseg.io import write_json_atomic

from .checkpoint import AtomicDetectionCheckpointer
from .periodic_checkpointer import KeepLastPeriodicCheckpointer
from .registry import register_trainer
from .rng_hook import RNGStateHook

logger = logging.getLogger(__name__)

FINAL_METRICS_FILE = "final_metrics.json"


@contextlib.contextmanager
def _ddp_options(**extra):
    """Adjust the DDP wrapper ``DefaultTrainer.__init__`` builds with ``create_ddp_model``.

    That call sets ``device_ids=[local_rank]``: fine on GPUs, a ValueError from DDP for CPU
    modules, so CPU models get ``device_ids=None``. ``extra`` (e.g.
    ``find_unused_parameters=True``) is passed on to DDP.
    """
    create_ddp_model = d2_defaults.create_ddp_model

    def create(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        kwargs.update(extra)
        return create_ddp_model(model, **kwargs)

    d2_defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = create_ddp_model


def write_final_metrics(results, output_dir: str, **extra) -> str:
    """Write evaluation ``results`` (``{task: {metric: value}}``, or per dataset when several
    test sets) and ``extra`` top-level entries (e.g. ``evaluated_model="teacher"``) to
    ``output_dir/final_metrics.json`` (main process only); returns the path."""
    path = os.path.join(output_dir, FINAL_METRICS_FILE)
    if comm.is_main_process() and results:
        write_json_atomic({**extra, **results}, path, indent=2)
        logger.info(f"Final evaluation written to {path}")
    return path


@register_trainer(GeneralizedRCNN)
class Trainer(DefaultTrainer):
    """DefaultTrainer for cell instance segmentation (see the module docstring)."""

    # DDP option: True when some parameters get no gradient in some steps.
    find_unused_parameters = False

    def __init__(self, cfg):
        extra = {"find_unused_parameters": True} if self.find_unused_parameters else {}
        with _ddp_options(**extra):
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain DetectionCheckpointer just before calling
        # build_hooks; swap in the atomic one before PeriodicCheckpointer captures it.
        old = self.checkpointer
        self.checkpointer = AtomicDetectionCheckpointer(
            old.model,
            old.save_dir,
            save_to_disk=old.save_to_disk,
            trainer=weakref.proxy(self),
        )
        keep = self.cfg.SOLVER.CHECKPOINTS_TO_KEEP
        ret = super().build_hooks()
        for i, hook in enumerate(ret):
            if type(hook) is hooks.PeriodicCheckpointer:  # main process only
                ret[i] = KeepLastPeriodicCheckpointer(
                    self.checkpointer, hook.period, max_to_keep=keep or None
                )
        return ret + [RNGStateHook()]

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader over ``DATASETS.TRAIN``, with a sampler that continues on resume
        (``DATALOADER.SAMPLER_TRAIN: TrainingSampler``; other samplers: detectron2's loader, whose
        sampler restarts on resume)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: detectron2's loader; "
                "on --resume this sampler restarts from its first index (not an exact resume)"
            )
            return super().build_train_loader(cfg)
        return build_resumable_train_loader(cfg)

    def resume_or_load(self, resume=True):
        """As DefaultTrainer's, then continue each train sampler after the images it already
        gave: ``steps * (batch // processes)`` for each stream's ``(steps, batch)`` in
        :meth:`drawn_batches`. First (main process) the temp files of a killed save go."""
        if comm.is_main_process():
            self.checkpointer.remove_stale_temp_files()
        super().resume_or_load(resume=resume)
        if getattr(self.data_loader, "samplers", None) is None:  # not a resumable loader
            return
        world = comm.get_world_size()
        drawn = self.drawn_batches(self.start_iter)
        for sampler, (steps, batch) in zip(self.data_loader.samplers, drawn, strict=True):
            sampler.skip = steps * (batch // world)
        if self.start_iter:
            logger.info(
                f"[{type(self).__name__}] resumed at iteration {self.start_iter}: the samplers "
                f"continue after {[steps for steps, _ in drawn]} batches"
            )

    def drawn_batches(self, iterations: int) -> list:
        """``[(steps, total batch size)]`` per train stream after ``iterations`` steps."""
        return [(iterations, self.cfg.SOLVER.IMS_PER_BATCH)]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_cell_evaluators(cfg, dataset_name, output_folder)

    def train(self):
        """Run training; returns the last evaluation results (also in final_metrics.json)."""
        super().train()
        results = getattr(self, "_last_eval_results", None)
        if results:
            write_final_metrics(results, self.cfg.OUTPUT_DIR, **self.results_tags(self.model))
        return results

    @classmethod
    def results_tags(cls, model) -> dict:
        """Top-level entries written next to the metrics in final_metrics.json (none here)."""
        return {}
