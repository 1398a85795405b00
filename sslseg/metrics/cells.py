"""Dataset-level cell metrics per class: the summary shared by the Detectron2 evaluator and the
``sslseg-coco-eval`` CLI (definitions: docs/metrics.md).

An *image record* is a dict with ``image_id``, ``gt_rles`` (list of RLE), ``gt_classes`` (N,),
``pred_rles`` (list of RLE), ``pred_scores`` (M,), ``pred_classes`` (M,); classes are contiguous
indices into ``class_names``. For LoiAP it also has ``gt_points`` (N, 2) and ``pred_points``
(M, 2), one point per gt / prediction in the same order (both xy pixels).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util

from .common import nanmean
from .instance import (
    DEFAULT_LOIAP_DISTANCES,
    aji,
    aji_matched,
    instance_dice,
    lacss_ap,
)
from .instance import loiap as location_ap  # "loiap" is evaluate_cells' switch
from .instance import pooled_instance_dice, to_rles

__all__ = [
    "segmentation_to_rle",
    "evaluate_cells",
    "PER_IMAGE_METRICS",
    "CELL_METRICS",
    "POOLED_DICE_METRIC",
    "LOIAP_METRICS",
]

PER_IMAGE_METRICS = ("AJI", "AJI-matched", "InstDice")
CELL_METRICS = PER_IMAGE_METRICS + ("AP50", "AP75", "mAP")
# optional dataset-level metrics of evaluate_cells (pooled_dice=True / loiap=True)
POOLED_DICE_METRIC = "InstDice-pooled"
LOIAP_METRICS = tuple(f"LoiAP{t:g}" for t in DEFAULT_LOIAP_DISTANCES)  # LoiAP5, LoiAP2, LoiAP1


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


def _top_k(record: Mapping, max_dets: Optional[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, scores[order], classes[order]): the ``max_dets`` best predictions, by score."""
    scores = np.asarray(record["pred_scores"], dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:max_dets]
    return order, scores[order], np.asarray(record["pred_classes"], int).reshape(-1)[order]


def _record_points(record: Mapping, key: str, n: int) -> np.ndarray:
    """``record[key]`` as (n, 2) float64, or an error naming the image."""
    assert key in record, f"image {record['image_id']!r}: LoiAP needs {key!r} in the image record"
    pts = np.asarray(record[key], dtype=np.float64)
    pts = pts.reshape(0, 2) if pts.size == 0 else pts
    assert pts.shape == (n, 2), (
        f"image {record['image_id']!r}: {key} has shape {pts.shape}, expected ({n}, 2) "
        f"(one point per {'gt' if key.startswith('gt') else 'prediction'})"
    )
    return pts


def evaluate_cells(
    images: Sequence[Mapping],
    class_names: Sequence[str],
    max_dets: Optional[int] = None,
    score_threshold: float = 0.5,
    *,
    strict_ap: bool = False,
    pooled_dice: bool = False,
    loiap: bool = False,
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
        score_threshold: minimum score of the predictions used by AJI, matched AJI, object Dice
            and the pooled Dice.
        strict_ap: LACSS AP (AP50, AP75, mAP) counts a true positive iff IoU > thr, as the LACSS
            code, instead of IoU >= thr.
        pooled_dice: add ``"InstDice-pooled"``, the LACSS paper's Dice
            (:func:`~sslseg.metrics.instance.pooled_instance_dice`, objects weighted by their area
            over all images of the class).
        loiap: add ``"LoiAP5"``, ``"LoiAP2"``, ``"LoiAP1"`` (:func:`~sslseg.metrics.instance.loiap`
            at 5, 2, 1 px, all detections up to ``max_dets``); the records need ``gt_points`` and
            ``pred_points``.

    Returns:
        ``(summary, per_image)``: summary has ``"<metric>-<class name>"`` and ``"<metric>"`` (mean
        over classes, NaN-skipping) for metric in :data:`CELL_METRICS` (then the optional ones),
        in percent. Per-image metrics of a class are averaged over the images where that class
        has a gt or a prediction (others are NaN). per_image lists ``{"image_id", "class", AJI,
        ...}`` (the per-image metrics only; the others are dataset-level).
    """
    num_classes = len(class_names)
    metrics = CELL_METRICS + ((POOLED_DICE_METRIC,) if pooled_dice else ())
    metrics += LOIAP_METRICS if loiap else ()
    per_class: List[List[dict]] = [[] for _ in range(num_classes)]
    for record in images:
        order, scores, pred_classes = _top_k(record, max_dets)
        pred_rles = [record["pred_rles"][i] for i in order]
        gt_classes = np.asarray(record["gt_classes"], int).reshape(-1)
        if loiap:
            gt_points = _record_points(record, "gt_points", len(gt_classes))
            pred_points = _record_points(record, "pred_points", len(record["pred_scores"]))
            pred_points = pred_points[order]
        for name, classes in (("gt", gt_classes), ("pred", pred_classes)):
            assert classes.size == 0 or (classes.min() >= 0 and classes.max() < num_classes), (
                f"image {record['image_id']!r}: {name} classes {sorted(set(classes.tolist()))} "
                f"outside [0, {num_classes})"
            )
        for c in range(num_classes):
            keep_pred = np.flatnonzero(pred_classes == c)
            item = {
                "image_id": record["image_id"],
                "gt_masks": [r for r, k in zip(record["gt_rles"], gt_classes) if k == c],
                "pred_masks": [pred_rles[i] for i in keep_pred],
                "scores": scores[keep_pred],
            }
            if loiap:
                item["gt_points"] = gt_points[gt_classes == c]
                item["pred_points"] = pred_points[keep_pred]
            per_class[c].append(item)
    summary: Dict[str, float] = OrderedDict()
    per_image: List[dict] = []
    by_metric: Dict[str, List[float]] = {k: [] for k in metrics}
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
        ap = lacss_ap(items, strict=strict_ap)
        values.update({"AP50": ap["ap50"], "AP75": ap["ap75"], "mAP": ap["map"]})
        if pooled_dice:
            values[POOLED_DICE_METRIC] = pooled_instance_dice(items, score_threshold)
        if loiap:
            loc = location_ap(items, DEFAULT_LOIAP_DISTANCES)
            values.update(
                {k: loc[f"loiap{t:g}"] for k, t in zip(LOIAP_METRICS, DEFAULT_LOIAP_DISTANCES)}
            )
        for k in metrics:
            summary[f"{k}-{name}"] = 100.0 * values[k]
            by_metric[k].append(values[k])
    for k in metrics:
        summary[k] = 100.0 * nanmean(by_metric[k])
    return summary, per_image
