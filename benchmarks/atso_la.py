"""ATSO vs. STSO, self-learning and M0 on the left atrium (three views, fused pseudo labels).

The staged LA cases (16 of train.list, 4 of test.list; ../shared/data/README), downsampled 2x
(about 1.25 mm; image trilinear, label nearest) into this benchmark's work folder. S = the first
2 cases of train.list, R = the other 14 (two folds of 7, seeded), test = the 4 test cases.
Three 2D U-Nets (one per axis) with 3-slice context, 96 px crops, batch 2 volumes x 2 slabs per
view; pseudo labels and test predictions by 96 px sliding windows over every slice of every axis,
fused by mean probability (RSTN F2). From scratch, one seed. CPU budget (default): M0 1000
iterations, T = 2 generations of 400 (ATSO: two fold students of about 225 each; final 400).
"""

import shutil

import h5py
import numpy as np
from _atso_common import (
    add_common_arguments,
    assemble,
    budget,
    common_overrides,
    fresh_work_dir,
    plot,
    pseudolabel_speed,
    run_methods,
)

LA = "2018LA_Seg_Training Set"


def add_arguments(parser):
    add_common_arguments(parser, m0=1000, generation=400, size=96)
    parser.add_argument("--zoom", type=float, default=0.5, help="resampling of the volumes")


def downsample(src, dst, zoom: float) -> int:
    """Write the staged LA cases resampled by ``zoom`` under ``dst`` (same layout); returns the
    number of cases."""
    from scipy.ndimage import zoom as nd_zoom

    n = 0
    for case in sorted((src / LA).iterdir()):
        f = case / "mri_norm2.h5"
        if not f.is_file():
            continue
        with h5py.File(f, "r") as h:
            image, label = h["image"][()], h["label"][()]
        (dst / LA / case.name).mkdir(parents=True, exist_ok=True)
        with h5py.File(dst / LA / case.name / "mri_norm2.h5", "w") as h:
            h["image"] = nd_zoom(image, zoom, order=1).astype(np.float32)
            h["label"] = nd_zoom(label, zoom, order=0).astype(np.uint8)
        n += 1
    for name in ("train.list", "test.list"):
        shutil.copyfile(src / name, dst / name)
    return n


def run(args):
    import torch

    from monai_bundles.atso.data import la_atso_datalist
    from monai_bundles.common.networks import UNet2D
    from monai_bundles.common.readers import read_array

    root, out = fresh_work_dir("atso_la", "la")
    data = out / "la_data"
    cases = downsample(root / "la", data, args.zoom)
    common = common_overrides(args, data)
    results = run_methods(["train.json"], common, out, args.generations)
    unlabeled = la_atso_datalist(str(data), labeled=2)["unlabeled"][:2]
    volumes = [
        torch.from_numpy(read_array(str(data / it["image"]), "image"))[None, None].float()
        for it in unlabeled
    ]
    speed_pl = pseudolabel_speed(
        lambda: UNet2D(3, 1), [0, 1, 2], 3, (args.size, args.size), volumes
    )
    plot(results, out)
    res = assemble(results, args.generations, speed_pl)
    res.update(
        method="ATSO (two folds, students from M0; 3 x UNet2D, 3-slice context, mean-prob fusion)",
        dataset=f"la ({cases} staged cases at zoom {args.zoom}: 2 labeled, 14 unlabeled, 4 test)",
        split="4 staged test cases, final models at T, one seed",
        budget=budget(
            args,
            input=f"{args.size}x{args.size} windows of positive slices, 2 volumes x 2 per view",
            views="three (axes 0, 1, 2), 3-slice context, fusion mean_prob",
            zoom=args.zoom,
            pseudolabel_speed_cases=f"{len(volumes)} unlabeled volumes, random-init M0",
        ),
    )
    return res
