"""``sslseg-coco-eval``: COCO mAP and cell metrics of a COCO results file against a COCO gt json.

    sslseg-coco-eval --gt gt.json --pred predictions.json [--max-dets 1000] [--out metrics.json]

Prints one row per class (and their mean): mAP, AP50, AP75 (pycocotools, segm), AJI, AJI-matched,
object Dice and LACSS AP50/AP75/mAP, all in percent (0-100). Definitions: docs/metrics.md.
The ground truth to give is the one the predictions were made for, e.g. the
``inference/<dataset>/<dataset>_coco_format.json`` Detectron2's COCOEvaluator writes beside
``coco_instances_results.json``: gt images without any prediction count as misses (a warning
says how many), and predictions with a NaN or infinite score are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

from sslseg.errors import InputError

from .cells import CELL_METRICS, evaluate_cells, segmentation_to_rle
from .common import nan_to_none
from .instance import coco_map

__all__ = ["main", "evaluate_files"]

COLUMNS = (
    "mAP",
    "AP50",
    "AP75",
    "AJI",
    "AJI-matched",
    "InstDice",
    "LACSS-AP50",
    "LACSS-AP75",
    "LACSS-mAP",
)


logger = logging.getLogger(__name__)
UNITS = "all values in percent (0-100)"


def _load_json(path: str, what: str):
    if not os.path.isfile(path):
        raise InputError(f"{what} file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} file {path} is not valid json: {e}") from e


def _check_inputs(gt: dict, preds, gt_path: str, pred_path: str) -> None:
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise InputError(f"gt file {gt_path} has no '{key}' (not a COCO instances json)")
    if not isinstance(preds, list):
        raise InputError(f"prediction file {pred_path} must hold a COCO results list")
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    for i, p in enumerate(preds):
        if "segmentation" not in p:
            raise InputError(f"prediction {i} in {pred_path} has no 'segmentation'")
        if p.get("image_id") not in image_ids:
            raise InputError(
                f"prediction {i} in {pred_path}: image_id {p.get('image_id')!r} not in {gt_path}"
            )
        if p.get("category_id") not in cat_ids:
            raise InputError(
                f"prediction {i} in {pred_path}: category_id {p.get('category_id')!r} not in "
                f"the categories of {gt_path} ({sorted(cat_ids)})"
            )
        score = p.get("score", 1.0)
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise InputError(
                f"prediction {i} in {pred_path}: score {score!r} is not a finite number "
                f"(NaN or infinite scores would reorder the ranking AP is computed from)"
            )


def _warn_images_without_predictions(gt: dict, preds, gt_path: str, pred_path: str) -> int:
    """Warn how many gt images have no prediction (their instances all count as missed);
    returns that number."""
    predicted = {p["image_id"] for p in preds}
    missing = [im["id"] for im in gt["images"] if im["id"] not in predicted]
    if missing:
        logger.warning(
            f"{len(missing)} of {len(gt['images'])} ground-truth images in {gt_path} have no "
            f"predictions in {pred_path}; they count as misses (e.g. image ids "
            f"{missing[:5]}). If the predictions cover a subset, give the gt of that subset "
            f"(Detectron2: inference/<dataset>/<dataset>_coco_format.json)"
        )
    return len(missing)


def _image_records(gt: dict, preds: Sequence[dict]) -> List[dict]:
    """COCO gt + results -> image records of :func:`sslseg.metrics.cells.evaluate_cells`."""
    index = {c["id"]: k for k, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    records = {
        im["id"]: {
            "image_id": im["id"],
            "size": (im["height"], im["width"]),
            "gt_rles": [],
            "gt_classes": [],
            "pred_rles": [],
            "pred_scores": [],
            "pred_classes": [],
        }
        for im in gt["images"]
    }
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        rec = records[ann["image_id"]]
        rec["gt_rles"].append(segmentation_to_rle(ann["segmentation"], *rec["size"]))
        rec["gt_classes"].append(index[ann["category_id"]])
    for p in preds:
        rec = records[p["image_id"]]
        rec["pred_rles"].append(segmentation_to_rle(p["segmentation"], *rec["size"]))
        rec["pred_scores"].append(float(p.get("score", 1.0)))
        rec["pred_classes"].append(index[p["category_id"]])
    return list(records.values())


def evaluate_files(
    gt_path: str, pred_path: str, max_dets: int = 1000, score_threshold: float = 0.5
) -> Dict[str, Dict]:
    """Evaluate the files; returns ``{class name or "mean": {column: percent (0-100)}}``.

    Raises ``InputError`` for a missing/invalid file or prediction (naming its index); warns with
    the count of gt images that have no prediction (they count as misses).
    """
    gt = _load_json(gt_path, "gt")
    preds = _load_json(pred_path, "prediction")
    _check_inputs(gt, preds, gt_path, pred_path)
    _warn_images_without_predictions(gt, preds, gt_path, pred_path)
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    coco = coco_map(gt, preds, iou_type="segm", max_dets=max_dets, per_class=True)
    cells, _ = evaluate_cells(
        _image_records(gt, preds), names, max_dets=max_dets, score_threshold=score_threshold
    )
    table = {}
    for name, suffix in [(n, f"-{n}") for n in names] + [("mean", "")]:
        row = {
            "mAP": coco[f"AP{suffix}"] if suffix else coco["mAP"],
            "AP50": coco[f"AP50{suffix}"],
            "AP75": coco[f"AP75{suffix}"],
        }
        for k in CELL_METRICS:
            col = {"AP50": "LACSS-AP50", "AP75": "LACSS-AP75", "mAP": "LACSS-mAP"}.get(k, k)
            row[col] = cells[f"{k}{suffix}"]
        table[name] = row
    return table


def _format_table(table: Dict[str, Dict]) -> str:
    width = max(12, *(len(n) for n in table))
    lines = [f"{UNITS}:", f"{'class':<{width}} " + " ".join(f"{c:>11}" for c in COLUMNS)]
    for name, row in table.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{row[c]:>11.2f}" for c in COLUMNS))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gt",
        required=True,
        help="COCO instances json (ground truth) of the predicted images, e.g. Detectron2's "
        "OUTPUT_DIR/inference/<dataset>/<dataset>_coco_format.json",
    )
    parser.add_argument("--pred", required=True, help="COCO results json with RLE segmentations")
    parser.add_argument("--max-dets", type=int, default=1000, help="detections kept per image")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="AJI / matched AJI / instance Dice use detections scoring at least this (AP: all)",
    )
    parser.add_argument("--out", default=None, help="write the table as json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        table = evaluate_files(
            args.gt, args.pred, max_dets=args.max_dets, score_threshold=args.score_threshold
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_format_table(table))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(nan_to_none(table), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
