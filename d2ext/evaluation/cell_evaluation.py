"""Cell-level instance metrics (AJI, matched AJI, LACSS AP, object Dice) as a DatasetEvaluator.

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
    Results are in percent; each metric is also averaged over classes.
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
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._max_dets = int(max_dets)
        self._mask_threshold = float(mask_threshold)
        self._score_threshold = float(score_threshold)
        self._distributed = distributed
        self._gt = None  # image_id -> dataset dict, loaded lazily in evaluate()
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Store each image's predictions as compressed RLE (cheap for thousands of cells).

        Args:
            inputs: dataset dicts with ``image_id``.
            outputs: dicts with ``instances`` having ``pred_masks`` (R, H, W) bool or float,
                ``scores`` (R,), ``pred_classes`` (R,).
        """
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            scores = instances.scores.numpy().astype(np.float64)
            order = np.argsort(-scores, kind="stable")[: self._max_dets]
            masks = instances.pred_masks.numpy()[order]
            if masks.dtype != bool:
                masks = masks >= self._mask_threshold
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "rles": to_rles(masks),
                    "scores": scores[order].tolist(),
                    "classes": instances.pred_classes.numpy()[order].tolist(),
                }
            )

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
        records = self._image_records(predictions)  # loads the dataset, which sets thing_classes
        class_names = MetadataCatalog.get(self._dataset_name).get("thing_classes", None)
        assert class_names, f"MetadataCatalog[{self._dataset_name!r}] has no thing_classes"
        summary, per_image = evaluate_cells(
            records, class_names, score_threshold=self._score_threshold
        )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "cell_metrics.json")
            with PathManager.open(path, "w") as f:
                json.dump(nan_to_none({"summary": summary, "per_image": per_image}), f, indent=1)
        return OrderedDict({"cells": summary})

    def _gt_by_image(self) -> Dict[object, dict]:
        if self._gt is None:
            self._gt = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
        return self._gt

    def _image_records(self, predictions: List[dict]) -> List[dict]:
        """Join the stored predictions with the gt of DatasetCatalog, as image records."""
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
            records.append(
                {
                    "image_id": image_id,
                    "gt_rles": [segmentation_to_rle(a["segmentation"], h, w) for a in anns],
                    "gt_classes": [a["category_id"] for a in anns],
                    "pred_rles": pred["rles"],
                    "pred_scores": pred["scores"],
                    "pred_classes": pred["classes"],
                }
            )
        return records


def build_cell_evaluators(cfg, dataset_name: str, output_dir: Optional[str] = None):
    """COCO segm/bbox AP (official pycocotools) + cell metrics, both with
    ``cfg.TEST.DETECTIONS_PER_IMAGE`` detections per image (COCO's default 100 truncates)."""
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
            ),
        ]
    )
