"""Shared volumetric metrics vs. medpy (what the papers used) on real left-atrium volumes.

For each shipped LA case the label is compared with a deterministic, realistic "prediction": the
label shifted by (2, 1, 1) voxels and eroded once (a few-voxel boundary error, Dice about 0.8-0.9).
Both implementations score the same pairs; ``metrics`` are ours, ``baseline_metrics`` medpy's
(they must agree: that is the check), and ``speed.case_metrics_vs_medpy`` compares the time to
compute Dice, Jaccard, HD95 and ASD for all cases (target: ours no slower, ratio <= 1.0).
"""

import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from sslseg.bench import speed_entry
from sslseg.paths import data_root

SHIFT = (2, 1, 1)


def add_arguments(parser):
    parser.add_argument("--max-cases", type=int, default=20, help="cases (all shipped: 20)")


def _cases(root: Path, max_cases: int):
    files = sorted((root / "la" / "2018LA_Seg_Training Set").glob("*/mri_norm2.h5"))
    if not files:
        raise FileNotFoundError(
            f"no LA cases under {root / 'la'}: expected "
            "'2018LA_Seg_Training Set/<case>/mri_norm2.h5'"
        )
    return files[:max_cases]


def _perturb(label: np.ndarray) -> np.ndarray:
    moved = np.roll(label.astype(bool), SHIFT, axis=(0, 1, 2))
    return ndimage.binary_erosion(moved, iterations=1).astype(np.uint8)


def _medpy(pred, gt):
    from medpy.metric import binary  # reference only: never imported by library code

    return {
        "dice": 100 * binary.dc(pred, gt),
        "jaccard": 100 * binary.jc(pred, gt),
        "hd95": binary.hd95(pred, gt),
        "asd": binary.asd(pred, gt),
    }


def _ours(pred, gt):
    from sslseg.metrics.semantic import compute_case_metrics

    m = compute_case_metrics(pred, gt, num_classes=2)
    return {
        "dice": 100 * m["dice_1"],
        "jaccard": 100 * m["jaccard_1"],
        "hd95": m["hd95_1"],
        "asd": m["asd_1"],
    }


def run(args):
    root = data_root(must_exist=True)
    pairs = []
    for f in _cases(root, args.max_cases):
        with h5py.File(f, "r") as h:
            gt = np.asarray(h["label"][...], dtype=np.uint8)
        pairs.append((_perturb(gt), gt))
    timings, values, rows = {}, {}, {}
    for name, fn in (("ours", _ours), ("medpy", _medpy)):
        fn(*pairs[0])  # warm-up (imports)
        t0 = time.perf_counter()
        rows[name] = [fn(p, g) for p, g in pairs]
        timings[name] = time.perf_counter() - t0
        values[name] = {k: float(np.mean([r[k] for r in rows[name]])) for k in rows[name][0]}
        print(f"[metrics_la] {name}: {values[name]} in {timings[name]:.2f} s")
    worst = {
        k: float(max(abs(a[k] - b[k]) for a, b in zip(rows["ours"], rows["medpy"])))
        for k in values["ours"]
    }
    print(f"[metrics_la] largest per-case |ours - medpy|: {worst}")
    return {
        "method": "sslseg.metrics.semantic (Dice, Jaccard, HD95, ASD)",
        "dataset": "la (2018 Left Atrium, shipped cases)",
        "split": f"{len(pairs)} cases, label vs. label shifted {SHIFT} and eroded once",
        "budget": {
            "cases": len(pairs),
            "seed": None,
            "trained": "nothing (metric benchmark)",
            "reference": "medpy 0.5.2 medpy.metric.binary",
        },
        "metrics": values["ours"],
        "baseline_metrics": values["medpy"],
        "max_abs_diff_per_case": worst,
        "speed": {"case_metrics_vs_medpy": speed_entry(timings["ours"], timings["medpy"], 1.0)},
    }
