#!/usr/bin/env python
"""``make demo``: every method that exists so far, end to end on synthetic data, one table.

Each entry trains briefly from scratch and evaluates through the same entry points a user runs
(``tools/train_net.py`` for Detectron2, ``python -m monai.bundle run`` for MONAI bundles), then the
metrics are read back from the files those runs wrote. Synthetic data is generated (seeded) under
the work directory; nothing real is needed. A few minutes on 2 CPU cores.

Reproducible on one machine: every run is seeded, each row first deletes what an earlier demo run
left in its output folders (nothing is resumed or reused; the seeded synthetic sets are
regenerated or re-read byte-identical), the runs get the deterministic-algorithm settings below,
and the table leaves out wall times (printed on a separate line). Across machines the figures
move (other CPU, other kernels): see the README. The table is also written as JSON with the commit
and date (``results/demo.json``; ``tools/results_tables.py --publish demo`` puts it in the README).

    python tools/demo.py                        # every row
    python tools/demo.py --only unet,dmd        # some rows
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from sslseg.bench import provenance
from sslseg.io import write_json_atomic
from sslseg.proc import CommandFailed, run_logged

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
# For every run: cuBLAS's deterministic workspace (GPU), and the flag sslseg.determinism reads
# to turn on torch.use_deterministic_algorithms / cudnn.deterministic in the entry points.
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "SSLSEG_DETERMINISTIC": "1"}


def _fresh(*folders: Path) -> None:
    """Delete what an earlier demo run left in ``folders`` (never resumed or reused)."""
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


def _run(cmd, log: Path) -> float:
    """Run ``cmd`` from the repo root, output to ``log``; return seconds; exit on failure."""
    try:
        return run_logged(cmd, log, cwd=REPO, tag="demo", tail_lines=30)
    except CommandFailed as e:
        sys.exit(str(e))


def _train_net(cfg: str, odir: Path, opts, log: Path):
    """``tools/train_net.py`` run; returns (cell metrics of final_metrics.json, seconds)."""
    _fresh(odir)
    dt = _run([PY, "tools/train_net.py", "--config-file", cfg, "OUTPUT_DIR", odir, *opts], log)
    res = json.loads((odir / "final_metrics.json").read_text())
    segm, cells = res.get("segm", {}), res.get("cells", {})
    metrics = {
        "mask mAP": segm.get("AP"),
        "mask AP50": segm.get("AP50"),
        "AJI": cells.get("AJI"),
        "inst. Dice": cells.get("InstDice"),
    }
    return metrics, dt


def demo_maskrcnn(out: Path, iters: int):
    """Supervised Mask R-CNN (R-18 FPN, 256 px) on synthetic overlapping cells."""
    metrics, dt = _train_net(
        "configs/supervised/synthetic_cells_demo.yaml",
        out / "maskrcnn_supervised",
        ["SOLVER.MAX_ITER", iters],
        out / "logs" / "maskrcnn_supervised.log",
    )
    return (
        "Mask R-CNN (supervised)",
        "Detectron2",
        "synthetic cells (8 train / 4 test)",
        metrics,
        dt,
        f"{iters} iters",
    )


def demo_mmt_psm(out: Path, iters: int):
    """MMT-PSM (student + EMA teacher, same R-18 model) on the same cells plus 8 unlabeled
    images: labeled-only burn-in for the first half, then the full method; the teacher is
    evaluated."""
    half = iters // 2
    opts = [
        "SOLVER.MAX_ITER",
        iters,
        "SOLVER.STEPS",
        f"({int(0.75 * iters)},)",
        "MODEL.MMT_PSM.BURN_IN_ITERS",
        half,
        "MODEL.MMT_PSM.EMA_START_ITER",
        half - 1,
        "MODEL.MMT_PSM.RAMP_UP_ITERS",
        max(1, iters // 6),
        "MODEL.MMT_PSM.RAMP_DOWN_ITERS",
        max(1, iters // 6),
    ]
    metrics, dt = _train_net(
        "configs/mmt_psm/synthetic_cells_demo.yaml",
        out / "mmt_psm",
        opts,
        out / "logs" / "mmt_psm.log",
    )
    return (
        "MMT-PSM (teacher)",
        "Detectron2",
        "synthetic cells (8 lab. + 8 unlab. / 4 test)",
        metrics,
        dt,
        f"{iters} iters ({half} burn-in)",
    )


def demo_cks(out: Path, iters: int):
    """CKS: a tiny LACSS (R-18 + LACSS FPN 64) trained from one point per cell (the nucleus
    centroid) with the collaborator; the masks were never seen in training."""
    odir = out / "cks"
    warmup = max(1, iters // 10)
    opts = ["SOLVER.MAX_ITER", iters, "SOLVER.CHECKPOINT_PERIOD", iters]
    opts += ["MODEL.CKS.LOSS.WARMUP_ITERS", warmup]
    metrics, dt = _train_net(
        "configs/cks/synthetic_demo.yaml", odir, opts, out / "logs" / "cks.log"
    )
    cells = json.loads((odir / "final_metrics.json").read_text())["cells"]
    metrics["LoiAP5"] = cells.get("LoiAP5")
    return (
        "CKS (LACSS from points)",
        "Detectron2",
        "synthetic cells, 1 point/cell (8 train / 4 test)",
        metrics,
        dt,
        f"{iters} iters ({warmup} warm-up)",
    )


def _synthetic_slices(out: Path) -> tuple:
    """The synthetic ACDC-like set both 2D bundles use: (folder, datalist)."""
    from sslseg.datasets.synthetic import make_slices

    data = out / "data" / "slices"
    _fresh(data)
    return data, make_slices(
        data, num_volumes=6, depth=8, size=64, num_classes=4, seed=0, num_labeled=2
    )


def _bundle_command(configs, overrides: dict) -> list:
    from monai_bundles.common.command import bundle_run_command

    return bundle_run_command(configs, overrides)


def _bundle(configs, overrides: dict, log: Path) -> float:
    return _run(_bundle_command(configs, overrides), log)


def _semantic_metrics(eval_dir: Path) -> dict:
    """Mean metrics of a bundle evaluation's metrics.json (Dice/Jaccard in percent)."""
    agg = json.loads((eval_dir / "metrics.json").read_text())["mean"]
    return {
        "Dice %": 100 * agg["dice_mean"],
        "Jaccard %": 100 * agg["jaccard_mean"],
        "HD95 vox": agg["hd95_mean"],
        "ASD vox": agg["asd_mean"],
    }


def demo_unet(out: Path, epochs: int):
    """Supervised 2D UNet bundle on synthetic ACDC-like slices, scored per 3D volume."""
    data, datalist = _synthetic_slices(out)
    _fresh(out / "unet")
    cfg = "monai_bundles/supervised_unet/configs"
    common = {
        "dataset_dir": data,
        "datalist": datalist,
        "ckpt_dir": out / "unet" / "models",
        "output_dir": out / "unet" / "eval",
        "patch_size": [64, 64],
        "batch_size": 8,
        "num_workers": 0,
    }
    dt = _bundle(
        [f"{cfg}/train.json"],
        {**common, "max_epochs": epochs, "val_interval": epochs},
        out / "logs" / "unet_train.log",
    )
    dt += _bundle(
        [f"{cfg}/train.json", f"{cfg}/evaluate.json"], common, out / "logs" / "unet_evaluate.log"
    )
    return (
        "UNet 2D (supervised)",
        "MONAI bundle",
        "synthetic ACDC-like (2 lab. vol, 2 val vol)",
        _semantic_metrics(out / "unet" / "eval"),
        dt,
        f"{epochs} epochs",
    )


def demo_dmd(out: Path, iterations: int):
    """DMD (two 2D U-Nets, mutual distillation) on the same synthetic ACDC-like data, with the
    labeled and unlabeled slices, scored per volume like the supervised UNet above."""
    data, datalist = _synthetic_slices(out)
    _fresh(out / "dmd")
    cfg = "monai_bundles/dmd/configs"
    train = [f"{cfg}/train.json", f"{cfg}/train_acdc.json"]
    common = {
        "dataset_dir": data,
        "datalist": datalist,
        "ckpt_dir": out / "dmd" / "models",
        "output_dir": out / "dmd" / "eval",
        "patch_size": [64, 64],
        "labeled_batch_size": 4,
        "unlabeled_batch_size": 4,
        "num_workers": 0,
    }
    dt = _bundle(
        train,
        {
            **common,
            "max_iterations": iterations,
            "epoch_length": iterations,
            "lr_step": iterations,
            "val_interval": 1,
        },
        out / "logs" / "dmd_train.log",
    )
    dt += _bundle(
        [*train, f"{cfg}/evaluate.json"],
        {**common, "eval_checkpoint": out / "dmd" / "models" / "checkpoint_final.pt"},
        out / "logs" / "dmd_evaluate.log",
    )
    return (
        "DMD (2 x U-Net 2D)",
        "MONAI bundle",
        "synthetic ACDC-like (2 lab. + 2 unlab. vol)",
        _semantic_metrics(out / "dmd" / "eval"),
        dt,
        f"{iterations} iters",
    )


def demo_cdma(out: Path, iterations: int):
    """CDMA (one MTNet, three attention decoders) on synthetic H&E-like patches: 4 labeled and
    8 unlabeled 96 px patches, scored on 2 held-out patches by sliding window (CSA branch), the
    final checkpoint (evaluate.json's default)."""
    from sslseg.datasets.synthetic import make_binary_patches

    data = out / "data" / "patches"
    _fresh(data, out / "cdma")
    datalist = make_binary_patches(data, num=16, size=96, seed=0, num_labeled=4)
    cfg = "monai_bundles/cdma/configs"
    common = {
        "dataset_dir": data,
        "datalist": datalist,
        "ckpt_dir": out / "cdma" / "models",
        "output_dir": out / "cdma" / "eval",
        "encoder": "resnet18",
        "decoder_channels": 32,
        "patch_size": [64, 64],
        "labeled_batch_size": 4,
        "unlabeled_batch_size": 4,
        "max_iterations": iterations,
        "epoch_length": iterations,
        # one lr drop near the end: the paper's two (1/3, 2/3) leave too few iterations at the
        # full lr at this budget (the predictions stay background)
        "lr_milestones": [0.9],
        "num_workers": 0,
    }
    dt = _bundle(
        [f"{cfg}/train.json"], {**common, "val_interval": 1}, out / "logs" / "cdma_train.log"
    )
    dt += _bundle(
        [f"{cfg}/train.json", f"{cfg}/evaluate.json"], common, out / "logs" / "cdma_evaluate.log"
    )
    return (
        "CDMA (MTNet, 3 attention decoders)",
        "MONAI bundle",
        "synthetic H&E-like (4 lab. + 8 unlab. patches)",
        _semantic_metrics(out / "cdma" / "eval"),
        dt,
        f"{iterations} iters",
    )


def demo_atso(out: Path, iterations: int):
    """ATSO, the whole procedure (M0, two generations of two fold students, final model) on
    synthetic LA-like volumes: 2 labeled, 7 unlabeled (two folds), 1 test volume; three views,
    fused; the final model scored on the test volume."""
    from monai_bundles.atso.data import with_reference_labels
    from sslseg.datasets.synthetic import make_volumes

    data = out / "data" / "atso_volumes"
    _fresh(data, out / "atso")
    datalist = make_volumes(data, num=10, shape=(48, 48, 32), seed=0, num_labeled=2)
    with_ref = with_reference_labels(json.loads(Path(datalist).read_text()), str(data))
    write_json_atomic(with_ref, data / "datalist_atso.json")
    cmd = _bundle_command(
        ["monai_bundles/atso/configs/train.json"],
        {
            "dataset_dir": data,
            "datalist": data / "datalist_atso.json",
            "run_dir": out / "atso",
            "m0_iterations": iterations,
            "generation_iterations": iterations // 2,
            "generations": 2,
            "epoch_length_max": 50,
            "slice_size": [48, 48],
            "num_workers": 0,
        },
    )
    cmd[cmd.index("run") + 1 : cmd.index("run") + 1] = [
        "--workflow_name",
        "monai_bundles.atso.workflow.ATSOWorkflow",
    ]
    dt = _run(cmd, out / "logs" / "atso.log")
    return (
        "ATSO (3 views x UNet2D, 2 folds)",
        "MONAI bundle",
        "synthetic LA-like (2 lab. + 7 unlab. volumes)",
        _semantic_metrics(out / "atso" / "final" / "eval"),
        dt,
        f"M0 {iterations} + 2 gen. x {iterations // 2} iters",
    )


def _fmt_metrics(m):
    return ", ".join(
        f"{k} {v:.1f}" if isinstance(v, (int, float)) else f"{k} n/a" for k, v in m.items()
    )


ROWS = {
    "maskrcnn": ("maskrcnn_iters", demo_maskrcnn),
    "mmt_psm": ("mmt_psm_iters", demo_mmt_psm),
    "unet": ("unet_epochs", demo_unet),
    "dmd": ("dmd_iterations", demo_dmd),
    "cdma": ("cdma_iterations", demo_cdma),
    "atso": ("atso_iterations", demo_atso),
    "cks": ("cks_iters", demo_cks),
}
HEADER = ("method", "framework", "dataset", "metrics (held-out images)", "budget")


def format_table(rows) -> str:
    """The printed table: one line per row, no wall times (they differ from run to run)."""
    table = [HEADER] + [
        (r["method"], r["framework"], r["dataset"], _fmt_metrics(r["metrics"]), r["budget"])
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(HEADER))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "work" / "demo"), help="output folder")
    ap.add_argument("--only", default="", help=f"comma-separated rows of {list(ROWS)}; default all")
    ap.add_argument(
        "--json",
        default=str(REPO / "results" / "demo.json"),
        help="where to write the table as JSON (with commit and date)",
    )
    ap.add_argument("--maskrcnn-iters", type=int, default=60)
    ap.add_argument("--mmt-psm-iters", type=int, default=60)
    ap.add_argument("--unet-epochs", type=int, default=60)
    ap.add_argument("--dmd-iterations", type=int, default=150)
    ap.add_argument("--cdma-iterations", type=int, default=150)
    ap.add_argument("--atso-iterations", type=int, default=200)
    ap.add_argument("--cks-iters", type=int, default=800)
    args = ap.parse_args()
    chosen = [n for n in args.only.split(",") if n] or list(ROWS)
    unknown = [n for n in chosen if n not in ROWS]
    if unknown:
        sys.exit(f"unknown demo row(s) {unknown}; available: {list(ROWS)}")
    out = Path(args.out).resolve()
    os.environ.setdefault("SSLSEG_WORK", str(out.parent))
    os.environ.update(DETERMINISTIC_ENV)
    rows = []
    for name in chosen:
        budget_arg, fn = ROWS[name]
        method, framework, dataset, metrics, seconds, budget = fn(out, getattr(args, budget_arg))
        rows.append(
            {
                "row": name,
                "method": method,
                "framework": framework,
                "dataset": dataset,
                "metrics": metrics,
                "budget": budget,
                "seconds": round(seconds, 1),
            }
        )
    print("\n" + format_table(rows))
    print("\nwall time: " + ", ".join(f"{r['row']} {r['seconds']:.0f} s" for r in rows))
    print(
        "\nTrained from scratch on synthetic data for a short CPU budget: the figures show the "
        "pipelines work end to end, not what the methods reach; rows differ in trainer, loss "
        "and budget, so they are not a comparison of methods (see `make bench` for that)."
    )
    import torch  # after the runs: only to record the thread count they used

    res = {
        "name": "demo",
        **provenance(REPO),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    write_json_atomic(res, Path(args.json), indent=2)
    print(
        f"\n[demo] table written to {args.json} (publish: python tools/results_tables.py "
        f"--publish demo)"
    )


if __name__ == "__main__":
    main()
