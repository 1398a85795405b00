#!/usr/bin/env python
"""Visualise a checkpoint of any shipped model: ground truth and predictions on a labeled set;
for MMT-PSM also the teacher and the student, and the teacher's pseudo-labels on unlabeled images
(what the PSM and MGD losses are trained with); for LACSS (CKS) the ground-truth points, the
principal's instances and the collaborator's foreground / border maps.

    python tools/visualize.py --config-file configs/supervised/isbi2014_cells.yaml \\
        --weights output/supervised/isbi2014_cells/model_final.pth --num-images 4
    python tools/visualize.py --config-file configs/mmt_psm/synthetic_cells_demo.yaml \\
        --weights W --output vis/ --score-thresh 0.3 --dataset synthetic_cells_test \\
        --unlabeled-dataset synthetic_cells_unlabeled  MODEL.DEVICE cpu   # trailing: cfg opts
    python tools/visualize.py --config-file configs/cks/synthetic_demo.yaml --weights W \\
        --dataset synthetic_cks_train --num-images 1 --output vis/

``tools/visualize_mmt_psm.py`` is the same tool under its former name. Writes, under
``--output`` (default ``OUTPUT_DIR/visualize``), one PNG per image:

- ``<dataset>/<k>_<stem>_predictions.png`` for the first N images of ``--dataset`` (default
  ``DATASETS.TEST[0]``), panels at the original image size: ground truth | predictions (MMT-PSM:
  teacher predictions | student predictions), detections with score >= ``--score-thresh``;
- LACSS (CKS) instead: ``<dataset>/<k>_<stem>_cks.png``, four panels at the original size (usually
  on a training set: ``--dataset synthetic_cks_train``): the image with its ground-truth points |
  the principal's instances (mask outlines, predicted locations as crosses, score >=
  ``--score-thresh``) | the collaborator's foreground probability | its border probability (on the
  standardised image at model scale, ``INPUT.CKS.SCALE``); a ``MODE: supervised`` model has no
  collaborator (the last two panels say so). Images are read by detectron2's test mapper, as in
  evaluation (:mod:`d2ext.cks.visualize`);
- MMT-PSM only: ``<unlabeled-dataset>/<k>_<stem>_pseudo_labels.png`` for the first N images of
  ``--unlabeled-dataset`` (default ``DATASETS.TRAIN_UNLABELED[0]``), mapped by ``KViewMapper`` (at
  the training size, seeded by ``--seed``). Top row: teacher view 0 with the teacher's detections
  (the pseudo masks, score >= ``MODEL.MMT_PSM.MGD_SCORE_THRESH``) | the mined proposals (used by
  L_psm) on the clean image, coloured by hard pseudo-label (one colour per foreground class, red =
  background; text: class and max soft probability when there are few) | the MGD foreground mask
  (union of the pseudo masks) on the clean image. Bottom row: every teacher view, then every
  student view, as the networks see them (colour jitter, erasing, flips).

The drawing is :mod:`d2ext.mmt_psm.visualize` (shared by every model) and
:mod:`d2ext.cks.visualize` (LACSS); this file is their command line. Every panel has a
title bar. Files are written atomically; their paths are printed. The config is
built as in ``tools/train_net.py`` (without ``default_setup``: nothing is written to OUTPUT_DIR
except the PNGs, which go under it only by default).
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import d2ext  # noqa: F401  (registers datasets and models)
from d2ext.cks import LACSS
from d2ext.cks.visualize import render_cks
from d2ext.config import build_cfg
from d2ext.data import setup_datasets
from d2ext.mmt_psm import MMTPSMRCNN, KViewMapper
from d2ext.mmt_psm.visualize import (
    load_weights,
    out_name,
    render_predictions,
    render_pseudo_labels,
    write_png,
)

logger = logging.getLogger("visualize")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE", help="config yaml")
    ap.add_argument("--weights", default="", help="checkpoint (default: cfg.MODEL.WEIGHTS)")
    ap.add_argument("--output", default="", help="folder (default: OUTPUT_DIR/visualize)")
    ap.add_argument("--num-images", type=int, default=4, help="images per dataset (first N)")
    ap.add_argument(
        "--dataset", default="", help="labeled set (default: DATASETS.TEST[0]; 'none' to skip)"
    )
    ap.add_argument(
        "--unlabeled-dataset",
        default="",
        help="MMT-PSM: unlabeled set (default: DATASETS.TRAIN_UNLABELED[0]; 'none' to skip)",
    )
    ap.add_argument("--score-thresh", type=float, default=0.5, help="score of drawn predictions")
    ap.add_argument("--seed", type=int, default=0, help="seed of the KViewMapper perturbations")
    ap.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return ap


def setup_cfg(args):
    """Frozen cfg as ``tools/train_net.py``'s ``setup`` builds it (minus ``default_setup``)."""
    cfg = build_cfg(args.config_file, args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    # keep every prediction the drawing threshold asks for
    rh = cfg.MODEL.ROI_HEADS
    rh.SCORE_THRESH_TEST = min(rh.SCORE_THRESH_TEST, args.score_thresh)
    det = cfg.MODEL.CKS.DETECTOR  # LACSS
    det.MIN_SCORE_TEST = min(det.MIN_SCORE_TEST, args.score_thresh)
    cfg.freeze()
    setup_datasets(cfg)  # data root, image reader, DATASETS.COCO_JSON
    return cfg


# ---------------------------------------------------------------- main
def _fail(msg: str):
    sys.exit(f"visualize: error: {msg}")


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Run the tool; returns the written PNG paths (also printed)."""
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        _fail(f"config file not found: {args.config_file}")
    if args.num_images < 0:
        _fail(f"--num-images must be >= 0, got {args.num_images}")
    setup_logger(name="visualize", abbrev_name="vis")
    cfg = setup_cfg(args)
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        _fail("no weights: pass --weights FILE or set MODEL.WEIGHTS")
    if "://" not in weights and not os.path.isfile(weights):
        _fail(f"weights file not found: {weights}")

    model = build_model(cfg)
    is_mmt_psm = isinstance(model, MMTPSMRCNN)
    warnings = load_weights(model, weights)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    note = " (NOT initialised)" if warnings else ""
    model.eval()

    out_dir = Path(args.output or os.path.join(cfg.OUTPUT_DIR, "visualize"))
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    unlabeled = args.unlabeled_dataset or (
        cfg.DATASETS.TRAIN_UNLABELED[0] if cfg.DATASETS.TRAIN_UNLABELED and is_mmt_psm else ""
    )
    if unlabeled and unlabeled.lower() != "none" and not is_mmt_psm:
        _fail(
            f"--unlabeled-dataset: pseudo-label views are drawn for MMT-PSM (MMTPSMRCNN) only; "
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE} in {args.config_file}"
        )
    dataset = "" if dataset.lower() == "none" else dataset
    unlabeled = "" if unlabeled.lower() == "none" else unlabeled
    metadata = MetadataCatalog.get(dataset) if dataset else None
    if metadata is None or not metadata.get("thing_classes", None):
        # class names for the unlabeled figure when no labeled set is visualised
        names = [
            n
            for n in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN)
            if MetadataCatalog.get(n).get("thing_classes", None)
        ]
        metadata = MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")

    written = []
    if dataset and args.num_images:
        test_mapper = DatasetMapper(cfg, is_train=False)
        is_lacss = isinstance(model, LACSS)
        for k, d in enumerate(DatasetCatalog.get(dataset)[: args.num_images]):
            if is_lacss:  # gt points | principal | collaborator fg | border
                fig = render_cks(cfg, model, test_mapper, d, args.score_thresh, note)
            else:
                fig = render_predictions(
                    cfg, model, test_mapper, d, metadata, args.score_thresh, note
                )
            kind = "cks" if is_lacss else "predictions"
            path = out_name(out_dir, dataset, k, d["file_name"], kind)
            written.append(write_png(path, fig))
            print(written[-1], flush=True)
    elif not dataset:
        logger.warning("no labeled dataset (DATASETS.TEST empty or --dataset none): skipped")
    if unlabeled and args.num_images:
        seed_all_rng(args.seed)
        mapper = KViewMapper(cfg)
        for k, d in enumerate(DatasetCatalog.get(unlabeled)[: args.num_images]):
            fig = render_pseudo_labels(cfg, model, mapper(d), metadata, note)
            path = out_name(out_dir, unlabeled, k, d["file_name"], "pseudo_labels")
            written.append(write_png(path, fig))
            print(written[-1], flush=True)
    elif not unlabeled and is_mmt_psm:
        logger.warning("no unlabeled dataset (DATASETS.TRAIN_UNLABELED empty or none): skipped")
    return written


if __name__ == "__main__":
    main()
