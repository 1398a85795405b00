"""Semantic / volumetric segmentation metrics: Dice, Jaccard, HD95, ASD (see docs/metrics.md).

One implementation for both sides of the project: the MONAI bundles call
:func:`compute_case_metrics`, :func:`aggregate_cases` and :func:`write_case_table`; Detectron2 code
may call the per-class binary functions.

Arrays are numpy (or anything ``np.asarray`` accepts), 2D ``(H, W)`` or 3D ``(D, H, W)``.
``spacing`` is a number or one number per axis (same order as the array axes); ``None`` = 1.

Built on MONAI: Dice and Jaccard are ``monai.metrics.compute_dice`` / ``compute_iou``; surfaces
are ``monai.metrics.utils.get_mask_edges`` (1-pixel border by binary erosion with the
face-connected structure, as medpy's default ``connectivity=1``) and the distances from one
surface to the other ``monai.metrics.utils.get_surface_distance`` (exact Euclidean). HD95 is the
95th percentile of the *pooled* distances of both directions, as medpy's ``hd95`` (MONAI's
``compute_hausdorff_distance(percentile=95)`` takes the max of the two per-direction percentiles).

Empty cases (medpy raises, MONAI returns NaN), per class:
- prediction and label both empty: dice = jaccard = 1, hd95 = asd = 0;
- exactly one empty: dice = jaccard = 0, hd95 = asd = ``empty_distance`` (default NaN, which
  :func:`aggregate_cases` skips; pass e.g. the image diagonal to penalise instead).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from monai.metrics.utils import get_mask_edges, get_surface_distance

from ..io import atomic_open, write_json_atomic
from .common import nan_to_none, nanmean

__all__ = [
    "dice",
    "jaccard",
    "surface_distances",
    "hd95",
    "asd",
    "compute_case_metrics",
    "aggregate_cases",
    "write_case_table",
]

Spacing = Optional[Union[float, Sequence[float]]]
METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")


def _binary(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    assert mask.ndim in (2, 3), f"{name} must be 2D (H, W) or 3D (D, H, W), got shape {mask.shape}"
    return mask.astype(bool)


def _pair(pred, label) -> Tuple[np.ndarray, np.ndarray]:
    pred, label = _binary(pred, "pred"), _binary(label, "label")
    assert pred.shape == label.shape, f"pred shape {pred.shape} != label shape {label.shape}"
    return pred, label


def _normalize_spacing(spacing: Spacing, ndim: int) -> Optional[Tuple[float, ...]]:
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
    assert all(s > 0 for s in spacing), f"spacing must be positive, got {spacing}"
    return spacing


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """(H, W[, D]) bool -> (1, 1, H, W[, D]) float64 tensor, the one-hot batch MONAI expects."""
    return torch.from_numpy(mask)[None, None].double()


def dice(pred, label) -> float:
    """Dice 2|P∩L| / (|P| + |L|) of two binary masks of the same shape (H, W) or (D, H, W).

    Returns a fraction in [0, 1]; 1 when both masks are empty.
    """
    pred, label = _pair(pred, label)
    return float(compute_dice(_as_batch(pred), _as_batch(label), ignore_empty=False)[0, 0])


def jaccard(pred, label) -> float:
    """Jaccard (IoU) |P∩L| / |P∪L| of two binary masks; 1 when both are empty."""
    pred, label = _pair(pred, label)
    return float(compute_iou(_as_batch(pred), _as_batch(label), ignore_empty=False)[0, 0])


def surface_distances(pred, label, spacing: Spacing = None) -> Tuple[np.ndarray, np.ndarray]:
    """Distances between the surfaces (1-voxel borders) of two non-empty binary masks.

    Args:
        pred, label: binary masks of the same shape (H, W) or (D, H, W), both non-empty.
        spacing: voxel size per axis (or one number); ``None`` means 1.

    Returns:
        ``(pred_to_label, label_to_pred)``: float64 arrays of shape (n_pred_border,) and
        (n_label_border,), the distance from each border voxel of one mask to the nearest border
        voxel of the other (medpy's ``__surface_distances(pred, label)`` and its reverse).
    """
    pred, label = _pair(pred, label)
    assert (
        pred.any() and label.any()
    ), f"surface distances need two non-empty masks, got {pred.sum()} and {label.sum()} voxels"
    spacing = _normalize_spacing(spacing, pred.ndim)
    with warnings.catch_warnings():  # MONAI 1.5+ warns about a deprecated default argument
        warnings.simplefilter("ignore", FutureWarning)
        edges_pred, edges_label = get_mask_edges(pred, label, crop=True)
    to_label = get_surface_distance(edges_pred, edges_label, spacing=spacing)
    to_pred = get_surface_distance(edges_label, edges_pred, spacing=spacing)
    return np.asarray(to_label, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)


def _empty_distance(pred: np.ndarray, label: np.ndarray, empty_distance: float) -> Optional[float]:
    """The documented value when a mask is empty, else None (distances are defined)."""
    has_pred, has_label = bool(pred.any()), bool(label.any())
    if has_pred and has_label:
        return None
    return 0.0 if not (has_pred or has_label) else float(empty_distance)


def hd95(pred, label, spacing: Spacing = None, empty_distance: float = math.nan) -> float:
    """95th percentile Hausdorff distance, medpy's definition.

    ``np.percentile(concat(pred_to_label, label_to_pred), 95)`` (linear interpolation) over the
    pooled border distances of both directions. Both empty -> 0; one empty -> ``empty_distance``.
    """
    pred, label = _pair(pred, label)
    special = _empty_distance(pred, label, empty_distance)
    if special is not None:
        return special
    to_label, to_pred = surface_distances(pred, label, spacing)
    return float(np.percentile(np.concatenate([to_label, to_pred]), 95))


def asd(pred, label, spacing: Spacing = None, empty_distance: float = math.nan) -> float:
    """Average surface distance, medpy's ``asd(result=pred, reference=label)``.

    Mean distance from each border voxel of ``pred`` to the nearest border voxel of ``label``
    (directed; not the symmetric ASSD). Both empty -> 0; one empty -> ``empty_distance``.
    """
    pred, label = _pair(pred, label)
    special = _empty_distance(pred, label, empty_distance)
    if special is not None:
        return special
    to_label, _ = surface_distances(pred, label, spacing)
    return float(to_label.mean())


def compute_case_metrics(
    pred,
    label,
    num_classes: int,
    spacing: Spacing = None,
    include_background: bool = False,
    empty_distance: float = math.nan,
) -> Dict[str, float]:
    """Per-class Dice, Jaccard, HD95 and ASD of one case, and their means over classes.

    Args:
        pred, label: integer label maps of the same shape, (H, W) or (D, H, W), values in
            [0, num_classes).
        num_classes: number of classes including background 0.
        spacing: voxel size per axis (or one number); ``None`` means 1.
        include_background: also score class 0.
        empty_distance: hd95/asd of a class present in exactly one of pred/label.

    Returns:
        ``{"dice_<c>", "jaccard_<c>", "hd95_<c>", "asd_<c>"}`` for every scored class ``c`` and
        ``{"dice_mean", "jaccard_mean", "hd95_mean", "asd_mean"}`` (NaN-mean over classes; NaN if
        all classes are NaN). Dice and Jaccard are fractions in [0, 1].
    """
    pred, label = np.asarray(pred), np.asarray(label)
    assert pred.shape == label.shape, f"pred shape {pred.shape} != label shape {label.shape}"
    assert num_classes >= 2, f"num_classes must count background and >= 1 class, got {num_classes}"
    for name, arr in (("pred", pred), ("label", label)):
        assert arr.size == 0 or (
            arr.min() >= 0 and arr.max() < num_classes
        ), f"{name} values must be in [0, {num_classes}), got [{arr.min()}, {arr.max()}]"
    classes = range(0 if include_background else 1, num_classes)
    out: Dict[str, float] = {}
    for c in classes:
        p, lab = pred == c, label == c
        out[f"dice_{c}"] = dice(p, lab)
        out[f"jaccard_{c}"] = jaccard(p, lab)
        out[f"hd95_{c}"] = hd95(p, lab, spacing, empty_distance)
        out[f"asd_{c}"] = asd(p, lab, spacing, empty_distance)
    for m in METRIC_NAMES:
        out[f"{m}_mean"] = nanmean([out[f"{m}_{c}"] for c in classes])
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def aggregate_cases(rows: Sequence[Mapping[str, object]]) -> Dict[str, float]:
    """Mean of every numeric key over cases (rows from :func:`compute_case_metrics`).

    NaN policy: NaN entries (a class present in only one of pred/label, with the default
    ``empty_distance``) are skipped (``nanmean``); a key that is NaN in every case gives NaN.
    Non-numeric values (e.g. a ``"case"`` name) are ignored. Returns ``{}`` for no rows.
    """
    keys: List[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if _is_number(v) and k not in keys]
    return {k: nanmean([row[k] for row in rows if _is_number(row.get(k))]) for k in keys}


def write_case_table(
    rows: Sequence[Mapping[str, object]], out_dir: str, stem: str = "metrics"
) -> Tuple[str, str]:
    """Write per-case metrics as ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.csv``.

    The json is ``{"cases": rows, "mean": aggregate_cases(rows)}`` with NaN written as null; the
    csv has one line per case (columns = union of keys, in first-seen order) and a last line
    whose first column is ``mean``; NaN is written as ``nan``. Returns ``(json_path, csv_path)``.
    """
    os.makedirs(out_dir, exist_ok=True)
    mean = aggregate_cases(rows)
    json_path = os.path.join(out_dir, f"{stem}.json")
    csv_path = os.path.join(out_dir, f"{stem}.csv")
    doc = nan_to_none({"cases": [dict(row) for row in rows], "mean": mean})
    write_json_atomic(doc, json_path, indent=2)
    rows = [dict(row) for row in rows]
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if not columns or columns[0] in mean:  # no name column: number the cases
        columns = ["case"] + columns
        rows = [{"case": i, **row} for i, row in enumerate(rows)]
    mean_row = {k: mean.get(k, "") for k in columns}
    mean_row[columns[0]] = "mean"
    with atomic_open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows + [mean_row])
    return json_path, csv_path
