"""Instance segmentation metrics for cells: AJI, matched AJI, LACSS AP, object Dice (per image and
pooled as the LACSS paper), LoiAP (point-location AP), COCO mAP.

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
    "pooled_instance_dice",
    "loiap",
    "coco_map",
    "DEFAULT_AP_IOUS",
    "DEFAULT_LOIAP_DISTANCES",
]

Masks = Union[np.ndarray, Sequence[Mapping]]
# 0.5, 0.75 and 0.5:0.95 step 0.05 (the last ten give "map")
DEFAULT_AP_IOUS = (0.5, 0.75, *np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())
# LoiAP distance thresholds in pixels (LACSS validation: 5, 2, 1)
DEFAULT_LOIAP_DISTANCES = (5.0, 2.0, 1.0)


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


def pooled_instance_dice(per_image_list: Sequence[Mapping], score_threshold: float = 0.5) -> float:
    """Instance Dice of the LACSS paper (eq. 15), pooled over all images.

    Transcribes ``Dice`` of LACSS 0.4.4 ``experiments/livecell/eval.py``: predictions with
    ``score >= score_threshold`` are kept; every gt G_i takes the kept prediction of largest
    intersection (first on ties, in the given prediction order) and scores
    ``2 |G_i ∩ S| / (|G_i| + |S|)``; every kept prediction S_j likewise takes the gt of largest
    intersection. ``Dice = 0.5 * [sum_i |G_i| / sum|G| * dice_i + sum_j |S_j| / sum|S| * dice_j]``
    where the sums run over the objects of **all** images: an object's weight is its area over the
    whole set.

    :func:`instance_dice` uses the same formula per image (weights normalised within the image)
    and callers average the images, so an image of a few small cells counts as much as one of many
    large cells; here big objects and crowded images weigh more. The two agree on one image.

    Args:
        per_image_list: one mapping per image with ``gt_masks`` (N, H, W) (or label map / RLEs),
            ``pred_masks`` (M, H, W) (or RLEs) and ``scores`` (M,), as :func:`lacss_ap`.
        score_threshold: minimum score of the predictions used (LACSS: 0.5).

    Returns:
        The Dice as a fraction; NaN with no gt and no kept prediction in any image, 0 with only
        one side. (The reference fails on an image without gt or without kept predictions; here
        their objects score 0, as objects overlapping nothing.)
    """
    gt_areas, pred_areas, gt_scores, pred_scores = [], [], [], []
    for i, item in enumerate(per_image_list):
        scores = np.asarray(item["scores"], dtype=np.float64).reshape(-1)
        pred_rles = to_rles(item["pred_masks"])
        assert len(scores) == len(
            pred_rles
        ), f"image {i}: {len(scores)} scores for {len(pred_rles)} predicted masks"
        pred_rles = [r for r, s in zip(pred_rles, scores) if s >= score_threshold]
        inter, gt_area, pred_area, _ = pairwise_overlaps(to_rles(item["gt_masks"]), pred_rles)
        its = inter.T.astype(np.float64)  # (M, N): the reference's pred_its
        gt_area, pred_area = gt_area.astype(np.float64), pred_area.astype(np.float64)
        if its.size:
            pred_best, pred_match = its.max(axis=1), its.argmax(axis=1)
            pred_dice = _safe_div(pred_best * 2, pred_area + gt_area[pred_match])
            gt_best, gt_match = its.max(axis=0), its.argmax(axis=0)
            gt_dice = _safe_div(gt_best * 2, gt_area + pred_area[gt_match])
        else:
            pred_dice, gt_dice = np.zeros(len(pred_area)), np.zeros(len(gt_area))
        gt_areas.append(gt_area)
        pred_areas.append(pred_area)
        gt_scores.append(gt_dice)
        pred_scores.append(pred_dice)
    gt_areas, pred_areas = np.concatenate([[]] + gt_areas), np.concatenate([[]] + pred_areas)
    gt_scores, pred_scores = np.concatenate([[]] + gt_scores), np.concatenate([[]] + pred_scores)
    if len(gt_areas) == 0 and len(pred_areas) == 0:
        return math.nan
    pred_term = (pred_areas / pred_areas.sum() * pred_scores).sum() if pred_areas.sum() else 0.0
    gt_term = (gt_areas / gt_areas.sum() * gt_scores).sum() if gt_areas.sum() else 0.0
    return float((pred_term + gt_term) / 2)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (only for two empty masks, whose weight is 0 anyway)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den != 0)


def _greedy_tps(sim: np.ndarray, thr: float, strict: bool = False) -> np.ndarray:
    """Greedy unique matching (LACSS ``_unique_location_matching``).

    Args:
        sim: (M, N) similarity >= 0 (IoU, or 1/d^2 which may be inf), rows = predictions sorted
            by score (descending), columns = gts.
        thr: threshold; a prediction is a true positive iff its best still unmatched gt (first
            on ties) has ``sim >= thr``, or ``sim > thr`` if ``strict`` (the LACSS code).

    Returns:
        (M,) bool: true positive at threshold thr.
    """
    tps = np.zeros(sim.shape[0], bool)
    free = np.ones(sim.shape[1], bool)
    for k in range(sim.shape[0]):
        if not free.any():
            break
        cand = np.where(free, sim[k], -1.0)
        best = int(cand.argmax())
        if (cand[best] > thr) if strict else (cand[best] >= thr):
            tps[k], free[best] = True, False
    return tps


def _ranked_ap(
    all_scores: List[np.ndarray], all_tps: List[np.ndarray], n_gt: int, n_thr: int
) -> np.ndarray:
    """Unsmoothed AP of predictions of all images ranked together.

    Args:
        all_scores: per image (M_i,) scores; all_tps: per image (M_i, T) bool, same order.
        n_gt: number of gts over all images; n_thr: T.

    Returns:
        (T,) ``sum_k precision@k * tp_k / n_gt`` (stable ranking by descending score); NaN when
        n_gt is 0.
    """
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tps = np.concatenate(all_tps) if all_tps else np.zeros((0, n_thr), bool)
    tps = tps[np.argsort(-scores, kind="stable")].astype(np.float64)
    if n_gt == 0:
        return np.full(n_thr, math.nan)
    precision = np.cumsum(tps, axis=0) / np.arange(1, len(tps) + 1)[:, None]
    return (precision * tps).sum(axis=0) / n_gt


def lacss_ap(
    per_image_list: Sequence[Mapping],
    iou_thresholds: Sequence[float] = DEFAULT_AP_IOUS,
    strict: bool = False,
) -> Dict[str, float]:
    """Unsmoothed average precision as in the LACSS papers.

    Args:
        per_image_list: one mapping per image with ``gt_masks`` (N, H, W) (or label map / RLEs),
            ``pred_masks`` (M, H, W) (or RLEs) and ``scores`` (M,).
        iou_thresholds: thresholds to score at.
        strict: true positive iff IoU > thr, as the LACSS code (``lacss/metrics/ranked.py``);
            default IoU >= thr.

    Within each image, predictions in descending score order take the still unmatched gt of
    highest IoU if that IoU >= thr (> thr if ``strict``) (true positive). All predictions of all
    images are then ranked by score (stable: ties keep image, then in-image order) and
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
        all_tps.append(np.stack([_greedy_tps(iou, t, strict) for t in thresholds], axis=1))
        n_gt += len(gt_area)
    aps = _ranked_ap(all_scores, all_tps, n_gt, len(thresholds))
    out = {f"ap@{t:.2f}": float(ap) for t, ap in zip(thresholds, aps)}
    out.update(_summary_aps(out))
    return out


def _points(value, what: str, i: int) -> np.ndarray:
    """Points of image i as a (K, 2) float64 array (an empty list gives (0, 2))."""
    pts = np.asarray(value, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    assert pts.ndim == 2 and pts.shape[1] == 2, f"image {i}: {what} must be (K, 2), got {pts.shape}"
    return pts


def loiap(
    per_image_list: Sequence[Mapping],
    distance_thresholds: Sequence[float] = DEFAULT_LOIAP_DISTANCES,
) -> Dict[str, float]:
    """Location AP (LACSS ``LoiAP``, ``lacss/metrics/ranked.py``): AP of predicted points.

    Within each image, predicted points in descending score order (stable) take the still
    unmatched gt point of highest similarity ``1 / d^2`` (d = Euclidean distance; the nearest,
    first on ties; d = 0 gives inf) and are true positives iff ``1 / d^2 > 1 / t^2`` (strict,
    i.e. d < t). Predictions of all images are then ranked together and scored as
    :func:`lacss_ap` (unsmoothed ``sum_k precision@k * tp_k / n_gt``). Needs no masks.

    Differences from the reference, none on valid inputs: LACSS drops its -1 padding
    (``score > 0``, gt points ``>= 0``; inputs here are unpadded, so every point counts), assumes
    rows already score-sorted, ranks ties in an unspecified order (``np.argsort``) and fails on
    an image without gt points (here its predictions are false positives).

    Args:
        per_image_list: one mapping per image with ``gt_points`` (N, 2), ``pred_points`` (M, 2)
            (same coordinate order and units, e.g. xy pixels) and ``scores`` (M,).
        distance_thresholds: distances t in the points' units.

    Returns:
        ``{"loiap<t>": ...}`` per threshold (``f"{t:g}"``: "loiap5", "loiap2", "loiap1" by
        default) as fractions; NaN when there is no gt point at all.
    """
    thresholds = list(dict.fromkeys(float(t) for t in distance_thresholds))
    assert all(t > 0 for t in thresholds), f"distance thresholds must be > 0, got {thresholds}"
    sim_thresholds = [1 / t / t for t in thresholds]  # as LoiAP.__init__
    all_scores, all_tps, n_gt = [], [], 0
    for i, item in enumerate(per_image_list):
        scores = np.asarray(item["scores"], dtype=np.float64).reshape(-1)
        gt = _points(item["gt_points"], "gt_points", i)
        pred = _points(item["pred_points"], "pred_points", i)
        assert len(scores) == len(
            pred
        ), f"image {i}: {len(scores)} scores for {len(pred)} predicted points"
        order = np.argsort(-scores, kind="stable")
        dist2 = ((pred[order][:, None, :] - gt[None, :, :]) ** 2).sum(axis=-1)  # (M, N)
        with np.errstate(divide="ignore"):
            sim = 1.0 / dist2
        all_scores.append(scores[order])
        all_tps.append(np.stack([_greedy_tps(sim, t, strict=True) for t in sim_thresholds], axis=1))
        n_gt += len(gt)
    aps = _ranked_ap(all_scores, all_tps, n_gt, len(thresholds))
    return {f"loiap{t:g}": float(ap) for t, ap in zip(thresholds, aps)}


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
