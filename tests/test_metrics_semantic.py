"""sslseg.metrics.semantic against medpy.metric.binary (the reference the papers used)."""

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from sslseg.metrics.semantic import (
    aggregate_cases,
    asd,
    compute_case_metrics,
    dice,
    hd95,
    jaccard,
    write_case_table,
)

# MONAI returns surface distances as float32 and Dice in float32: agree with medpy to ~1e-7.
TOL = dict(rtol=1e-6, atol=1e-6)


def _blob(shape, seed):
    """Random smooth blobs (several components, holes), bool array of `shape`."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2) > 0.52


CASES = [
    ((40, 50), None),
    ((40, 50), (0.5, 2.0)),
    ((16, 24, 20), None),
    ((16, 24, 20), (2.5, 0.7, 1.0)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_metrics_match_medpy(shape, spacing, seed):
    pred, label = _blob(shape, seed), _blob(shape, seed + 100)
    assert pred.any() and label.any()
    np.testing.assert_allclose(dice(pred, label), medpy_binary.dc(pred, label), **TOL)
    np.testing.assert_allclose(jaccard(pred, label), medpy_binary.jc(pred, label), **TOL)
    np.testing.assert_allclose(
        hd95(pred, label, spacing), medpy_binary.hd95(pred, label, spacing), **TOL
    )
    np.testing.assert_allclose(
        asd(pred, label, spacing), medpy_binary.asd(pred, label, spacing), **TOL
    )
    # asd is directed (pred -> label), as medpy's
    np.testing.assert_allclose(
        asd(label, pred, spacing), medpy_binary.asd(label, pred, spacing), **TOL
    )


def test_hd95_is_medpy_pooled_not_monai_max_of_directions():
    """A 20x20 square (label) and the same square with a 2x20 arm (pred).

    pred -> label: 74 square-border pixels at 0, arm pixels at 1..20 (two each): 114 values.
    label -> pred: 74 at 0 and the 2 pixels under the arm at 1: 76 values.
    MONAI: max of per-direction p95 = p95(pred -> label): index 0.95*113 = 107.35 of the sorted
    list = 17 + 0.35 = 17.35. medpy (pooled, 190 values: 148 zeros, 4 ones, then 2..20 twice):
    index 0.95*189 = 179.55 -> 15 + 0.55 = 15.55.
    """
    label = np.zeros((60, 60), bool)
    label[10:30, 10:30] = True
    pred = label.copy()
    pred[19:21, 30:50] = True
    with warnings.catch_warnings():  # MONAI's own deprecation warning
        warnings.simplefilter("ignore", FutureWarning)
        monai_hd = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(label)[None, None], percentile=95
        )
    assert float(monai_hd) == pytest.approx(17.35, abs=1e-5)
    assert medpy_binary.hd95(pred, label) == pytest.approx(15.55, abs=1e-9)
    assert hd95(pred, label) == pytest.approx(15.55, abs=1e-5)
    assert hd95(label, pred) == pytest.approx(15.55, abs=1e-5)  # symmetric


def test_empty_cases():
    empty, full = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    full[2:5, 2:5] = True
    # both empty: perfect agreement
    assert (dice(empty, empty), jaccard(empty, empty)) == (1.0, 1.0)
    assert (hd95(empty, empty), asd(empty, empty)) == (0.0, 0.0)
    # one empty: overlap 0, distances NaN by default or the given penalty
    for a, b in ((empty, full), (full, empty)):
        assert (dice(a, b), jaccard(a, b)) == (0.0, 0.0)
        assert math.isnan(hd95(a, b)) and math.isnan(asd(a, b))
        assert hd95(a, b, empty_distance=99.0) == 99.0 and asd(a, b, empty_distance=7.0) == 7.0


def test_compute_case_metrics_keys_and_means():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, (12, 20, 18)) * _blob((12, 20, 18), 5)
    pred = rng.integers(0, 3, (12, 20, 18)) * _blob((12, 20, 18), 6)
    spacing = (2.0, 1.0, 0.8)
    out = compute_case_metrics(pred, label, num_classes=3, spacing=spacing)
    names = ["dice", "jaccard", "hd95", "asd"]
    expected = {f"{m}_{c}" for m in names for c in (1, 2)} | {f"{m}_mean" for m in names}
    assert set(out) == expected, f"keys {sorted(out)}"
    for c in (1, 2):
        p, lab = pred == c, label == c
        np.testing.assert_allclose(out[f"dice_{c}"], medpy_binary.dc(p, lab), **TOL)
        np.testing.assert_allclose(out[f"hd95_{c}"], medpy_binary.hd95(p, lab, spacing), **TOL)
        np.testing.assert_allclose(out[f"asd_{c}"], medpy_binary.asd(p, lab, spacing), **TOL)
    for m in names:
        assert out[f"{m}_mean"] == pytest.approx((out[f"{m}_1"] + out[f"{m}_2"]) / 2)
    with_bg = compute_case_metrics(pred, label, num_classes=3, include_background=True)
    assert "dice_0" in with_bg and "dice_0" not in out


def test_compute_case_metrics_nan_mean_skips_missing_class():
    label = np.zeros((10, 10), int)
    label[2:6, 2:6] = 1
    label[7:9, 7:9] = 2
    pred = np.where(label == 1, 1, 0)  # class 2 missed entirely
    out = compute_case_metrics(pred, label, num_classes=3)
    assert out["dice_1"] == 1.0 and out["dice_2"] == 0.0 and out["dice_mean"] == 0.5
    assert out["hd95_1"] == 0.0 and math.isnan(out["hd95_2"]) and out["hd95_mean"] == 0.0


def test_aggregate_and_write_case_table(tmp_path):
    rows = [
        {"case": "a", "dice_1": 0.5, "hd95_1": float("nan")},
        {"case": "b", "dice_1": 1.0, "hd95_1": 2.0},
        {"case": "c", "dice_1": 0.0, "hd95_1": 4.0},
    ]
    mean = aggregate_cases(rows)
    assert mean == {"dice_1": 0.5, "hd95_1": 3.0}  # NaN skipped
    assert math.isnan(aggregate_cases([{"hd95_1": float("nan")}])["hd95_1"])
    json_path, csv_path = write_case_table(rows, str(tmp_path), "val")
    doc = json.load(open(json_path))
    assert doc["cases"][0]["hd95_1"] is None and doc["mean"]["hd95_1"] == 3.0
    lines = list(csv.DictReader(open(csv_path)))
    assert [r["case"] for r in lines] == ["a", "b", "c", "mean"]
    assert float(lines[-1]["dice_1"]) == 0.5
