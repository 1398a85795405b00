"""sslseg.metrics.instance: hand-computed cases, a brute-force AJI reference, pycocotools."""

import math

import numpy as np
import pytest

from sslseg.datasets.coco_utils import image_record, mask_to_annotation
from sslseg.metrics.instance import (
    aji,
    aji_matched,
    coco_map,
    instance_dice,
    lacss_ap,
    loiap,
    pooled_instance_dice,
    to_rles,
)


def _box(y0, y1, x0, x1, shape=(10, 10)):
    """Bool mask (H, W) with rows y0..y1-1, cols x0..x1-1 set."""
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# Two overlapping gt squares (16 px each, overlap 2x2 = 4 px).
G1, G2 = _box(0, 4, 0, 4), _box(2, 6, 2, 6)
P1 = _box(0, 4, 1, 5)  # G1 shifted right by 1 px: |G1 ∩ P1| = 12, |G1 ∪ P1| = 20, IoU 0.6
P3 = _box(8, 10, 8, 10)  # 4 px, overlaps nothing


def test_aji_hand_computed_overlapping():
    gt = np.stack([G1, G2])
    # G1 -> P1 (IoU 0.6 > IoU(G1, G2)=4/28); G2 -> G2 (IoU 1). C = 12 + 16, U = 20 + 16.
    assert aji(gt, np.stack([P1, G2])) == pytest.approx(28 / 36)
    # an unused prediction adds its area to U: 28 / 40
    assert aji(gt, np.stack([P1, G2, P3])) == pytest.approx(28 / 40)
    # a gt overlapping nothing adds its area to U: gt [G1, P3], pred [G1]: C = 16, U = 16 + 4
    assert aji(np.stack([G1, P3]), G1[None]) == pytest.approx(16 / 20)
    # one pred used by both overlapping gts: G1 -> G2 (IoU 4/28 > 0): C = 4 + 16, U = 28 + 16
    assert aji(gt, G2[None]) == pytest.approx(20 / 44)


def test_aji_kumar_vs_matched_differ():
    """One prediction covering two adjacent gt cells (IoU 0.5 with each)."""
    g_a, g_b, p = _box(0, 4, 0, 4), _box(0, 4, 4, 8), _box(0, 4, 0, 8)
    gt = np.stack([g_a, g_b])
    # Kumar: both gts take P: C = 16 + 16, U = 32 + 32 -> 0.5
    assert aji(gt, p[None]) == pytest.approx(0.5)
    # one-to-one (thr 0.5): one pair (16 / 32) + the other gt unmatched (16): 16 / 48
    assert aji_matched(gt, p[None], iou_thr=0.5) == pytest.approx(1 / 3)
    # above the threshold nothing is matched: C = 0
    assert aji_matched(gt, p[None], iou_thr=0.6) == 0.0


def _brute_force_aji(gt, pred):
    """Independent loop-based Kumar AJI (as HoVer-Net's get_fast_aji) on dense masks."""
    c = u = 0
    used = set()
    for g in gt:
        ious = [(g & p).sum() / (g | p).sum() for p in pred]
        if ious and max(ious) > 0:
            j = int(np.argmax(ious))
            c += (g & pred[j]).sum()
            u += (g | pred[j]).sum()
            used.add(j)
        else:
            u += g.sum()
    u += sum(p.sum() for j, p in enumerate(pred) if j not in used)
    return c / u


def _random_masks(rng, n, shape=(48, 48)):
    masks = np.zeros((n, *shape), bool)
    for i in range(n):
        y, x = rng.integers(0, shape[0] - 6, 2)
        h, w = rng.integers(3, 14, 2)
        masks[i, y : y + h, x : x + w] = True
    return masks


@pytest.mark.parametrize("seed", range(6))
def test_aji_matches_brute_force_on_overlapping_masks(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _random_masks(rng, 12), _random_masks(rng, 15)
    assert gt.sum(0).max() > 1, "masks should overlap"
    assert aji(gt, pred) == pytest.approx(_brute_force_aji(gt, pred), abs=1e-12)
    # RLE input gives the same
    assert aji(to_rles(gt), to_rles(pred)) == pytest.approx(aji(gt, pred), abs=1e-12)


def test_label_map_input():
    label_map = np.zeros((10, 10), int)
    label_map[G1] = 3
    label_map[P3] = 7
    masks = np.stack([G1, P3])
    assert aji(label_map, masks) == 1.0 and aji(masks, label_map) == 1.0


def test_instance_dice_hand_computed():
    # Dice(G1, P1) = 2*12 / 32 = 0.75 on both sides
    assert instance_dice(G1[None], P1[None]) == pytest.approx(0.75)
    # extra P3: gt side 0.75; pred side (16*0.75 + 4*0) / 20 = 0.6; mean 0.675
    assert instance_dice(G1[None], np.stack([P1, P3])) == pytest.approx(0.675)


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(7)
    gt = _random_masks(rng, 10)
    assert aji(gt, gt) == 1.0
    assert aji_matched(gt, gt) == 1.0
    assert instance_dice(gt, gt) == 1.0
    ap = lacss_ap([{"gt_masks": gt, "pred_masks": gt, "scores": rng.random(10)}])
    assert ap["ap50"] == ap["ap75"] == ap["map"] == 1.0


def test_empty_policy():
    none = np.zeros((0, 10, 10), bool)
    for fn in (aji, aji_matched, instance_dice):
        assert math.isnan(fn(none, none)), fn.__name__
        assert fn(G1[None], none) == 0.0 and fn(none, G1[None]) == 0.0, fn.__name__
    assert math.isnan(lacss_ap([{"gt_masks": none, "pred_masks": none, "scores": []}])["map"])


def test_lacss_ap_hand_ranking():
    """Images A, B, C; exact copies (IoU 1) or disjoint (IoU 0) except p5 (IoU 0.6 with g4).

    Global ranking: p5 .95 (TP@0.5 only), p1 .9 TP, p3 .8 FP, p4 .7 TP, p2 .6 TP; 4 gts.
    AP50: TPs at ranks 1, 2, 4, 5: (1 + 1 + 3/4 + 4/5) / 4 = 0.8875.
    AP75: TPs at ranks 2, 4, 5: (1/2 + 2/4 + 3/5) / 4 = 0.4.
    (COCO's interpolated AP would differ: this is the unsmoothed sum of precisions.)
    """
    g1, g2, g3 = _box(0, 3, 0, 3), _box(5, 8, 5, 8), _box(0, 4, 0, 4)
    g4 = _box(0, 4, 0, 4)
    images = [
        {"gt_masks": np.stack([g1, g2]), "pred_masks": np.stack([g1, g2]), "scores": [0.9, 0.6]},
        {"gt_masks": g3[None], "pred_masks": np.stack([P3, g3]), "scores": [0.8, 0.7]},
        {"gt_masks": g4[None], "pred_masks": P1[None], "scores": [0.95]},
    ]
    ap = lacss_ap(images)
    assert ap["ap50"] == pytest.approx(0.8875)
    assert ap["ap75"] == pytest.approx(0.4)
    # thresholds 0.5 and 0.55, 0.6 count p5; 0.65..0.95 (7 thresholds) do not
    assert ap["map"] == pytest.approx((3 * 0.8875 + 7 * 0.4) / 10)


def test_lacss_ap_greedy_takes_highest_iou_unmatched_gt():
    # p (score .9) overlaps ga with IoU 0.6 and gb with IoU 1: it takes gb; q (=ga) then takes ga
    ga, gb = P1, _box(0, 4, 0, 4)
    out = lacss_ap(
        [{"gt_masks": np.stack([ga, gb]), "pred_masks": np.stack([gb, ga]), "scores": [0.9, 0.8]}]
    )
    assert out["ap75"] == 1.0


def _coco_gt(masks_per_image, categories=((1, "cell"),)):
    images, anns = [], []
    for img_id, (masks, cats) in enumerate(masks_per_image, start=1):
        images.append(image_record(img_id, f"{img_id}.png", *masks.shape[1:]))
        anns += [
            mask_to_annotation(m, c, len(anns) + 1 + k, img_id)
            for k, (m, c) in enumerate(zip(masks, cats))
        ]
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": n} for i, n in categories],
    }


def _perfect_results(gt):
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": 1.0 - 1e-3 * k,
        }
        for k, a in enumerate(gt["annotations"])
    ]


def _grid_masks(n_rows, n_cols, step=5, size=3):
    """n_rows*n_cols disjoint size x size squares, (N, H, W)."""
    masks = np.zeros((n_rows * n_cols, n_rows * step, n_cols * step), bool)
    for k in range(n_rows * n_cols):
        y, x = (k // n_cols) * step, (k % n_cols) * step
        masks[k, y : y + size, x : x + size] = True
    return masks


def test_coco_map_perfect_is_100_per_class():
    masks = _grid_masks(2, 3)
    gt = _coco_gt([(masks, [1, 2, 1, 2, 1, 2])], categories=((1, "cytoplasm"), (2, "nuclei")))
    out = coco_map(gt, _perfect_results(gt))
    for key in ("mAP", "AP50", "AP75", "AP-cytoplasm", "AP-nuclei", "AP50-nuclei"):
        assert out[key] == pytest.approx(100.0), key


def test_coco_map_max_dets_above_100_matters():
    masks = _grid_masks(10, 15)  # 150 cells in one image
    gt = _coco_gt([(masks, [1] * 150)])
    preds = _perfect_results(gt)
    full = coco_map(gt, preds, max_dets=1000)
    truncated = coco_map(gt, preds, max_dets=100)
    assert full["mAP"] == pytest.approx(100.0)
    # only 100 of 150 cells can be found: recall <= 2/3 -> 67 of 101 recall points
    assert truncated["mAP"] == pytest.approx(100.0 * 67 / 101)


def test_evaluate_cells_score_threshold_applies_to_aji_not_ap():
    """A low-score false positive lowers AJI only when it passes the score threshold; AP ranks it
    last, so a perfect top detection keeps AP50 at 100 either way."""
    from sslseg.metrics.cells import evaluate_cells

    gt = np.zeros((1, 20, 20), bool)
    gt[0, 2:8, 2:8] = True  # 36 px
    fp = np.zeros((20, 20), bool)
    fp[12:18, 12:18] = True  # 36 px, disjoint from gt
    record = {
        "image_id": 1,
        "gt_rles": to_rles(gt),
        "gt_classes": [0],
        "pred_rles": to_rles(np.stack([gt[0], fp])),
        "pred_scores": [0.9, 0.1],
        "pred_classes": [0, 0],
    }
    kept, _ = evaluate_cells([record], ["cell"], score_threshold=0.5)
    assert kept["AJI"] == pytest.approx(100.0)
    both, _ = evaluate_cells([record], ["cell"], score_threshold=0.0)
    assert both["AJI"] == pytest.approx(100.0 * 36 / 72)  # C = 36, U = 36 + unused 36
    assert kept["AP50"] == pytest.approx(100.0) and both["AP50"] == pytest.approx(100.0)


# ---- LACSS paper / code metrics: strict AP, pooled Dice, LoiAP ----------------------------------


def _ref_unique_location_matching(similarity_matrix, threshold):
    """LACSS 0.4.4 lacss/metrics/ranked.py ``_unique_location_matching``, verbatim."""
    matches, indicators = [], []
    similarity_matrix = np.copy(similarity_matrix)
    n, _ = similarity_matrix.shape
    for i_row in range(n):
        row = similarity_matrix[i_row]
        row_max_indice = row.argmax()
        row_max = row[row_max_indice]
        matches.append(row_max_indice)
        if row_max > threshold:
            indicators.append(1)
            similarity_matrix[:, row_max_indice] = -1
        else:
            indicators.append(0)
    return np.array(matches, np.int32), np.array(indicators, np.int32)


def _ref_ranked_ap(sms_and_scores, thresholds):
    """LACSS 0.4.4 ``AP.update`` (per image) + ``AP.compute`` (coco_style=False)."""
    cell_counts, scores, indicator_list = 0, [], [[] for _ in thresholds]
    for sm, s in sms_and_scores:
        cell_counts += sm.shape[1]
        scores.append(s)
        for th, indicators in zip(thresholds, indicator_list):
            indicators.append(_ref_unique_location_matching(sm, th)[1])
    indices = np.argsort(np.concatenate(scores))
    aps = []
    for indicators in indicator_list:
        indicators = np.concatenate(indicators)[indices[::-1]]
        p_k = np.cumsum(indicators) / (np.arange(len(indicators)) + 1)
        aps.append(np.sum(p_k[indicators == 1]) / cell_counts)
    return np.array(aps, dtype=float)


def test_lacss_ap_strict_at_iou_exactly_half():
    """IoU exactly 0.5 (8 of 16 px) is a TP at 0.5 by default (>=) and not with strict (>)."""
    g, half = _box(0, 4, 0, 4), _box(0, 4, 0, 2)
    images = [
        {"gt_masks": g[None], "pred_masks": half[None], "scores": [0.9]},
        {"gt_masks": G1[None], "pred_masks": P1[None], "scores": [0.8]},  # IoU 0.6: TP both
    ]
    loose, strict = lacss_ap(images), lacss_ap(images, strict=True)
    # default: TPs at ranks 1, 2 -> 1; strict: FP then TP -> (1/2) / 2, as both at 0.55
    assert loose["ap50"] == pytest.approx(1.0) and loose["ap@0.55"] == pytest.approx(0.25)
    assert strict["ap50"] == pytest.approx(0.25) and strict["ap@0.55"] == pytest.approx(0.25)
    # IoU 0.6 ties only the threshold 0.6
    assert lacss_ap(images[1:], [0.5, 0.55, 0.65], strict=True) == lacss_ap(
        images[1:], [0.5, 0.55, 0.65]
    )
    assert lacss_ap(images[1:], [0.6], strict=True)["ap@0.60"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_lacss_ap_strict_matches_lacss_code(seed):
    """strict=True equals a transcription of LACSS's AP on IoU matrices (distinct scores)."""
    rng = np.random.default_rng(seed)
    images, ref_inputs = [], []
    for _ in range(3):
        gt, pred = _random_masks(rng, 8), _random_masks(rng, 10)
        scores = rng.permutation(1000)[:10] / 1000.0
        images.append({"gt_masks": gt, "pred_masks": pred, "scores": scores})
        iou = np.array([[(p & g).sum() / (p | g).sum() for g in gt] for p in pred])
        order = np.argsort(-scores)  # LACSS rows come score-sorted from the model
        ref_inputs.append((iou[order], scores[order]))
    thresholds = [0.3, 0.5, 0.75]
    ours = lacss_ap(images, thresholds, strict=True)
    ref = _ref_ranked_ap(ref_inputs, thresholds)
    for t, r in zip(thresholds, ref):
        assert ours[f"ap@{t:.2f}"] == pytest.approx(r, abs=1e-12), f"thr {t}"


class _RefDice:
    """LACSS 0.4.4 experiments/livecell/eval.py ``Dice``, verbatim (numpy)."""

    def __init__(self):
        self.pred_areas, self.gt_areas, self.pred_scores, self.gt_scores = [], [], [], []

    def update(self, pred_its, pred_areas, gt_areas):
        self.pred_areas.append(pred_areas)
        self.gt_areas.append(gt_areas)
        pred_best = pred_its.max(axis=1)
        pred_best_matches = pred_its.argmax(axis=1)
        pred_dice = pred_best * 2 / (pred_areas + gt_areas[pred_best_matches])
        self.pred_scores.append(pred_dice)
        gt_best = pred_its.max(axis=0)
        gt_best_matches = pred_its.argmax(axis=0)
        gt_dice = gt_best * 2 / (gt_areas + pred_areas[gt_best_matches])
        self.gt_scores.append(gt_dice)

    def compute(self):
        pred_areas = np.concatenate(self.pred_areas)
        gt_areas = np.concatenate(self.gt_areas)
        pred_scores = np.concatenate(self.pred_scores)
        gt_scores = np.concatenate(self.gt_scores)
        pred_dice = (pred_areas / pred_areas.sum() * pred_scores).sum()
        gt_dice = (gt_areas / gt_areas.sum() * gt_scores).sum()
        return (pred_dice + gt_dice) / 2


def _ref_pooled_dice(images, dice_score=0.5):
    """Feed ``_RefDice`` as eval.py does: dense intersections, predictions with score >= 0.5."""
    dice = _RefDice()
    for item in images:
        gt, pred = item["gt_masks"], item["pred_masks"]
        valid = np.asarray(item["scores"]) >= dice_score
        its = np.array([[(p & g).sum() for g in gt] for p in pred], dtype=np.float32)
        areas, gt_areas = pred.sum(axis=(1, 2)), gt.sum(axis=(1, 2))
        dice.update(its[valid], areas[valid], gt_areas)
    return dice.compute()


def test_pooled_instance_dice_hand_and_reference():
    """Image A: one 8x8 cell predicted 2 columns off (Dice 48*2/128 = 0.75); image B: one 2x2
    cell predicted exactly (Dice 1) plus a low-score FP (ignored at 0.5).

    Pooled (paper): both terms (64 * 0.75 + 4 * 1) / 68 = 52/68; mean of the per-image object
    Dice: (0.75 + 1) / 2 = 0.875 (the small cell weighs as much as the big one)."""
    shape = (12, 12)
    big, big_pred = _box(1, 9, 1, 9, shape), _box(1, 9, 3, 11, shape)
    small, fp = _box(1, 3, 1, 3, shape), _box(6, 10, 6, 10, shape)
    images = [
        {"gt_masks": big[None], "pred_masks": big_pred[None], "scores": [0.9]},
        {"gt_masks": small[None], "pred_masks": np.stack([small, fp]), "scores": [0.8, 0.3]},
    ]
    pooled = pooled_instance_dice(images)
    assert pooled == pytest.approx(52 / 68)
    assert pooled == pytest.approx(_ref_pooled_dice(images), abs=1e-12)
    per_image = np.mean([instance_dice(i["gt_masks"], i["pred_masks"][:1]) for i in images])
    assert per_image == pytest.approx(0.875) and abs(pooled - per_image) > 0.1
    # the FP counts once its score passes the threshold: pred term (48 + 4) / (64 + 4 + 16)
    low = pooled_instance_dice(images, score_threshold=0.2)
    assert low == pytest.approx(0.5 * (52 / 68 + 52 / 84))
    assert low == pytest.approx(_ref_pooled_dice(images, 0.2), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_pooled_instance_dice_matches_reference_random(seed):
    rng = np.random.default_rng(seed)
    images = []
    for n in (6, 12):  # crowded and sparse images, overlapping masks
        gt, pred = _random_masks(rng, n), _random_masks(rng, n + 3)
        images.append({"gt_masks": gt, "pred_masks": pred, "scores": rng.random(n + 3)})
    assert pooled_instance_dice(images) == pytest.approx(_ref_pooled_dice(images), abs=1e-12)
    # one image: same as the per-image object Dice
    one = images[0]
    kept = one["pred_masks"][np.asarray(one["scores"]) >= 0.5]
    assert pooled_instance_dice([one]) == pytest.approx(instance_dice(one["gt_masks"], kept))


def test_pooled_instance_dice_empty_policy():
    none = np.zeros((0, 10, 10), bool)
    assert math.isnan(pooled_instance_dice([{"gt_masks": none, "pred_masks": none, "scores": []}]))
    only_gt = {"gt_masks": G1[None], "pred_masks": none, "scores": []}
    only_pred = {"gt_masks": none, "pred_masks": G1[None], "scores": [0.9]}
    assert pooled_instance_dice([only_gt]) == 0.0 and pooled_instance_dice([only_pred]) == 0.0
    # an image without gt: its predictions score 0 with their area (the reference would fail)
    perfect = {"gt_masks": G1[None], "pred_masks": G1[None], "scores": [0.9]}
    assert pooled_instance_dice([perfect, only_pred]) == pytest.approx(0.5 * (1 + 16 / 32))


def _pts(*xy):
    return np.asarray(xy, dtype=float).reshape(-1, 2)


def test_loiap_distance_is_strict():
    """t = 5: d = 4.9 is a TP, d = 5 exactly (3-4-5) and d = 5.1 are not (1/d^2 > 1/t^2)."""
    gt = _pts((10, 10))
    for d, expected in (((4.9, 0), 1.0), ((3, 4), 0.0), ((0, 5.1), 0.0), ((0, 0), 1.0)):
        item = {"gt_points": gt, "pred_points": gt + d, "scores": [0.9]}
        assert loiap([item], [5]) == {"loiap5": expected}, d
    out = loiap([{"gt_points": gt, "pred_points": gt + (1.5, 0), "scores": [0.9]}])
    assert out == {"loiap5": 1.0, "loiap2": 1.0, "loiap1": 0.0}


def test_loiap_duplicates_and_nearest_unmatched():
    """Greedy per threshold in score order: the best-scoring point takes the gt if close enough;
    a later duplicate finds it matched (FP)."""
    gt = _pts((0, 0))
    item = {"gt_points": gt, "pred_points": _pts((3, 0), (0.5, 0)), "scores": [0.9, 0.8]}
    # t=5: TP, FP -> 1; t=2: (3, 0) is too far and leaves the gt to (0.5, 0): FP, TP -> 1/2
    assert loiap([item], [5, 2]) == {"loiap5": 1.0, "loiap2": 0.5}
    # a point between two gts takes the nearest; the next takes the other one
    two = {
        "gt_points": _pts((0, 0), (4, 0)),
        "pred_points": _pts((2.5, 0), (1.2, 0)),
        "scores": [0.9, 0.8],
    }
    assert loiap([two], [2])["loiap2"] == pytest.approx(1.0)  # 1.5 to (4,0), 1.2 to (0,0)
    # t=1.4: (2.5, 0) is 1.5 px from (4, 0): FP; then TP: (1/2) / 2 gts
    assert loiap([two], [1.4])["loiap1.4"] == pytest.approx(0.25)


def test_loiap_ranks_all_images_together():
    """A: 2 gts, exact a1 (.9), far a2 (.6); B: 1 gt, far b2 (.95), exact b1 (.7).
    Global ranking b2 FP, a1 TP, b1 TP, a2 FP: AP = (1/2 + 2/3) / 3."""
    images = [
        {
            "gt_points": _pts((5, 5), (20, 20)),
            "pred_points": _pts((5, 5), (40, 40)),
            "scores": [0.9, 0.6],
        },
        {
            "gt_points": _pts((8, 8)),
            "pred_points": _pts((30, 30), (8, 8)),
            "scores": [0.95, 0.7],
        },
        {"gt_points": _pts(), "pred_points": _pts(), "scores": []},
    ]
    out = loiap(images)
    for key in ("loiap5", "loiap2", "loiap1"):
        assert out[key] == pytest.approx((1 / 2 + 2 / 3) / 3), key
    # an image with predictions but no gt adds false positives (LACSS would fail on it)
    extra = {"gt_points": _pts(), "pred_points": _pts((1, 1)), "scores": [0.99]}
    assert loiap(images + [extra])["loiap5"] == pytest.approx((1 / 3 + 2 / 4) / 3)
    assert math.isnan(loiap([extra])["loiap5"])


@pytest.mark.parametrize("seed", range(4))
def test_loiap_matches_lacss_code(seed):
    """Against a transcription of LACSS ``LoiAP.update`` + ``AP.compute`` (distinct scores)."""
    rng = np.random.default_rng(seed)
    images, ref_inputs = [], []
    for n_gt, n_pred in ((15, 20), (8, 5), (1, 4)):
        gt = rng.uniform(0, 30, (n_gt, 2))
        pred = np.concatenate([gt[: n_pred // 2] + rng.normal(0, 1.5, (n_pred // 2, 2))])
        pred = np.concatenate([pred, rng.uniform(0, 30, (n_pred - len(pred), 2))])
        scores = np.sort(rng.permutation(1000)[:n_pred] / 1000.0 + 1e-3)[::-1]  # sorted, > 0
        images.append({"gt_points": gt, "pred_points": pred, "scores": scores})
        sim = 1.0 / ((pred[:, None, :] - gt[None]) ** 2).sum(axis=-1)
        ref_inputs.append((sim, scores))
    ref = _ref_ranked_ap(ref_inputs, [1 / t / t for t in (5, 2, 1)])
    ours = loiap(images)
    assert [ours["loiap5"], ours["loiap2"], ours["loiap1"]] == pytest.approx(ref, abs=1e-12)
    assert 0 < ref[2] < ref[0], "the case should separate the thresholds"


def test_evaluate_cells_lacss_options():
    """strict AP, pooled Dice and LoiAP through evaluate_cells, per class and averaged."""
    from sslseg.metrics.cells import evaluate_cells

    g, half = _box(0, 4, 0, 4), _box(0, 4, 0, 2)  # IoU 0.5
    record = {
        "image_id": 7,
        "gt_rles": to_rles(np.stack([g, P3])),
        "gt_classes": [0, 1],
        "pred_rles": to_rles(np.stack([P3, half])),
        "pred_scores": [0.8, 0.9],
        "pred_classes": [1, 0],
        "gt_points": [[2.0, 2.0], [9.0, 9.0]],
        "pred_points": [[9.0, 9.0], [1.0, 2.0]],  # class 0 off by 1 px, class 1 exact
    }
    plain, _ = evaluate_cells([record], ["a", "b"])
    assert "LoiAP5" not in plain and "InstDice-pooled" not in plain
    assert plain["AP50-a"] == pytest.approx(100.0)
    out, _ = evaluate_cells([record], ["a", "b"], strict_ap=True, pooled_dice=True, loiap=True)
    assert out["AP50-a"] == 0.0 and out["AP50-b"] == pytest.approx(100.0)
    assert out["InstDice-pooled-a"] == pytest.approx(100.0 * 16 / 24)  # 2 * 8 / (16 + 8)
    assert out["InstDice-pooled"] == pytest.approx(50.0 * (1 + 16 / 24))
    assert out["LoiAP5-a"] == out["LoiAP2-a"] == pytest.approx(100.0)
    assert out["LoiAP1-a"] == 0.0 and out["LoiAP1-b"] == pytest.approx(100.0)
    assert out["LoiAP1"] == pytest.approx(50.0)
    with pytest.raises(AssertionError, match="gt_points"):
        evaluate_cells([{**record, "gt_points": [[1.0, 1.0]]}], ["a", "b"], loiap=True)
