"""sslseg.metrics.instance: hand-computed cases, a brute-force AJI reference, pycocotools."""

import math

import numpy as np
import pytest

from sslseg.datasets.coco_utils import image_record, mask_to_annotation
from sslseg.metrics.instance import aji, aji_matched, coco_map, instance_dice, lacss_ap, to_rles


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
