"""Cell-level instance metrics (AJI, matched AJI, LACSS AP, object Dice; optionally the LACSS
paper's pooled Dice and LoiAP) as a DatasetEvaluator.

COCO mAP is left to detectron2's own ``COCOEvaluator``; :func:`build_cell_evaluators` combines the
two with a maxDets large enough for dense cell images. Metric definitions: docs/metrics.md.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from sslseg.errors import InputError
from sslseg.metrics.cells import evaluate_cells, segmentation_to_rle
from sslseg.metrics.common import nan_to_none
from sslseg.metrics.instance import to_rles

__all__ = ["CellInstanceEvaluator", "build_cell_evaluators"]

logger = logging.getLogger(__name__)


class CellInstanceEvaluator(DatasetEvaluator):
    """Per-class AJI, matched AJI, LACSS AP50/AP75/mAP and object Dice on a registered dataset.

    The gt comes from ``DatasetCatalog.get(dataset_name)`` (dicts with ``image_id``, ``height``,
    ``width`` and ``annotations`` holding ``segmentation`` and contiguous ``category_id``).
    AJI, matched AJI and object Dice are computed per image and class and averaged over the images
    where that class has a gt or a prediction; LACSS AP ranks the detections of all images.
    Optional (CKS / LACSS): strict AP (IoU > thr), the paper's pooled Dice ``InstDice-pooled``
    and LoiAP ``LoiAP5/2/1`` from ``instances.pred_locations`` (xy) and the gt points
    (``point_coords[0]`` of every annotation). Results are in percent; each metric is also
    averaged over classes.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        max_dets: int = 1000,
        mask_threshold: float = 0.5,
        score_threshold: float = 0.5,
        *,
        distributed: bool = True,
        strict_ap: bool = False,
        pooled_dice: bool = False,
        loiap: bool = False,
    ):
        """
        Args:
            dataset_name: a name registered in DatasetCatalog/MetadataCatalog.
            output_dir: where ``cell_metrics.json`` (per image and summary) is written.
            max_dets: keep at most this many highest-scoring predictions per image.
            mask_threshold: threshold for float ``pred_masks`` (bool masks are used as they are).
            score_threshold: AJI, matched AJI and object Dice use detections scoring at least
                this (see :func:`sslseg.metrics.cells.evaluate_cells`); AP uses all.
            distributed: gather results from all ranks and evaluate on the main process.
            strict_ap: LACSS AP50/AP75/mAP count a true positive iff IoU > thr (LACSS code).
            pooled_dice: add ``InstDice-pooled`` (the LACSS paper's Dice, objects weighted by
                area over the whole dataset; detections with score >= ``score_threshold``).
            loiap: add ``LoiAP5``, ``LoiAP2``, ``LoiAP1`` (point-location AP at 5, 2, 1 px)
                when the model outputs ``instances.pred_locations`` (R, 2) xy (LACSS); then every
                (non-crowd) gt annotation of the dataset needs a ``point_coords``. A model without
                ``pred_locations`` (e.g. Mask R-CNN) gets no LoiAP keys and a warning.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._max_dets = int(max_dets)
        self._mask_threshold = float(mask_threshold)
        self._score_threshold = float(score_threshold)
        self._distributed = distributed
        self._strict_ap = bool(strict_ap)
        self._pooled_dice = bool(pooled_dice)
        self._loiap = bool(loiap)
        self._gt = None  # image_id -> dataset dict, loaded lazily in evaluate()
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Store each image's predictions as compressed RLE (cheap for thousands of cells).

        Args:
            inputs: dataset dicts with ``image_id``.
            outputs: dicts with ``instances`` having ``pred_masks`` (R, H, W) bool or float,
                ``scores`` (R,), ``pred_classes`` (R,) and, for LoiAP, ``pred_locations``
                (R, 2) xy pixels.
        """
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            scores = instances.scores.numpy().astype(np.float64)
            order = np.argsort(-scores, kind="stable")[: self._max_dets]
            masks = instances.pred_masks.numpy()[order]
            if masks.dtype != bool:
                masks = masks >= self._mask_threshold
            pred = {
                "image_id": inp["image_id"],
                "rles": to_rles(masks),
                "scores": scores[order].tolist(),
                "classes": instances.pred_classes.numpy()[order].tolist(),
            }
            if self._loiap:
                locations = self._locations(instances, inp["image_id"])
                pred["locations"] = None if locations is None else locations[order].tolist()
            self._predictions.append(pred)

    @staticmethod
    def _locations(instances, image_id) -> Optional[np.ndarray]:
        """(R, 2) float64 ``instances.pred_locations`` (xy); None if absent."""
        if not instances.has("pred_locations"):
            return None
        locations = instances.pred_locations.numpy().astype(np.float64)
        assert locations.shape == (
            len(instances),
            2,
        ), f"image_id {image_id!r}: pred_locations has shape {locations.shape}, expected (R, 2)"
        return locations

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[CellInstanceEvaluator] Did not receive valid predictions.")
            return {}
        use_loiap = self._use_loiap(predictions)
        # loads the dataset, which sets thing_classes
        records = self._image_records(predictions, use_loiap)
        class_names = MetadataCatalog.get(self._dataset_name).get("thing_classes", None)
        assert class_names, f"MetadataCatalog[{self._dataset_name!r}] has no thing_classes"
        summary, per_image = evaluate_cells(
            records,
            class_names,
            score_threshold=self._score_threshold,
            strict_ap=self._strict_ap,
            pooled_dice=self._pooled_dice,
            loiap=use_loiap,
        )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "cell_metrics.json")
            with PathManager.open(path, "w") as f:
                json.dump(nan_to_none({"summary": summary, "per_image": per_image}), f, indent=1)
        return OrderedDict({"cells": summary})

    def _use_loiap(self, predictions: List[dict]) -> bool:
        """Whether to report LoiAP: ``loiap`` is on and the model outputs ``pred_locations``.

        Off, with a warning, if no output has them (a model without locations); an error if
        some non-empty outputs have them and others do not.
        """
        if not self._loiap:
            return False
        if all(p["locations"] is None for p in predictions):
            logger.warning(
                "[CellInstanceEvaluator] loiap=True but the model outputs no "
                "instances.pred_locations: LoiAP is not reported."
            )
            return False
        missing = [p["image_id"] for p in predictions if p["locations"] is None and p["scores"]]
        if missing:
            raise ValueError(
                f"loiap=True: instances.pred_locations missing for image_id {missing[0]!r} "
                f"({len(missing)} of {len(predictions)} images) but present for others"
            )
        return True

    def _gt_by_image(self) -> Dict[object, dict]:
        if self._gt is None:
            self._gt = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
        return self._gt

    def _image_records(self, predictions: List[dict], with_points: bool = False) -> List[dict]:
        """Join the stored predictions with the gt of DatasetCatalog, as image records (with
        ``gt_points`` / ``pred_points`` if ``with_points``)."""
        gt_by_image = self._gt_by_image()
        records = []
        for pred in predictions:
            image_id = pred["image_id"]
            assert (
                image_id in gt_by_image
            ), f"prediction for image_id {image_id!r} not in dataset {self._dataset_name!r}"
            record = gt_by_image[image_id]
            anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            h, w = record["height"], record["width"]
            image_record = {
                "image_id": image_id,
                "gt_rles": [segmentation_to_rle(a["segmentation"], h, w) for a in anns],
                "gt_classes": [a["category_id"] for a in anns],
                "pred_rles": pred["rles"],
                "pred_scores": pred["scores"],
                "pred_classes": pred["classes"],
            }
            if with_points:
                image_record["gt_points"] = self._gt_points(record, anns)
                image_record["pred_points"] = pred["locations"] or []  # None: no instance
            records.append(image_record)
        return records

    def _gt_points(self, record: dict, anns: List[dict]) -> List[List[float]]:
        """``point_coords[0]`` ([x, y]) of every annotation, or an error naming the image."""
        points = []
        for k, ann in enumerate(anns):
            coords = ann.get("point_coords")
            if not coords:
                raise InputError(
                    f"dataset {self._dataset_name!r}, image_id {record['image_id']!r} "
                    f"({record.get('file_name', '?')}): annotation {k} has no point_coords; "
                    "LoiAP needs one gt point per annotation (register the dataset with "
                    "d2ext.data.register_coco_instances_with_points, or turn LoiAP off)"
                )
            points.append([float(v) for v in coords[0]])
        return points


def _cks_eval_options(cfg) -> Dict[str, bool]:
    """``cfg.MODEL.CKS.EVAL.{STRICT_AP, POOLED_DICE, LOIAP}`` as evaluator options (those keys
    that exist; configs without CKS keys give none)."""
    cks = cfg.MODEL.get("CKS")
    eval_cfg = cks.get("EVAL") if cks is not None else None
    if eval_cfg is None:
        return {}
    keys = {"strict_ap": "STRICT_AP", "pooled_dice": "POOLED_DICE", "loiap": "LOIAP"}
    return {opt: bool(eval_cfg.get(key)) for opt, key in keys.items() if key in eval_cfg}


def build_cell_evaluators(cfg, dataset_name: str, output_dir: Optional[str] = None):
    """COCO segm/bbox AP (official pycocotools) + cell metrics, both with
    ``cfg.TEST.DETECTIONS_PER_IMAGE`` detections per image (COCO's default 100 truncates).

    The cell metrics' LACSS options come from ``cfg.MODEL.CKS.EVAL`` when it exists:
    ``STRICT_AP`` -> ``strict_ap``, ``POOLED_DICE`` -> ``pooled_dice``, ``LOIAP`` -> ``loiap``.
    """
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    return DatasetEvaluators(
        [
            COCOEvaluator(
                dataset_name,
                output_dir=output_dir,
                use_fast_impl=False,
                max_dets_per_image=max_dets,
            ),
            CellInstanceEvaluator(
                dataset_name,
                output_dir,
                max_dets=max_dets,
                score_threshold=cfg.TEST.CELL_SCORE_THRESH,
                **_cks_eval_options(cfg),
            ),
        ]
    )
