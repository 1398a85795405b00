"""CDMA vs. supervised-only on GlaS (8 of 85 training images labeled), same budget and seeds.

Both are trained through the bundle (``train.json``; the baseline adds ``train_supervised.json``:
the same MTNet, three decoders, on the labeled stream alone, unsupervised terms off) for the same
iterations, then the FINAL checkpoint of each (no checkpoint selection) is scored by the bundle's
``evaluate.json`` on the 20 GlaS ``testB`` images (whole images, sliding window, CSA branch):
Dice and Jaccard (percent), HD95 and ASD (pixels of the 2x-downscaled images), means over images.
Labeled images: a seeded permutation stratified by benign/malignant (``glas_datalist``, split
seed 0); the other 77 training images are the unlabeled stream. Trained from scratch.

CPU budget (default): ResNet-18 encoder, 64-channel ASPP/decoders, 128 px patches (the paper's
256 px field of view on the 2x-downscaled images), batch 4 labeled + 4 unlabeled, 600 iterations,
warm-up 10 %, lambdas 0.1 / 0.1, T 10, uniform lr 1e-2 (the reference's head lr) with milestones
at 1/3 and 2/3. ``--paper`` runs the paper's network (ResNet-50, 256 channels, 8 + 8) for 6000
iterations (a GPU). ``--seeds 0 1 2`` repeats both models per seed (initialisation, sampling,
augmentation; the labeled split stays the same) and reports means (``budget.per_seed``).

Speed, in one process on the same 4 + 4 images: ``step_vs_floor`` = a CDMA step / the same
CDMATrainer's step with the unsupervised terms off (all three decoders forwarded on all 8 images,
supervised loss on the labeled 4): the distillation and entropy terms are element-wise (target
1.10). ``sliding_window_vs_loop`` = the bundle's evaluation inference on the 20 test images
(MONAI ``SlidingWindowInferer`` over ``MTNetPredictor``: CSA decoder only, windows batched 4) /
the reference's loop (``cdma.reference_inference``: every decoder run, one window at a time),
same CSA logits within 1e-5 (target 0.67).
"""

import statistics
import time
from pathlib import Path

import torch
from _dmd_common import REPO, train_and_score

from sslseg.bench import speed_entry
from sslseg.datasets.pathology import make_glas_datalist
from sslseg.paths import data_root, work_dir

REPO_CONFIGS = "monai_bundles/cdma/configs"
SPLIT_SEED = 0
LABELED = 8


def add_arguments(parser):
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--size", type=int, default=128, help="patch size (square)")
    parser.add_argument("--batch", type=int, default=4, help="labeled (= unlabeled) per step")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--decoder-channels", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="ResNet-50, 256 ch, 8+8, 6000 it")


def _net_kwargs(args):
    return {"encoder": args.encoder, "decoder_channels": args.decoder_channels}


def _train_seed(args, out, root, datalist, seed):
    configs = REPO / REPO_CONFIGS
    common = {
        "dataset_dir": str(root / "glas"),
        "datalist": str(datalist),
        "seed": seed,
        "patch_size": [args.size, args.size],
        "labeled_batch_size": args.batch,
        "unlabeled_batch_size": args.batch,
        "max_iterations": args.iterations,
        # an epoch length dividing the iterations (train.json: max_epochs = iterations // it)
        "epoch_length": max(d for d in range(1, 251) if args.iterations % d == 0),
        "val_interval": 10**6,  # no selection: the final checkpoint is scored
        # no loader worker: on 2 cores a worker process competes with the training threads
        # (measured: 0.63 s/it with one worker vs 0.23 s/it without, supervised step)
        "num_workers": 4 if args.paper else 0,
        "overwrite": True,  # a re-run replaces this benchmark's own earlier checkpoints
        **_net_kwargs(args),
    }
    metrics, train_s = {}, {}
    for name, extra in (("supervised", ["train_supervised.json"]), ("cdma", [])):
        cfg = dict(common)
        if name == "supervised":
            cfg["unlabeled_batch_size"] = 0
        metrics[name], train_s[name] = train_and_score(
            ["train.json", *extra], cfg, Path(out), name, configs
        )
        print(
            f"[cdma_glas] seed {seed} {name}: {metrics[name]} ({train_s[name]:.0f} s)", flush=True
        )
    return {"metrics": metrics, "train_seconds": train_s}


def step_times(args, rounds: int, steps: int = 3):
    """Median seconds of a CDMA step and of the same trainer's step with the unsupervised terms
    off, on the same 4 + 4 images, alternating A/B rounds (one untimed warm-up step each)."""
    from _dmd_common import _IterTimer

    from monai_bundles.cdma.losses import CDMALoss
    from monai_bundles.cdma.networks import MTNet
    from monai_bundles.cdma.trainer import CDMATrainer

    torch.manual_seed(0)
    b, s = args.batch, args.size
    net = MTNet(**_net_kwargs(args))
    batch = {
        "labeled": {"image": torch.rand(b, 3, s, s), "label": torch.randint(0, 2, (b, 1, s, s))},
        "unlabeled": {"image": torch.rand(b, 3, s, s)},
    }
    times = {"cdma": [], "floor": []}
    for _ in range(rounds):
        for name, lam in (("cdma", 0.1), ("floor", 0.0)):
            trainer = CDMATrainer(
                device=torch.device("cpu"),
                max_epochs=1,
                epoch_length=steps + 1,
                train_data_loader=[batch] * (steps + 1),
                network=net,
                optimizer=torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9),
                loss_function=CDMALoss(),
                lambda_cdkd=lam,
                lambda_um=lam,
            )
            timer = _IterTimer(trainer)
            trainer.run()
            times[name] += timer.times[1:]
    return {k: statistics.median(v) for k, v in times.items()}


def sliding_window_speed(args, root, datalist):
    """(ours s, reference loop s, max |difference|) over the test images, a random-init MTNet."""
    import json

    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    from monai_bundles.cdma.networks import MTNet, MTNetPredictor
    from monai_bundles.cdma.reference_inference import reference_sliding_window

    torch.manual_seed(0)
    net = MTNet(**_net_kwargs(args)).eval()
    load = Compose(
        [
            LoadImaged("image", reader="PILReader", image_only=True),
            EnsureChannelFirstd("image"),
            ScaleIntensityd("image"),
        ]
    )
    items = json.loads(open(datalist).read())["test"]
    images = [load({"image": str(root / "glas" / it["image"])})["image"].float() for it in items]
    roi = (args.size, args.size)
    inferer = SlidingWindowInferer(roi_size=roi, overlap=0.25, sw_batch_size=4, mode="constant")
    predictor = MTNetPredictor(net, "csa")
    ours_s = loop_s = diff = 0.0
    with torch.no_grad():
        for img in images:
            t0 = time.perf_counter()
            ours = inferer(img[None].as_tensor(), predictor)[0]
            t1 = time.perf_counter()
            ref = reference_sliding_window(net, img.as_tensor(), roi, 0.25)
            t2 = time.perf_counter()
            ours_s, loop_s = ours_s + t1 - t0, loop_s + t2 - t1
            diff = max(diff, float((ours - ref).abs().max()))
    assert diff < 1e-5, f"our sliding window differs from the reference loop by {diff}"
    return ours_s, loop_s, diff


def run(args):
    if args.paper:
        args.iterations, args.batch, args.encoder, args.decoder_channels = 6000, 8, "resnet50", 256
    root = data_root(must_exist=True)
    if not (root / "glas").is_dir():
        raise FileNotFoundError(f"{root / 'glas'} not found (GlaS data, ../shared/data/README)")
    out = work_dir("bench/cdma_glas")
    datalist = make_glas_datalist(root / "glas", out / "glas_8.json", LABELED, SPLIT_SEED)
    step = step_times(args, args.timing_rounds)
    print(
        f"[cdma_glas] step: CDMA {step['cdma']:.3f} s, floor {step['floor']:.3f} s; projected "
        f"training ~{args.iterations * (step['cdma'] + step['floor']) / 60:.0f} min per seed",
        flush=True,
    )
    sw_ours, sw_loop, sw_diff = sliding_window_speed(args, root, datalist)
    print(f"[cdma_glas] sliding window: ours {sw_ours:.1f} s, loop {sw_loop:.1f} s", flush=True)
    seeds = list(dict.fromkeys(args.seeds))
    runs = {
        seed: _train_seed(args, out if i == 0 else out / f"seed{seed}", root, datalist, seed)
        for i, seed in enumerate(seeds)
    }

    def mean_std(name):
        keys = runs[seeds[0]]["metrics"][name]
        vals = {k: [r["metrics"][name][k] for r in runs.values()] for k in keys}
        return (
            {k: statistics.fmean(v) for k, v in vals.items()},
            {k: statistics.pstdev(v) for k, v in vals.items()},
        )

    ours, ours_std = mean_std("cdma")
    base, base_std = mean_std("supervised")
    train_s = runs[seeds[0]]["train_seconds"]
    return {
        "method": "CDMA (MTNet: CSA/SA/CA decoders, CDKD T=10 x T^2, entropy of the mean)",
        "dataset": "glas (2x downscaled; 8 labeled of 85 training images, 77 unlabeled)",
        "split": "20 testB images, whole images by sliding window, final checkpoints",
        "budget": {
            "trained_from_scratch": "ResNet encoder without ImageNet weights",
            "iterations": args.iterations,
            "seeds": seeds,
            "split_seed": SPLIT_SEED,
            "network": f"{args.encoder}, {args.decoder_channels}-channel ASPP/decoders",
            "input": f"{args.size}x{args.size} patches",
            "batch": f"{args.batch} labeled + {args.batch} unlabeled (baseline: the labeled)",
            "seconds_train": {k: round(v, 1) for k, v in train_s.items()},
            "per_seed": {str(s): r for s, r in runs.items()},
            "seed_std": {"cdma": ours_std, "supervised": base_std},
            "time_budget_s": 1800,
        },
        "metrics": ours,
        "baseline_metrics": base,
        "speed": {
            "step_vs_floor": speed_entry(step["cdma"], step["floor"], 1.10, unit="s"),
            "sliding_window_vs_loop": speed_entry(sw_ours, sw_loop, 0.67, unit="s"),
        },
        "step_seconds": step,
        "sliding_window": {"ours_s": sw_ours, "loop_s": sw_loop, "max_abs_diff": sw_diff},
    }
