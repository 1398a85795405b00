"""DMD vs. supervised-only on ACDC with 3 labeled patients (2D U-Net), same budget and seed.

Both are trained through the bundle (``train.json`` + ``train_acdc.json``, the baseline adding
``train_supervised.json``: network 1 alone on the same labeled stream) for the same iterations,
then the FINAL checkpoint of each (no checkpoint selection) is scored per 3D volume on the 20
ACDC validation volumes (the 40 test volumes are not shipped) by the bundle's evaluation.

CPU budget (default): slices resized to 128x128 (the protocol: 256x256), batch 4 labeled + 4
unlabeled (the protocol: 12 + 12), 1000 iterations (the protocol: 30000 in SSL4MIS, 6000 in the
DMD code), everything else as the bundle's defaults. ``--paper`` runs the protocol sizes (GPU).
Speed: ``step_vs_floor`` = DMD step / one-network step on the same batch (floor 2: two networks);
``wall_vs_floor`` = the training-seconds ratio / its floor (``_dmd_common.wall_floor``: the
baseline trains one network on the labeled half of the batch).
"""

import torch
from _dmd_common import step_times, train_and_score, wall_speed
from monai.losses import DiceLoss

from sslseg.bench import speed_entry
from sslseg.datasets.datalists import make_acdc_datalist
from sslseg.paths import data_root, work_dir

SEED = 1337


def add_arguments(parser):
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128, help="in-plane training size")
    parser.add_argument("--batch", type=int, default=4, help="labeled (= unlabeled) per step")
    parser.add_argument("--paper", action="store_true", help="256 px, 12+12, 6000 iterations")


def run(args):
    if args.paper:
        args.iterations, args.size, args.batch = 6000, 256, 12
    root = data_root(must_exist=True)
    out = work_dir("bench/dmd_acdc")
    datalist = make_acdc_datalist(root / "acdc", out / "acdc_3.json", labeled_patients=3)
    common = {
        "dataset_dir": str(root / "acdc"),
        "datalist": str(datalist),
        "seed": SEED,
        "patch_size": [args.size, args.size],
        "labeled_batch_size": args.batch,
        "unlabeled_batch_size": args.batch,
        "max_iterations": args.iterations,
        "epoch_length": min(250, args.iterations),
        "val_interval": 10**6,  # no selection
        "num_workers": 1,
        "overwrite": True,  # a re-run replaces this benchmark's own earlier checkpoints
        "lr_step": max(1, args.iterations * 2500 // 6000),
    }
    results, train_s = {}, {}
    for name, extra in (("supervised", ["train_supervised.json"]), ("dmd", [])):
        cfg = dict(common)
        if name == "supervised":  # labeled stream only, as train_supervised.json sets it
            cfg["unlabeled_batch_size"] = 0
        configs = ["train.json", "train_acdc.json", *extra]
        results[name], train_s[name] = train_and_score(configs, cfg, out, name)
        print(f"[dmd_acdc] {name}: {results[name]} (training {train_s[name]:.0f} s)", flush=True)

    from monai_bundles.common.networks import UNet2D

    torch.manual_seed(SEED)
    b, s = args.batch, args.size
    dmd_t, sup_t, lab_t = step_times(
        lambda: UNet2D(1, 4),
        torch.rand(b, 1, s, s),
        torch.randint(0, 4, (b, 1, s, s)),
        torch.rand(b, 1, s, s),
        DiceLoss(softmax=True, to_onehot_y=True),
        rounds=3,
        steps=3,
    )
    return {
        "method": "DMD (2 x UNet2D, Dice distillation, lambda 4, T 2)",
        "dataset": "acdc (3 labeled patients = 68 slices, 1244 unlabeled slices)",
        "split": "20 validation volumes (test volumes not shipped), final checkpoints",
        "budget": {
            "iterations": args.iterations,
            "seed": SEED,
            "input": f"{s}x{s}",
            "batch": f"{b} labeled + {b} unlabeled (baseline: the same {b} labeled)",
            "seconds_train": {k: round(v, 1) for k, v in train_s.items()},
            "trained_from_scratch": "both networks, no pretrained weights",
            "iterations_per_s": {k: round(args.iterations / v, 3) for k, v in train_s.items()},
        },
        "metrics": results["dmd"],
        "baseline_metrics": results["supervised"],
        "speed": {
            "step_vs_floor": speed_entry(dmd_t / sup_t, 2.0, 1.10, unit="x"),
            "wall_vs_floor": wall_speed(train_s, sup_t, lab_t),
        },
        "step_seconds": {"dmd": dmd_t, "one_network": sup_t, "one_network_labeled": lab_t},
    }
