"""DMD vs. supervised-only on the left atrium (3D V-Net), 8 labeled + 8 unlabeled shipped cases.

Both are trained through the bundle (``train.json``; baseline + ``train_supervised.json``) for the
same iterations and seed, then the FINAL checkpoint of each is scored on the 4 shipped test cases
with the LA protocol (sliding window 112x112x80, strides 18/18/4, probabilities averaged).

CPU budget (default): the protocol's patch 112x112x80 and batch 2 + 2, but only 20 iterations
(the protocol: 6000): a smoke-scale comparison, far from convergence. ``--paper`` runs 6000.
Speed: ``step_vs_floor`` (DMD step / one-network step on the same batch; floor 2),
``wall_vs_floor`` (see ``_dmd_common.wall_floor``) and ``sliding_window_vs_loop``: evaluation of
one LA volume with the bundle's inferer (``SlidingWindowInferer`` over
``ProbabilityNet(optimize=True, compile=True)``: BatchNorm folded, channels-last, compiled with
inductor's freezing) vs. the reference per-window loop
(``monai_bundles.common.reference_inference``); same windows, outputs compared (max abs difference
reported, must be < 1e-5). The best of 2 runs each; the first run of ours includes compiling the
network (``sliding_window.first_run_s``).
"""

import time

import h5py
import numpy as np
import torch
from _dmd_common import step_times, train_and_score, wall_speed
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceLoss

from sslseg.bench import speed_entry
from sslseg.datasets.datalists import make_la_datalist
from sslseg.paths import data_root, work_dir

SEED = 1337
ROI, STRIDES = (112, 112, 80), (18, 18, 4)


def add_arguments(parser):
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--paper", action="store_true", help="6000 iterations (GPU)")


def sliding_window_speed(net, volume_path):
    """(ours_s, loop_s, max_abs_diff) for one LA volume, A/B/A/B in one process."""
    from monai_bundles.common.inferers import ProbabilityNet, la_overlap
    from monai_bundles.common.reference_inference import reference_sliding_window

    with h5py.File(volume_path, "r") as f:
        image = np.asarray(f["image"][...], dtype=np.float32)
    inferer = SlidingWindowInferer(
        ROI, sw_batch_size=1, overlap=la_overlap(ROI, STRIDES), mode="constant", progress=False
    )
    fast = ProbabilityNet(net, optimize=True, compile=True).eval()
    ours_t, loop_t = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        ref = reference_sliding_window(net, image, ROI, STRIDES, 1)
        loop_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            ours = inferer(torch.from_numpy(image)[None, None], fast)[0].numpy()
        ours_t.append(time.perf_counter() - t0)
    diff = float(np.abs(ours - ref).max())
    assert diff < 1e-5, f"our sliding window differs from the reference loop by {diff}"
    return min(ours_t), min(loop_t), diff, image.shape, ours_t[0]


def run(args):
    if args.paper:
        args.iterations = 6000
    root = data_root(must_exist=True)
    out = work_dir("bench/dmd_la")
    datalist = make_la_datalist(root / "la", out / "la_8.json", labeled=8)
    common = {
        "dataset_dir": str(root / "la"),
        "datalist": str(datalist),
        "seed": SEED,
        "max_iterations": args.iterations,
        "epoch_length": min(200, args.iterations),
        "val_interval": 10**6,
        "num_workers": 1,
        "overwrite": True,  # a re-run replaces this benchmark's own earlier checkpoints
        "sw_batch_size": 1,
        "lr_step": max(1, args.iterations * 2500 // 6000),
    }
    results, train_s = {}, {}
    for name, extra in (("supervised", ["train_supervised.json"]), ("dmd", [])):
        results[name], train_s[name] = train_and_score(["train.json", *extra], common, out, name)
        print(f"[dmd_la] {name}: {results[name]} (training {train_s[name]:.0f} s)", flush=True)

    from monai_bundles.common.networks import VNet

    torch.manual_seed(SEED)
    net = VNet(n_channels=1, n_classes=1, has_dropout=True)
    sw_ours, sw_loop, sw_diff, shape, sw_first = sliding_window_speed(
        net.eval(), sorted((root / "la").glob("2018LA_Seg_Training Set/*/mri_norm2.h5"))[0]
    )
    print(
        f"[dmd_la] sliding window {shape}: ours {sw_ours:.1f} s, loop {sw_loop:.1f} s, "
        f"max |diff| {sw_diff:.2e}",
        flush=True,
    )
    x = lambda: torch.rand(2, 1, *ROI)  # noqa: E731
    dmd_t, sup_t, lab_t = step_times(
        lambda: VNet(1, 1, has_dropout=True),
        x(),
        (torch.rand(2, 1, *ROI) > 0.8).float(),
        x(),
        DiceLoss(sigmoid=True),
        rounds=2,
        steps=1,
    )
    return {
        "method": "DMD (2 x V-Net, Dice distillation, lambda 4, T 2)",
        "dataset": "la (8 labeled + 8 unlabeled shipped cases of train.list)",
        "split": "4 shipped test.list cases, final checkpoints, window 112x112x80, strides 18,18,4",
        "budget": {
            "iterations": args.iterations,
            "seed": SEED,
            "patch": "112x112x80",
            "batch": "2 labeled + 2 unlabeled (baseline: the same 2 labeled)",
            "seconds_train": {k: round(v, 1) for k, v in train_s.items()},
            "iterations_per_s": {k: round(args.iterations / v, 4) for k, v in train_s.items()},
            "trained_from_scratch": "both networks, no pretrained weights",
        },
        "metrics": results["dmd"],
        "baseline_metrics": results["supervised"],
        "speed": {
            "step_vs_floor": speed_entry(dmd_t / sup_t, 2.0, 1.10, unit="x"),
            "wall_vs_floor": wall_speed(train_s, sup_t, lab_t),
            "sliding_window_vs_loop": speed_entry(sw_ours, sw_loop, 0.5, unit="s"),
        },
        "step_seconds": {"dmd": dmd_t, "one_network": sup_t, "one_network_labeled": lab_t},
        "sliding_window": {
            "volume_shape": list(shape),
            "max_abs_diff": sw_diff,
            "first_run_s": round(sw_first, 2),
        },
    }
