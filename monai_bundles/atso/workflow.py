"""``ATSOWorkflow``: the whole procedure (M0, generations, final model, evaluations) in one command.

::

    python -m monai.bundle run --workflow_name monai_bundles.atso.workflow.ATSOWorkflow \\
        --config_file monai_bundles/atso/configs/train.json [--method stso ...]

It takes the same config files and overrides as a single step and runs every step of
``@atso_run`` in order, each as a fresh child ``ConfigWorkflow`` with ``--step <id>``: train steps
with the given files, label steps with ``pseudolabel.json`` appended, eval steps with
``evaluate.json`` appended. Every child builds its own datasets (pseudo labels change between
steps), and every user override reaches every step. Steps the ledger calls done are skipped, so
the same command resumes an interrupted run (the interrupted training step continues from its
newest checkpoint). ``summary.json`` gathers @R / @E per generation and the DSC between the final
model's and M0's test predictions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import ignite.distributed as idist
import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from monai.utils import ensure_tuple

from sslseg.io import write_json_atomic
from sslseg.metrics.semantic import compute_case_metrics

from . import BUNDLE_ROOT

logger = logging.getLogger(__name__)

CONFIGS = Path(BUNDLE_ROOT) / "configs"
STEP_CONFIG = {"label": CONFIGS / "pseudolabel.json", "eval": CONFIGS / "evaluate.json"}


class ATSOWorkflow(ConfigWorkflow):
    """The whole ATSO procedure (or a baseline's: ``--method``) as one MONAI bundle workflow.

    Args: those of ``ConfigWorkflow``; ``override`` are the config overrides (CLI ``--key v``).
    ``stop_after``: (tests) stop after that step id, as if the run were interrupted there.
    """

    def __init__(
        self,
        config_file: str | Sequence[str],
        meta_file: str | Sequence[str] | None = None,
        logging_file: str | bool | None = None,
        workflow_type: str | None = "train",
        stop_after: str = "",
        **override: Any,
    ) -> None:
        files = [str(f) for f in ensure_tuple(config_file)]
        super().__init__(
            config_file=files,
            meta_file=meta_file,
            logging_file=logging_file,
            workflow_type=workflow_type,
            **override,
        )
        self.files = files
        self.meta = meta_file
        self.override = {k: v for k, v in override.items() if k != "step"}
        self.stop_after = stop_after

    def _step_config(self, kind: str) -> str:
        """The bundle's pseudolabel/evaluate config, named like the first config file (same
        folder spelling, so MONAI finds every file in one config root)."""
        path = STEP_CONFIG[kind]
        first = Path(self.files[0])
        if first.resolve().parent == CONFIGS.resolve():
            return str(first.parent / path.name)
        return str(path)

    def run(self) -> Any:
        atso_run = self.parser.get_parsed_content("atso_run")
        for step in atso_run.steps():
            if atso_run.is_done(step.id):
                logger.info(f"ATSO {step.id}: done (ledger), skipped")
            else:
                files = self.files + (
                    [self._step_config(step.kind)] if step.kind in STEP_CONFIG else []
                )
                logger.info(f"ATSO {step.id}: {step.kind} step ({', '.join(map(str, files))})")
                child = ConfigWorkflow(
                    config_file=files,
                    meta_file=self.meta or str(CONFIGS / "metadata.json"),
                    logging_file=False,
                    workflow_type="train",
                    step=step.id,
                    **self.override,
                )
                child.initialize()
                child.run()
                child.finalize()
            if step.id == self.stop_after:
                logger.info(f"ATSO: stopped after {step.id} (stop_after)")
                return None
        if idist.get_rank() != 0:
            return None
        return write_summary(atso_run)

    def finalize(self) -> Any:
        """The config's ``finalize``, then the end of a multi-process run's process group (the
        steps share it: one ``init_process_group`` per process)."""
        out = super().finalize()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return out


def _pred_dice(dir_a: Path, dir_b: Path, num_classes: int) -> float | None:
    """Mean over cases of the foreground Dice between two folders of saved predictions."""
    files = sorted(dir_a.glob("*.npz"))
    if not files or not dir_b.is_dir():
        return None
    scores = []
    for f in files:
        other = dir_b / f.name
        if not other.is_file():
            return None
        a, b = np.load(f)["label"], np.load(other)["label"]
        scores.append(
            compute_case_metrics(a, b, max(num_classes, int(max(a.max(), b.max())) + 1))[
                "dice_mean"
            ]
        )
    return float(np.nanmean(scores))


def write_curves(curves_by_method: dict, stem: Path) -> None:
    """``<stem>.csv`` (method, generation, @R, @E; Dice in [0, 1]) and ``<stem>.png``: @R and
    @E per generation, one line per method (the paper's Table 1 as curves)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslseg.io import atomic_open

    rows = []
    for method, curves in curves_by_method.items():
        gens = sorted({*curves.get("R", {}), *curves.get("E", {})}, key=lambda g: int(g[1:]))
        rows += [(method, g, curves.get("R", {}).get(g), curves.get("E", {}).get(g)) for g in gens]
    with atomic_open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "generation", "dice_R", "dice_E"])
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in zip(axes, ("R", "E"), ("@R: pseudo labels on R", "@E: test")):
        for method, curves in curves_by_method.items():
            points = sorted(curves.get(key, {}).items(), key=lambda kv: int(kv[0][1:]))
            if points:
                ax.plot([int(g[1:]) for g, _ in points], [v for _, v in points], "o-", label=method)
        ax.set(title=title, xlabel="generation", ylabel="Dice")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    with atomic_open(f"{stem}.png", "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_summary(atso_run) -> dict:
    """``<run_dir>/summary.json`` (and ``curves.csv`` / ``curves.png``): per generation @R
    (pseudo labels on R) and @E (test Dice of that generation's model, or the fold students'
    ensemble), the final model's test metrics, the DSC between its test predictions and M0's
    (``dsc_vs_m0``), seconds and iterations."""
    ledger = atso_run.read_ledger()["steps"]
    curves = {"R": {}, "E": {}}
    for sid, entry in ledger.items():
        gen = sid.split("/")[0]
        if entry.get("kind") == "label" and entry.get("dice_R") is not None:
            # labels of g{g} are made by round g-1's models: row G_{g-1} (paper Table 1)
            curves["R"][f"G{int(gen[1:]) - 1}"] = entry["dice_R"]
        if entry.get("kind") == "eval" and entry.get("dice_E") is not None:
            if sid == "final/eval":  # one fold: the round-T student is the final model
                if atso_run.num_folds == 1:
                    curves["E"][f"G{atso_run.generations}"] = entry["dice_E"]
            else:
                curves["E"][f"G{int(gen[1:])}"] = entry["dice_E"]
    final_metrics = None
    metrics_file = atso_run.step_dir("final/eval") / "metrics.json"
    if metrics_file.is_file():
        import json

        final_metrics = json.loads(metrics_file.read_text())["mean"]
    train_steps = [s for s in atso_run.steps() if s.kind == "train"]
    summary = dict(
        method=atso_run.method,
        generations=atso_run.generations,
        num_folds=atso_run.num_folds,
        final_model=atso_run.final_model,
        final_metrics=final_metrics,
        curves=curves,
        dsc_vs_m0=(
            None
            if atso_run.method == "supervised"
            else _pred_dice(
                atso_run.step_dir("final/eval") / "pred",
                atso_run.step_dir("g00/eval") / "pred",
                2,
            )
        ),
        iterations={s.id: ledger.get(s.id, {}).get("iterations") for s in train_steps},
        seconds={sid: e.get("seconds") for sid, e in ledger.items()},
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    path = atso_run.run_dir / "summary.json"
    write_json_atomic(summary, path, indent=1)
    write_curves({atso_run.method: curves}, atso_run.run_dir / "curves")
    logger.info(f"ATSO: summary -> {path}: final {final_metrics}")
    return summary


__all__ = ["ATSOWorkflow", "write_summary"]
