#!/usr/bin/env python
"""Detectron2 training/evaluation entry point of this project (as detectron2's tools/train_net.py).

    python tools/train_net.py --config-file configs/supervised/synthetic_cells_demo.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file CFG --overwrite       # discard OUTPUT_DIR's old run
    python tools/train_net.py --config-file CFG --eval-only --resume   # OUTPUT_DIR's newest ckpt
    python tools/train_net.py --config-file CFG --num-gpus 2      # 2 processes (gloo on CPU)
    python tools/train_net.py --config-file configs/mmt_psm/isbi2014_20pct.yaml   # MMT-PSM
    ... --eval-only MODEL.WEIGHTS W MODEL.MMT_PSM.EVAL_MODEL student   # MMT-PSM: the student

The trainer class is ``cfg.TRAINER``: "auto" (the default) takes the one the method package
registered for ``MODEL.META_ARCHITECTURE`` (``d2ext.engine.trainer_class``); a name picks any
trainer of ``d2ext.engine.TRAINER_REGISTRY``.

The final evaluation is written to ``OUTPUT_DIR/final_metrics.json`` (and, during training, to
detectron2's ``OUTPUT_DIR/metrics.json`` event log).

Output folder (``d2ext.engine.run_dir``): training into an OUTPUT_DIR that holds another run's
checkpoints stops unless ``--resume`` (continue it) or ``--overwrite`` (delete its checkpoints,
metrics and ``inference/`` first); ``--resume`` into an OUTPUT_DIR without a checkpoint stops.
``--eval-only`` needs ``MODEL.WEIGHTS`` (or ``--resume``: the checkpoint OUTPUT_DIR's
``last_checkpoint`` names) and writes its log, ``config.yaml``, ``final_metrics.json`` and
``inference/`` to ``OUTPUT_DIR/eval/<weights file stem>/`` (e.g. ``eval/model_final/``), beside
the training run's files, never over them.
"""

import argparse

import torch.distributed as dist
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import d2ext  # noqa: F401  (registers datasets and models)
from d2ext.config import build_cfg
from d2ext.data import setup_datasets
from d2ext.engine import AtomicDetectionCheckpointer, trainer_class, write_final_metrics
from d2ext.engine.run_dir import check_train_dir, clear_previous_run, eval_output_dir, eval_weights


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` + ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an OUTPUT_DIR that holds another run: delete that run's checkpoints, "
        "metrics and inference/ first",
    )
    return parser


def setup(args):
    """Build the frozen config from ``--config-file`` and ``opts``, check OUTPUT_DIR for the
    command (module docstring; ``--eval-only`` gets its ``eval/<stem>`` folder and resolved
    ``MODEL.WEIGHTS``) and set up logging/seeds."""
    cfg = build_cfg(args.config_file, args.opts)
    overwrite = getattr(args, "overwrite", False)  # absent from detectron2's parser
    if args.eval_only:
        cfg.MODEL.WEIGHTS = eval_weights(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS, resume=args.resume)
        cfg.OUTPUT_DIR = eval_output_dir(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)
    else:
        check_train_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=overwrite)
    cfg.freeze()
    default_setup(cfg, args)
    if overwrite and not args.eval_only and comm.is_main_process():
        clear_previous_run(cfg.OUTPUT_DIR)
    setup_datasets(cfg)  # data root, image reader, DATASETS.COCO_JSON (d2ext.data.user)
    return cfg


def main(args):
    cfg = setup(args)
    Trainer = trainer_class(cfg)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # setup resolved --resume into MODEL.WEIGHTS (OUTPUT_DIR is now its eval/ folder)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=False
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            tags = Trainer.results_tags(model)
            write_final_metrics(res, cfg.OUTPUT_DIR, evaluated_weights=cfg.MODEL.WEIGHTS, **tags)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main_and_teardown(args):
    """``main``, then (with several processes) a barrier and ``destroy_process_group``, so that no
    rank exits while gloo/NCCL still holds work (detectron2's ``launch`` leaves the group alive)."""
    res = main(args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return res


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main_and_teardown,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
