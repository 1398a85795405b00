"""ATSO vs. STSO, self-learning and M0 on ACDC with 3 labeled patients (one view, 2D U-Net).

S = the 68 slices of the first 3 patients of ``train_slices.list``; R = the 1244 slices of the
other 67 patients, split into two folds BY PATIENT (33/34); test = the 20 validation volumes (the
40 test volumes are not shipped), scored per volume (Dice, Jaccard, HD95, ASD; foreground mean).
One view (axial slices; 5-10 mm between slices makes other views meaningless), no context
slices, 128 px training crops and 128 px sliding windows, batch 4, from scratch, one seed
(``--seed``). The whole procedure runs through the bundle (``_atso_common``). CPU budget
(default): M0 1000 iterations, T = 2 generations of 500 iterations (ATSO: two fold students of
about 250 each, proportional budget; final model 500).
"""

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


def add_arguments(parser):
    add_common_arguments(parser, m0=1000, generation=500, size=128)


def run(args):
    import torch

    from monai_bundles.atso.data import acdc_atso_datalist
    from monai_bundles.common.networks import UNet2D
    from monai_bundles.common.readers import read_array

    root, out = fresh_work_dir("atso_acdc", "acdc")
    common = common_overrides(args, root / "acdc")
    results = run_methods(["train.json", "train_acdc.json"], common, out, args.generations)
    unlabeled = acdc_atso_datalist(str(root / "acdc"))["unlabeled"][:200]
    slices = [
        torch.from_numpy(read_array(str(root / "acdc" / it["image"]), "image"))[
            None, None, None
        ].float()
        for it in unlabeled
    ]
    speed_pl = pseudolabel_speed(lambda: UNet2D(1, 4), [0], 1, (args.size, args.size), slices)
    plot(results, out)
    res = assemble(results, args.generations, speed_pl)
    res.update(
        method="ATSO (two folds by patient, every student from M0; UNet2D, one view)",
        dataset="acdc (3 labeled patients = 68 slices; 67 unlabeled patients = 1244 slices)",
        split="20 validation volumes (test volumes not shipped), final models at T, one seed",
        budget=budget(
            args,
            input=f"{args.size}x{args.size} windows of positive slices, batch 4",
            views="one (axial slices), no context slices",
            pseudolabel_speed_cases=f"{len(slices)} unlabeled slices, random-init M0",
        ),
    )
    return res
