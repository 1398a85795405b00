"""CKS (points only) vs supervised LACSS (masks) vs a point-disk baseline on ISBI 2014 whole cells.

Data: ``../shared/data/isbi2014_cervical``, the fixed split (images 1-35 train, 36-45 test), one
class "cell" = the cytoplasm masks, one point per cell from its nucleus (``isbi2014_cks_*``:
the paper's A431 setting of inexact points from a nuclear stain), images scaled by 0.375 so the
cells (~135 px) fit the 96 px crop. Both models are ``tools/train_net.py`` runs of
``configs/cks/isbi2014_cpu.yaml`` (a small LACSS: ResNet-18 GN + LACSS FPN 128), same seed,
iterations and images, trained FROM SCRATCH (no pretrained weights here); the final checkpoints
are scored (no selection on the test set).

Rows: ``metrics`` = CKS (``MODEL.CKS.MODE points``: points + collaborator); ``baseline_metrics``
= supervised LACSS (``MODE supervised``: instance masks); ``budget.point_disk_baseline`` = a disk
of the median training-cell area at every point CKS detects (same detections and scores as CKS,
masks replaced): CKS beating it on mask AP50 shows the collaborator taught the masks something
beyond "a blob at the point". Keys (percent): ``ap50``, ``ap75``, ``map`` (LACSS unsmoothed AP,
strict IoU > t, all test images ranked together), ``dice`` (the paper's instance Dice pooled over
the test set), ``aji``, ``loiap5`` (point-location AP at 5 px, model scale x 1/0.375), ``coco_map``.

Speed (one process, alternating rounds, median):
- ``inference_vs_maskrcnn``: LACSS inference / our Mask R-CNN's on the same dense image (MICCAI
  2015 test tile image12, 669 x 1000... the tile is read as is, scale 1), backbones of equal size
  (ResNet-18 GN; LACSS FPN 128 vs detectron2 FPN 128), both keeping as many detections as the
  tile has nuclei (LACSS: min score 0, ``MAX_OUTPUT_TEST`` = n; Mask R-CNN: score threshold 0,
  ``DETECTIONS_PER_IMAGE`` = n); untrained weights (the time does not depend on them once the
  detection count is fixed). Target 0.5 (paper: 11.6 vs 1.2 fps on a V100).
- ``step_vs_supervised``: a CKS training step / a supervised LACSS step on the same mapped ISBI
  image (AdamW), the benchmark's model. Target 1.3 (the paper: the collaborator adds very
  little). ``budget.step_seconds_paper_model``: the same with the paper-size principal.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sslseg.bench import speed_entry
from sslseg.paths import data_root, work_dir
from sslseg.proc import run_logged

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "cks" / "isbi2014_cpu.yaml"
MASKRCNN_CONFIG = REPO / "configs" / "supervised" / "synthetic_cells_demo.yaml"
DENSE_DATASET = "miccai2015_nuclei_points_test"  # image12 first
# configs/cks/Base-LACSS.yaml's model (ConvNeXt-small, FPN / LPN / segmentor 384)
PAPER_MODEL = [
    "MODEL.BACKBONE.NAME", "build_lacss_convnext_backbone",
    "MODEL.LACSS_FPN.OUT_CHANNELS", "384",
    "MODEL.CKS.LPN.CONV_DIMS", "[384, 384, 384, 384]",
    "MODEL.CKS.SEGMENTOR.CONV_DIMS", "[384, 384, 384]",
]  # fmt: skip


def add_arguments(parser):
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--warmup-frac", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--timing-rounds", type=int, default=3)


def _train(out: Path, opts, log: Path, extra_args=("--overwrite",)) -> float:
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    cmd += [*extra_args, *opts, "OUTPUT_DIR", str(out)]
    return run_logged(cmd, log, cwd=REPO, tag="bench")


def _keys(cells: dict, segm: dict) -> dict:
    out = {
        "ap50": cells["AP50"],
        "ap75": cells["AP75"],
        "map": cells["mAP"],
        "dice": cells["InstDice-pooled"],
        "aji": cells["AJI"],
        "loiap5": cells["LoiAP5"],
        "coco_map": segm["AP"],
    }
    return {k: float("nan") if v is None else float(v) for k, v in out.items()}


def _metrics(path: Path) -> dict:
    res = json.loads(path.read_text())
    return _keys(res["cells"], res["segm"])


def _median_cell_area(dataset: str) -> float:
    """Median training-cell area (pixels, original scale) of ``dataset``'s masks."""
    from detectron2.data import DatasetCatalog
    from pycocotools import mask as mask_util

    areas = [
        float(mask_util.area(a["segmentation"]))
        for d in DatasetCatalog.get(dataset)
        for a in d["annotations"]
    ]
    return float(np.median(areas))


class _PointDisks(torch.nn.Module):
    """Wraps a trained LACSS: same detections and scores, masks replaced by disks of area A."""

    def __init__(self, model, area: float):
        super().__init__()
        self.model = model
        self.radius = float(np.sqrt(area / np.pi))

    def forward(self, inputs):
        outputs = self.model(inputs)
        for out in outputs:
            inst = out["instances"]
            h, w = inst.image_size
            yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            loc = inst.pred_locations
            d2 = (xx[None] - loc[:, 0, None, None]) ** 2 + (yy[None] - loc[:, 1, None, None]) ** 2
            inst.pred_masks = d2 <= self.radius**2
            r = self.radius
            inst.pred_boxes.tensor = torch.stack(
                [loc[:, 0] - r, loc[:, 1] - r, loc[:, 0] + r, loc[:, 1] + r], 1
            ).clamp(min=0)
        return outputs


def point_disk_metrics(cfg, weights: Path, area: float, out_dir: Path) -> dict:
    """Evaluate :class:`_PointDisks` around the CKS model with the training run's evaluators."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from d2ext.evaluation import build_cell_evaluators

    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    model.eval()
    name = cfg.DATASETS.TEST[0]
    res = inference_on_dataset(
        _PointDisks(model, area),
        build_detection_test_loader(cfg, name),
        build_cell_evaluators(cfg, name, str(out_dir)),
    )
    return _keys(res["cells"], res["segm"])


def _time(fn, steps: int) -> list:
    """Seconds of ``steps`` calls of ``fn``, one each."""
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def inference_times(rounds: int, seed: int = 0):
    """Median seconds: (LACSS, Mask R-CNN) inference on the dense tile; n nuclei; image size."""
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.modeling import build_model

    from d2ext.config import build_cfg

    d = DatasetCatalog.get(DENSE_DATASET)[0]
    n = len(d["annotations"])
    image = utils.read_image(d["file_name"], format="BGR")
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    h, w = image.shape[:2]
    lacss_cfg = build_cfg(
        CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "INPUT.CKS.SCALE", "1.0",
            "MODEL.CKS.DETECTOR.MIN_SCORE_TEST", "0.0",
            "MODEL.CKS.DETECTOR.MAX_OUTPUT_TEST", str(n),
        ],
    )  # fmt: skip
    mrcnn_cfg = build_cfg(
        MASKRCNN_CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.ROI_HEADS.NUM_CLASSES", "1",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "TEST.DETECTIONS_PER_IMAGE", str(n),
            "INPUT.MIN_SIZE_TEST", str(min(h, w)),
            "INPUT.MAX_SIZE_TEST", str(max(h, w)),
        ],
    )  # fmt: skip
    torch.manual_seed(seed)
    models = {"lacss": build_model(lacss_cfg).eval(), "maskrcnn": build_model(mrcnn_cfg).eval()}
    inputs = [{"image": tensor, "height": h, "width": w}]
    kept = {}

    @torch.no_grad()
    def run(name):
        kept[name] = len(models[name](inputs)[0]["instances"])

    times = {k: [] for k in models}
    for _ in range(rounds):
        for name in models:
            run(name)  # warm-up
            times[name] += _time(lambda: run(name), 2)
    return (
        statistics.median(times["lacss"]),
        statistics.median(times["maskrcnn"]),
        {"nuclei": n, "image_hw": [h, w], "detections_kept": kept},
    )


def step_times(rounds: int, seed: int = 0, opts=()):
    """Median seconds of a CKS and a supervised LACSS training step on the same image
    (``opts``: config overrides, e.g. the paper-size model)."""
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from d2ext.cks import CKSDatasetMapper, CKSTrainer
    from d2ext.config import build_cfg

    steps = {}
    for mode in ("points", "supervised"):
        cfg = build_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.CKS.MODE", mode, *opts])
        torch.manual_seed(seed)
        model = build_model(cfg).train()
        opt = CKSTrainer.build_optimizer(cfg, model)
        np.random.seed(seed)
        record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
        batch = [CKSDatasetMapper(cfg.clone(), True)(record)]

        def step(model=model, opt=opt, batch=batch):
            with EventStorage(10**6):  # after the warm-up
                losses = model(batch)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()

        steps[mode] = step
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for mode, step in steps.items():
            step()
            times[mode] += _time(step, 2)
    return statistics.median(times["points"]), statistics.median(times["supervised"])


def _train_seed(out: Path, opts, seed: int) -> dict:
    opts = opts + ["SEED", str(seed)]
    t_sup = _train(
        out / "supervised", opts + ["MODEL.CKS.MODE", "supervised"], out / "supervised.log"
    )
    t_cks = _train(out / "cks", opts + ["MODEL.CKS.MODE", "points"], out / "cks.log")
    return {
        "cks": _metrics(out / "cks" / "final_metrics.json"),
        "supervised": _metrics(out / "supervised" / "final_metrics.json"),
        "train_seconds": {"cks": t_cks, "supervised": t_sup},
        "weights": out / "cks" / "model_final.pth",
        "opts": opts,
    }


def _mean(runs, key):
    names = runs[0][key]
    return {k: statistics.fmean(r[key][k] for r in runs) for k in names}


def run(args):
    root = data_root(must_exist=True)
    for sub in ("isbi2014_cervical", "miccai2015_nuclei"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub} not found (CKS benchmark data)")
    out = work_dir("bench/cks")
    iters = args.iterations
    opts = [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", str(iters),
        "MODEL.CKS.LOSS.WARMUP_ITERS", str(int(round(args.warmup_frac * iters))),
        "TEST.EVAL_PERIOD", "0",
    ]  # fmt: skip
    seeds = list(dict.fromkeys(args.seeds))
    runs = [_train_seed(out if i == 0 else out / f"seed{s}", opts, s) for i, s in enumerate(seeds)]

    from d2ext.config import build_cfg
    from d2ext.data import set_data_root

    set_data_root(str(root))
    cfg = build_cfg(CONFIG, runs[0]["opts"] + ["MODEL.DEVICE", "cpu"])
    area = _median_cell_area(cfg.DATASETS.TRAIN[0])
    disks = [
        point_disk_metrics(cfg, r["weights"], area, out / f"point_disks_seed{s}")
        for r, s in zip(runs, seeds)
    ]
    t_lacss, t_mrcnn, dense = inference_times(args.timing_rounds, seeds[0])
    s_cks, s_sup = step_times(args.timing_rounds, seeds[0])
    # the same with the paper-size principal (ConvNeXt-small, 384 channels): the collaborator's
    # cost is fixed, so its share depends on the principal's size
    s_cks_paper, s_sup_paper = step_times(1, seeds[0], PAPER_MODEL)
    ours, baseline = _mean(runs, "cks"), _mean(runs, "supervised")
    disk = {k: statistics.fmean(d[k] for d in disks) for k in disks[0]}
    return {
        "method": "CKS (LACSS trained from points with the collaborator)",
        "dataset": "isbi2014_cervical (whole cells, nucleus-derived points)",
        "split": "train images 1-35, test 36-45; scale 0.375",
        "budget": {
            "trained_from_scratch": True,
            "iterations": iters,
            "warmup_iterations": int(round(args.warmup_frac * iters)),
            "model": "ResNet-18 GN + LACSS FPN 128, LPN 4x128 (p2-p4), segmentor 3x128+64",
            "images_per_step": 1,
            "seeds": seeds,
            "evaluated": "final checkpoints; metrics = mean over seeds",
            "point_disk_baseline": disk,
            "point_disk_area_px": area,
            "ap50_ratio_cks_vs_supervised": (
                ours["ap50"] / baseline["ap50"] if baseline["ap50"] else float("nan")
            ),
            "per_seed": {
                str(s): {k: r[k] for k in ("cks", "supervised", "train_seconds")}
                | {"point_disks": d}
                for s, r, d in zip(seeds, runs, disks)
            },
            "dense_image": dense,
            "inference_seconds": {"lacss": t_lacss, "maskrcnn": t_mrcnn},
            "step_seconds": {"cks": s_cks, "supervised": s_sup},
            "step_seconds_paper_model": {
                "cks": s_cks_paper,
                "supervised": s_sup_paper,
                "ratio": s_cks_paper / s_sup_paper,
            },
            "overrides": opts,
        },
        "metrics": ours,
        "baseline_metrics": baseline,
        "speed": {
            "inference_vs_maskrcnn": speed_entry(t_lacss, t_mrcnn, 0.5, unit="x"),
            "step_vs_supervised": speed_entry(s_cks, s_sup, 1.3, unit="x"),
        },
    }
