"""Shared parts of the bundle benchmarks (dmd_acdc, dmd_la, cdma_glas): bundle runs, metrics,
step timing.

Accuracy: the supervised baseline and DMD are trained through the bundle, exactly as a user runs
it (``python -m monai.bundle run``), on the same data, seed and iterations, then scored by the
bundle's evaluation; the metrics come from the ``metrics.json`` it writes.

Speed: ``step_times`` drives the real ``DMDTrainer`` and a one-network ``SupervisedTrainer`` on
the SAME batch (labeled + unlabeled images; the supervised step runs network 1 on all of them),
alternating A/B rounds in one process so machine noise hits both; per-iteration times come from
ignite's ITERATION_STARTED/COMPLETED events. The floor of the ratio is 2.0 (two networks).

End to end: the bundle's supervised baseline trains network 1 on the LABELED images only, so the
floor of the training-seconds ratio DMD / baseline is not 2.0 but ``wall_floor`` = 2 x (one
network on labeled + unlabeled) / (one network on labeled), both measured by ``step_times``;
``wall_vs_floor`` = (DMD training s / baseline training s) / that floor: above 1, DMD's run
loses time outside the networks (data loading, handlers) that the baseline's does not.
"""

import json
import statistics
import time
from pathlib import Path

import torch
from ignite.engine import Events

from monai_bundles.common.command import bundle_run_command
from sslseg.proc import run_logged

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "monai_bundles" / "dmd" / "configs"


def bundle_run(configs, overrides: dict, log: Path, configs_dir: Path = CONFIGS) -> float:
    """``python -m monai.bundle run`` with ``configs`` (names in ``configs_dir``, the dmd configs
    folder by default) and ``--key value`` overrides; output to ``log``; returns the wall time;
    raises on failure."""
    return run_logged(
        bundle_run_command([Path(configs_dir) / c for c in configs], overrides),
        log,
        cwd=REPO,
        tag="bench",
    )


def train_and_score(configs, cfg: dict, out: Path, name: str, configs_dir: Path = CONFIGS):
    """Train ``configs`` with the overrides ``cfg`` (checkpoints in ``out/name/models``), then
    score its FINAL checkpoint with ``evaluate.json`` (``out/name/eval``; no checkpoint
    selection). Logs: ``out/<name>_train.log``, ``out/<name>_eval.log``. Returns (mean metrics
    as :func:`read_metrics`, training wall seconds)."""
    out = Path(out)
    ckpt, evald = out / name / "models", out / name / "eval"
    run_cfg = {**cfg, "ckpt_dir": str(ckpt), "output_dir": str(evald)}
    seconds = bundle_run(configs, run_cfg, out / f"{name}_train.log", configs_dir)
    bundle_run(
        [*configs, "evaluate.json"],
        {**run_cfg, "eval_checkpoint": str(ckpt / "checkpoint_final.pt")},
        out / f"{name}_eval.log",
        configs_dir,
    )
    return read_metrics(evald), seconds


def read_metrics(output_dir: Path, keys=("dice_mean", "jaccard_mean", "hd95_mean", "asd_mean")):
    """The bundle evaluation's mean metrics; Dice and Jaccard in percent."""
    path = Path(output_dir) / "metrics.json"
    mean = json.loads(path.read_text())["mean"]
    missing = [k for k in keys if mean.get(k) is None]
    if missing:
        raise ValueError(f"{path}: mean metrics {missing} missing or NaN (an empty prediction?)")
    return {
        k: (100.0 * mean[k] if k.startswith(("dice", "jaccard")) else float(mean[k])) for k in keys
    }


class _IterTimer:
    """Per-iteration wall times of an ignite engine."""

    def __init__(self, engine):
        self.times, self._t0 = [], None
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop)

    def _start(self, _):
        self._t0 = time.perf_counter()

    def _stop(self, _):
        self.times.append(time.perf_counter() - self._t0)


def wall_floor(one_network_s: float, labeled_only_s: float) -> float:
    """Floor of the training-seconds ratio DMD / supervised baseline: two networks on labeled +
    unlabeled images vs. one network on the labeled ones (the baseline's own step)."""
    return 2.0 * one_network_s / labeled_only_s


def wall_speed(train_s: dict, one_network_s: float, labeled_only_s: float, target=1.15):
    """``wall_vs_floor`` speed entry: training seconds ratio (``train_s`` of ``dmd`` and
    ``supervised``) against :func:`wall_floor`."""
    from sslseg.bench import speed_entry

    return speed_entry(
        train_s["dmd"] / train_s["supervised"],
        wall_floor(one_network_s, labeled_only_s),
        target,
        unit="x",
    )


def step_times(make_net, images_l, label, images_u, sup_loss, rounds=2, steps=2):
    """Median seconds per iteration: (DMD step, one-network supervised step on the same batch,
    one-network supervised step on the labeled images only: the baseline bundle's step).

    Args:
        make_net: () -> a freshly initialised network (called for net1 and net2).
        images_l, label: labeled batch (B_l, C, *spatial), (B_l, 1, *spatial).
        images_u: unlabeled batch (B_u, C, *spatial).
        sup_loss: supervised loss (logits, label) -> scalar.
        rounds, steps: A/B rounds, timed iterations per round (one untimed warm-up each).
    """
    from monai.engines import SupervisedTrainer

    from monai_bundles.dmd.losses import DMDLoss
    from monai_bundles.dmd.trainer import DMDTrainer

    net1, net2 = make_net(), make_net()
    dmd_batch = {"labeled": {"image": images_l, "label": label}, "unlabeled": {"image": images_u}}
    # The supervised step runs network 1 on the same images with the loss on the labeled part:
    # network 1's path inside the DMD step, so the ratio's floor is exactly 2 networks.
    n_l = images_l.shape[0]
    sup_batch = {"image": torch.cat([images_l, images_u]), "label": label}
    labeled_batch = {"image": images_l, "label": label}

    def sup_loss_labeled(pred, target):
        return sup_loss(pred[:n_l], target)

    def sup_run(batch, loss_function):
        opt1 = torch.optim.SGD(net1.parameters(), lr=1e-3, momentum=0.9)
        sup = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            epoch_length=steps + 1,
            train_data_loader=[batch] * (steps + 1),
            network=net1,
            optimizer=opt1,
            loss_function=loss_function,
        )
        timer = _IterTimer(sup)
        sup.run()
        return timer.times[1:]

    dmd_t, sup_t, lab_t = [], [], []
    for _ in range(rounds):
        opt = torch.optim.SGD(
            list(net1.parameters()) + list(net2.parameters()), lr=1e-3, momentum=0.9
        )
        dmd = DMDTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            epoch_length=steps + 1,
            train_data_loader=[dmd_batch] * (steps + 1),
            network1=net1,
            network2=net2,
            optimizer=opt,
            sup_loss_function=sup_loss,
            distill_loss_function=DMDLoss(),
            lambda_distill=4.0,
        )
        timer = _IterTimer(dmd)
        dmd.run()
        dmd_t += timer.times[1:]
        sup_t += sup_run(sup_batch, sup_loss_labeled)
        lab_t += sup_run(labeled_batch, sup_loss)
    return statistics.median(dmd_t), statistics.median(sup_t), statistics.median(lab_t)
