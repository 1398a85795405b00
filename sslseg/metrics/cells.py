"""Dataset-level cell metrics per class: the summary shared by the Detectron2 evaluator and the
``sslseg-coco-eval`` CLI (definitions: docs/metrics.md).

An *image record* is a dict with ``image_id``, ``gt_rles`` (list of RLE), ``gt_classes`` (N,),
``pred_rles`` (list of RLE), ``pred_scores`` (M,), ``pred_classes`` (M,); classes are contiguous
indices into ``class_names``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util

from .common import nanmean
from .instance import aji, aji_matched, instance_dice, lacss_ap, to_rles

__all__ = ["segmentation_to_rle", "evaluate_cells", "PER_IMAGE_METRICS", "CELL_METRICS"]

PER_IMAGE_METRICS = ("AJI", "AJI-matched", "InstDice")
CELL_METRICS = PER_IMAGE_METRICS + ("AP50", "AP75", "mAP")


def segmentation_to_rle(segm, height: int, width: int) -> dict:
    """COCO ``segmentation`` (polygons, compressed or uncompressed RLE) -> one compressed RLE."""
    if isinstance(segm, list):  # polygons
        assert len(segm) > 0, "empty polygon list in a segmentation"
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    assert isinstance(segm, dict), f"unsupported segmentation type {type(segm).__name__}"
    rle = to_rles([segm])[0]
    assert list(rle["size"]) == [
        height,
        width,
    ], f"segmentation size {list(rle['size'])} != image size {[height, width]}"
    return rle


def _top_k(record: Mapping, max_dets: Optional[int]) -> Tuple[list, np.ndarray, np.ndarray]:
    scores = np.asarray(record["pred_scores"], dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:max_dets]
    rles = [record["pred_rles"][i] for i in order]
    return rles, scores[order], np.asarray(record["pred_classes"], int).reshape(-1)[order]


def evaluate_cells(
    images: Sequence[Mapping],
    class_names: Sequence[str],
    max_dets: Optional[int] = None,
    score_threshold: float = 0.5,
) -> Tuple[Dict[str, float], List[dict]]:
    """AJI, matched AJI, object Dice (per image, then averaged) and LACSS AP per class.

    AJI, matched AJI and object Dice score a segmentation *output*: every unmatched prediction
    enlarges their denominator, so they are computed on the detections with
    ``score >= score_threshold`` (a detector's low-score tail would otherwise swamp them). The
    ranked LACSS AP uses all detections (up to ``max_dets``), as COCO mAP does.

    Args:
        images: image records (see module docstring).
        class_names: K names; classes are indices 0..K-1.
        max_dets: keep the ``max_dets`` highest-scoring predictions per image (all classes).
        score_threshold: minimum score of the predictions used by AJI, matched AJI, object Dice.

    Returns:
        ``(summary, per_image)``: summary has ``"<metric>-<class name>"`` and ``"<metric>"`` (mean
        over classes, NaN-skipping) for metric in :data:`CELL_METRICS`, in percent. Per-image
        metrics of a class are averaged over the images where that class has a gt or a
        prediction (others are NaN). per_image lists ``{"image_id", "class", AJI, ...}``.
    """
    num_classes = len(class_names)
    per_class: List[List[dict]] = [[] for _ in range(num_classes)]
    for record in images:
        pred_rles, scores, pred_classes = _top_k(record, max_dets)
        gt_classes = np.asarray(record["gt_classes"], int).reshape(-1)
        for name, classes in (("gt", gt_classes), ("pred", pred_classes)):
            assert classes.size == 0 or (classes.min() >= 0 and classes.max() < num_classes), (
                f"image {record['image_id']!r}: {name} classes {sorted(set(classes.tolist()))} "
                f"outside [0, {num_classes})"
            )
        for c in range(num_classes):
            keep_pred = np.flatnonzero(pred_classes == c)
            per_class[c].append(
                {
                    "image_id": record["image_id"],
                    "gt_masks": [r for r, k in zip(record["gt_rles"], gt_classes) if k == c],
                    "pred_masks": [pred_rles[i] for i in keep_pred],
                    "scores": scores[keep_pred],
                }
            )
    summary: Dict[str, float] = OrderedDict()
    per_image: List[dict] = []
    by_metric: Dict[str, List[float]] = {k: [] for k in CELL_METRICS}
    for name, items in zip(class_names, per_class):
        rows = []
        for item in items:
            gt = item["gt_masks"]
            pred = [m for m, s in zip(item["pred_masks"], item["scores"]) if s >= score_threshold]
            row = {"AJI": aji(gt, pred), "AJI-matched": aji_matched(gt, pred)}
            row["InstDice"] = instance_dice(gt, pred)
            rows.append(row)
            per_image.append({"image_id": item["image_id"], "class": name, **row})
        values = {k: nanmean([r[k] for r in rows]) for k in PER_IMAGE_METRICS}
        ap = lacss_ap(items)
        values.update({"AP50": ap["ap50"], "AP75": ap["ap75"], "mAP": ap["map"]})
        for k in CELL_METRICS:
            summary[f"{k}-{name}"] = 100.0 * values[k]
            by_metric[k].append(values[k])
    for k in CELL_METRICS:
        summary[k] = 100.0 * nanmean(by_metric[k])
    return summary, per_image
