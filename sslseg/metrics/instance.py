"""Instance segmentation metrics for cells: AJI, matched AJI, LACSS AP, object Dice, COCO mAP.

Definitions and empty-case policy: docs/metrics.md.

Masks are independent binary masks because cells overlap. Every function accepts, for the gt
and the prediction alike, one of:

- a bool/0-1 array of shape (N, H, W) (N masks),
- an instance label map of shape (H, W), int, 0 = background, each other value one instance,
- a list of COCO RLE dicts (``{"size": [H, W], "counts": ...}``, what pycocotools encodes).

Pairwise intersections come from pycocotools' run-length IoU (``mask.iou``), so the cost scales
with the mask boundaries, not N x M x H x W, and hundreds to thousands of cells are cheap.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

__all__ = [
    "to_rles",
    "pairwise_overlaps",
    "aji",
    "aji_matched",
    "lacss_ap",
    "instance_dice",
    "coco_map",
    "DEFAULT_AP_IOUS",
]

Masks = Union[np.ndarray, Sequence[Mapping]]
# 0.5, 0.75 and 0.5:0.95 step 0.05 (the last ten give "map")
DEFAULT_AP_IOUS = (0.5, 0.75, *np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())


def to_rles(masks: Masks) -> List[dict]:
    """Convert masks to a list of compressed COCO RLE dicts (``counts`` as bytes).

    Args:
        masks: (N, H, W) binary array, (H, W) int instance label map, or a list of RLE dicts
            (compressed with str/bytes counts, or uncompressed with list counts).
    """
    if isinstance(masks, np.ndarray) or not isinstance(masks, (list, tuple)):
        masks = np.asarray(masks)
        if masks.ndim == 2:  # instance label map
            ids = np.unique(masks)
            masks = masks[None] == ids[ids != 0][:, None, None]
        assert masks.ndim == 3, f"masks must be (N, H, W) or an (H, W) label map, got {masks.shape}"
        fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
        return list(mask_util.encode(fortran)) if len(masks) else []
    rles = []
    for rle in masks:
        h, w = rle["size"]
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, h, w)
        elif isinstance(rle["counts"], str):
            rle = {"size": [h, w], "counts": rle["counts"].encode("ascii")}
        rles.append(rle)
    return rles


def pairwise_overlaps(
    gt_rles: Sequence[dict], pred_rles: Sequence[dict]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact pairwise intersections of gt and predicted masks.

    Returns:
        ``(inter, gt_area, pred_area, iou)``: inter (N, M) int64, gt_area (N,), pred_area (M,),
        iou (N, M) float64.
    """
    gt_area = mask_util.area(list(gt_rles)).astype(np.int64) if len(gt_rles) else np.zeros(0, int)
    pred_area = (
        mask_util.area(list(pred_rles)).astype(np.int64) if len(pred_rles) else np.zeros(0, int)
    )
    if len(gt_rles) == 0 or len(pred_rles) == 0:
        shape = (len(gt_rles), len(pred_rles))
        return np.zeros(shape, np.int64), gt_area, pred_area, np.zeros(shape)
    sizes = {tuple(r["size"]) for r in list(gt_rles) + list(pred_rles)}
    assert len(sizes) == 1, f"all masks of one image must have the same size, got {sizes}"
    iou = np.asarray(mask_util.iou(list(gt_rles), list(pred_rles), [0] * len(pred_rles)))
    iou = iou.reshape(len(gt_rles), len(pred_rles))
    # iou = I / (A + B - I)  =>  I = iou (A + B) / (1 + iou), exact after rounding
    area_sum = gt_area[:, None] + pred_area[None, :]
    inter = np.rint(iou * area_sum / (1.0 + iou)).astype(np.int64)
    return inter, gt_area, pred_area, iou


def _overlaps(gt_masks: Masks, pred_masks: Masks):
    return pairwise_overlaps(to_rles(gt_masks), to_rles(pred_masks))


def aji(gt_masks: Masks, pred_masks: Masks) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017; HoVer-Net's ``get_fast_aji``).

    Each gt G_i is paired with the prediction of maximal IoU (if that IoU > 0); a prediction may be
    paired with several gts. ``C = sum |G_i ∩ P_i|``, ``U = sum |G_i ∪ P_i|`` over paired gts,
    plus ``|G_i|`` of unpaired gts and ``|P_j|`` of predictions paired with no gt. Returns C / U,
    or NaN when there is neither a gt nor a prediction.
    """
    inter, gt_area, pred_area, iou = _overlaps(gt_masks, pred_masks)
    if len(gt_area) == 0 and len(pred_area) == 0:
        return math.nan
    union = gt_area[:, None] + pred_area[None, :] - inter
    if iou.size:
        paired_gt = np.flatnonzero(iou.max(axis=1) > 0)
        paired_pred = iou[paired_gt].argmax(axis=1)  # first of ties, as np.argmax in HoVer-Net
    else:
        paired_gt = paired_pred = np.zeros(0, int)
    used = np.zeros(len(pred_area), bool)
    used[paired_pred] = True
    unpaired_gt = np.ones(len(gt_area), bool)
    unpaired_gt[paired_gt] = False
    c = inter[paired_gt, paired_pred].sum()
    u = union[paired_gt, paired_pred].sum() + gt_area[unpaired_gt].sum() + pred_area[~used].sum()
    return float(c / u) if u > 0 else math.nan


def aji_matched(gt_masks: Masks, pred_masks: Masks, iou_thr: float = 0.5) -> float:
    """AJI with one-to-one matching (the variant reported by MMT-PSM), for one image.

    Pairs are matched one-to-one by the Hungarian algorithm maximising the total IoU over the pairs
    with IoU >= ``iou_thr`` (lower IoUs are zeroed first); matched pairs below the threshold are
    dropped. ``C = sum |G ∩ P|`` and ``U = sum |G ∪ P|`` over matched pairs, plus the areas of all
    unmatched gts and predictions. Returns C / U; NaN when there is neither gt nor prediction.
    Callers average over images.
    """
    inter, gt_area, pred_area, iou = _overlaps(gt_masks, pred_masks)
    if len(gt_area) == 0 and len(pred_area) == 0:
        return math.nan
    valid = np.where(iou >= iou_thr, iou, 0.0)
    rows, cols = linear_sum_assignment(valid, maximize=True) if valid.size else ([], [])
    keep = valid[rows, cols] > 0
    rows, cols = np.asarray(rows, int)[keep], np.asarray(cols, int)[keep]
    c = inter[rows, cols].sum()
    matched_union = (gt_area[rows] + pred_area[cols] - inter[rows, cols]).sum()
    u = (
        matched_union
        + gt_area.sum()
        - gt_area[rows].sum()
        + pred_area.sum()
        - pred_area[cols].sum()
    )
    return float(c / u) if u > 0 else math.nan


def instance_dice(gt_masks: Masks, pred_masks: Masks) -> float:
    """Object-level Dice of Sirinukunwattana et al. 2017 (GlaS challenge), for one image.

    ``0.5 * [sum_i |G_i|/sum|G| * Dice(G_i, S*(G_i)) + sum_j |S_j|/sum|S| * Dice(G*(S_j), S_j)]``
    where S*(G_i) is the prediction with the largest intersection with G_i (GlaS code: the mode of
    the predicted labels inside G_i; ties -> lowest index) and G*(S_j) symmetrically; an object
    overlapping nothing scores 0. Returns NaN with no gt and no prediction, 0 with only one of them.
    """
    inter, gt_area, pred_area, _ = _overlaps(gt_masks, pred_masks)
    if len(gt_area) == 0 and len(pred_area) == 0:
        return math.nan
    if len(gt_area) == 0 or len(pred_area) == 0:
        return 0.0
    dice = 2.0 * inter / (gt_area[:, None] + pred_area[None, :])
    gt_best = inter.argmax(axis=1)
    pred_best = inter.argmax(axis=0)
    gt_term = (gt_area * dice[np.arange(len(gt_area)), gt_best]).sum() / gt_area.sum()
    pred_term = (pred_area * dice[pred_best, np.arange(len(pred_area))]).sum() / pred_area.sum()
    return float(0.5 * (gt_term + pred_term))


def _greedy_tps(iou: np.ndarray, thr: float) -> np.ndarray:
    """iou (M preds sorted by score desc, N gts) -> (M,) bool: true positive at threshold thr."""
    tps = np.zeros(iou.shape[0], bool)
    free = np.ones(iou.shape[1], bool)
    for k in range(iou.shape[0]):
        if not free.any():
            break
        cand = np.where(free, iou[k], -1.0)
        best = int(cand.argmax())
        if cand[best] >= thr:
            tps[k], free[best] = True, False
    return tps


def lacss_ap(
    per_image_list: Sequence[Mapping],
    iou_thresholds: Sequence[float] = DEFAULT_AP_IOUS,
) -> Dict[str, float]:
    """Unsmoothed average precision as in the LACSS papers.

    Args:
        per_image_list: one mapping per image with ``gt_masks`` (N, H, W) (or label map / RLEs),
            ``pred_masks`` (M, H, W) (or RLEs) and ``scores`` (M,).
        iou_thresholds: thresholds to score at.

    Within each image, predictions in descending score order take the still unmatched gt of
    highest IoU if that IoU >= thr (true positive). All predictions of all images are then ranked
    by score (stable: ties keep image, then in-image order) and
    ``AP = sum_k precision@k * tp_k / n_gt`` (no interpolation).

    Returns:
        ``{"ap@<thr>": ...}`` for every threshold, and ``ap50``, ``ap75`` and ``map`` (mean over
        0.5:0.95 step 0.05) as fractions; NaN when there is no gt at all.
    """
    thresholds = list(dict.fromkeys(round(float(t), 4) for t in iou_thresholds))
    all_scores, all_tps, n_gt = [], [], 0
    for i, item in enumerate(per_image_list):
        scores = np.asarray(item["scores"], dtype=np.float64).reshape(-1)
        inter, gt_area, pred_area, iou = _overlaps(item["gt_masks"], item["pred_masks"])
        assert len(scores) == len(
            pred_area
        ), f"image {i}: {len(scores)} scores for {len(pred_area)} predicted masks"
        order = np.argsort(-scores, kind="stable")
        iou = iou[:, order].T  # (M, N), score-sorted
        all_scores.append(scores[order])
        all_tps.append(np.stack([_greedy_tps(iou, t) for t in thresholds], axis=1))
        n_gt += len(gt_area)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tps = np.concatenate(all_tps) if all_tps else np.zeros((0, len(thresholds)), bool)
    tps = tps[np.argsort(-scores, kind="stable")].astype(np.float64)
    if n_gt == 0:
        aps = np.full(len(thresholds), math.nan)
    else:
        precision = np.cumsum(tps, axis=0) / np.arange(1, len(tps) + 1)[:, None]
        aps = (precision * tps).sum(axis=0) / n_gt
    out = {f"ap@{t:.2f}": float(ap) for t, ap in zip(thresholds, aps)}
    out.update(_summary_aps(out))
    return out


def _summary_aps(per_thr: Mapping[str, float]) -> Dict[str, float]:
    coco_thrs = [f"ap@{t:.2f}" for t in np.arange(0.5, 1.0, 0.05)]
    summary = {"ap50": per_thr.get("ap@0.50", math.nan), "ap75": per_thr.get("ap@0.75", math.nan)}
    have = [per_thr[k] for k in coco_thrs if k in per_thr]
    summary["map"] = float(np.mean(have)) if len(have) == len(coco_thrs) else math.nan
    return summary


def coco_map(
    gt_json_or_coco: Union[str, dict, COCO],
    predictions: Sequence[Mapping],
    iou_type: str = "segm",
    max_dets: int = 1000,
    per_class: bool = True,
) -> Dict[str, float]:
    """COCO AP with pycocotools' ``COCOeval`` and ``params.maxDets = [1, 100, max_dets]``.

    Args:
        gt_json_or_coco: path of a COCO json, its dict, or a ``COCO`` object.
        predictions: COCO results list (``image_id``, ``category_id``, ``score``,
            ``segmentation`` RLE for "segm" / ``bbox`` for "bbox").
        max_dets: detections per image and category kept by COCOeval (COCO's default 100
            truncates dense cell images).

    Returns:
        ``{"mAP", "AP50", "AP75"}`` and, if ``per_class``, ``"AP-<name>"`` (the class's mAP),
        ``"AP50-<name>"`` and ``"AP75-<name>"`` for every category, in percent,
        read from ``eval["precision"]`` at area "all" and maxDets = ``max_dets`` (note: plain
        pycocotools ``summarize()`` reports stats[0] at maxDets=100; detectron2's
        ``COCOevalMaxDets`` and this function use ``max_dets``). All 0 with no predictions.
    """
    coco_gt = _load_coco(gt_json_or_coco)
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    if len(predictions) == 0:
        out = {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        if per_class:
            out.update({f"{k}-{n}": 0.0 for n in names.values() for k in ("AP", "AP50", "AP75")})
        return out
    preds = copy.deepcopy(list(predictions))
    if iou_type == "segm":
        for p in preds:
            p.pop("bbox", None)  # loadRes recomputes boxes from the masks
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt = coco_gt.loadRes(preds)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 100, max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxDets)
    iou_thrs = ev.params.iouThrs

    def _ap(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean() * 100) if p.size else math.nan

    t50, t75 = np.isclose(iou_thrs, 0.5), np.isclose(iou_thrs, 0.75)
    out = {
        "mAP": _ap(precision[:, :, :, 0, -1]),
        "AP50": _ap(precision[t50, :, :, 0, -1]),
        "AP75": _ap(precision[t75, :, :, 0, -1]),
    }
    if per_class:
        for k, cat_id in enumerate(ev.params.catIds):
            name = names[cat_id]
            out[f"AP-{name}"] = _ap(precision[:, :, k, 0, -1])
            out[f"AP50-{name}"] = _ap(precision[t50, :, k, 0, -1])
            out[f"AP75-{name}"] = _ap(precision[t75, :, k, 0, -1])
    return out


def _load_coco(gt: Union[str, dict, COCO]) -> COCO:
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
    if isinstance(gt, str):
        with open(gt) as f:
            gt = json.load(f)
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
