"""Shared parts of the ATSO benchmarks (atso_acdc, atso_la): one M0, four methods, one JSON.

Protocol: M0 is trained once through the bundle (``--method supervised``: M0 and its test
metrics); then self-learning, STSO and ATSO each run the whole procedure through the bundle as
a user does (``python -m monai.bundle run --workflow_name ...ATSOWorkflow``), starting from that
same M0 (``--m0_checkpoint``), with the same data, seed and iterations per generation. Reported:
the FINAL model of each method at the pre-declared T (no selection on the test set), the @R / @E
curves per generation, the DSC between each final model's and M0's test predictions (the
paper's lazy-mimicking measure), and the seconds and optimizer steps of every step (ledger).

Speed: ``generation_vs_self_learning`` = seconds of an ATSO generation (label step + both fold
students) / a self-learning generation's (label step + student), from the ledgers, means over
generations (target 1.10: the paper says they cost the same; proportional fold budgets make
the floor about 1.0). ``pseudolabel_vs_loop`` = pseudo-labelling reference cases with the
bundle's ``MultiViewInferer`` (windows of many slices batched, BatchNorm-folded inference copy)
/ a plain per-slice loop (``multiview.per_slice_loop_inference``: one slice, one window at a
time), same M0 weights, outputs equal within 1e-5 (target 0.67).
"""

import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from monai_bundles.common.command import bundle_run_command
from sslseg.bench import speed_entry
from sslseg.proc import run_logged

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "monai_bundles" / "atso" / "configs"
WORKFLOW = "monai_bundles.atso.workflow.ATSOWorkflow"
METHODS = ("self_learning", "stso", "atso")
KEYS = ("dice_mean", "jaccard_mean", "hd95_mean", "asd_mean")


def add_common_arguments(parser, m0: int, generation: int, size: int) -> None:
    """The budget arguments both benchmarks take (their defaults differ)."""
    parser.add_argument("--m0-iterations", type=int, default=m0)
    parser.add_argument("--generation-iterations", type=int, default=generation)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--size", type=int, default=size, help="training crop / window size")


def fresh_work_dir(name: str, data_folder: str):
    """``(data root, empty work folder)``; a missing data folder is named."""
    from sslseg.paths import data_root, work_dir

    root = data_root(must_exist=True)
    if not (root / data_folder).is_dir():
        raise FileNotFoundError(f"{root / data_folder} not found (../shared/data/README)")
    out = work_dir(f"bench/{name}")
    for old in out.iterdir():  # this benchmark's own earlier runs
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return root, out


def common_overrides(args, dataset_dir) -> dict:
    """The bundle overrides every method of a benchmark gets."""
    return {
        "dataset_dir": str(dataset_dir),
        "seed": args.seed,
        "m0_iterations": args.m0_iterations,
        "generation_iterations": args.generation_iterations,
        "epoch_length_max": 100,
        "slice_size": [args.size, args.size],
        "num_workers": 0,  # on 2 cores a loader worker competes with the training threads
    }


def budget(args, **extra) -> dict:
    """The JSON's ``budget`` entry: iterations, seed, and what the benchmark adds."""
    return {
        "m0_iterations": args.m0_iterations,
        "generation_iterations": args.generation_iterations,
        "fold_budget": "proportional",
        "final_iterations": args.generation_iterations,
        "generations": args.generations,
        "seed": args.seed,
        "trained_from_scratch": "every network, no pretrained weights",
        "budget_minutes": 30,
        **extra,
    }


def run_procedure(configs, overrides: dict, log: Path) -> float:
    """The whole procedure through the bundle; returns the wall seconds."""
    cmd = bundle_run_command([CONFIGS / c for c in configs], overrides)
    cmd[cmd.index("run") + 1 : cmd.index("run") + 1] = ["--workflow_name", WORKFLOW]
    return run_logged(cmd, log, cwd=REPO, tag="bench")


def _percent(mean: dict) -> dict:
    missing = [k for k in KEYS if mean.get(k) is None]
    if missing:
        raise ValueError(f"mean metrics {missing} missing or NaN (an empty prediction?)")
    return {
        k: 100.0 * mean[k] if k.startswith(("dice", "jaccard")) else float(mean[k]) for k in KEYS
    }


def _generation_seconds(ledger: dict, method: str, generations: int) -> float:
    """Mean seconds of one generation: its label step plus its student(s)."""
    per_gen = []
    for g in range(1, generations + 1):
        ids = [f"g{g:02d}/label"] + (
            [f"g{g:02d}/f1", f"g{g:02d}/f2"] if method == "atso" else [f"g{g:02d}/student"]
        )
        per_gen.append(sum(ledger[i]["seconds"] for i in ids))
    return statistics.fmean(per_gen)


def run_methods(configs, common: dict, out: Path, generations: int) -> dict:
    """M0 once, then each method from it; returns the per-method results."""
    out = Path(out)
    results = {}
    m0_dir = out / "supervised"
    wall = run_procedure(
        configs, {**common, "method": "supervised", "run_dir": str(m0_dir)}, out / "supervised.log"
    )
    m0_summary = json.loads((m0_dir / "summary.json").read_text())
    results["supervised"] = dict(metrics=_percent(m0_summary["final_metrics"]), wall_s=wall)
    print(f"[atso bench] M0: {results['supervised']['metrics']} ({wall:.0f} s)", flush=True)
    for method in METHODS:
        run_dir = out / method
        wall = run_procedure(
            configs,
            {
                **common,
                "method": method,
                "generations": generations,
                "run_dir": str(run_dir),
                "m0_checkpoint": str(m0_dir / "m0" / "model.pt"),
            },
            out / f"{method}.log",
        )
        results[method] = collect(run_dir, method, generations, wall)
        print(f"[atso bench] {method}: {results[method]}", flush=True)
    return results


def collect(run_dir: Path, method: str, generations: int, wall: float) -> dict:
    """One method's entry from its run folder (summary.json and the ledger)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    ledger = json.loads((run_dir / "atso_state.json").read_text())["steps"]
    return dict(
        metrics=_percent(summary["final_metrics"]),
        curves={k: {g: 100.0 * v for g, v in c.items()} for k, c in summary["curves"].items()},
        dsc_vs_m0=None if summary["dsc_vs_m0"] is None else 100.0 * summary["dsc_vs_m0"],
        generation_s=_generation_seconds(ledger, method, generations),
        optimizer_steps=sum(v for v in summary["iterations"].values() if v),
        wall_s=wall,
    )


def pseudolabel_speed(network_fn, views, context, roi, volumes, sw_batch_size=32):
    """(ours s, loop s, max |difference|) of labelling ``volumes`` ((1, C, X, Y, Z) tensors) with
    random-init view networks (the same weights both ways)."""
    from monai_bundles.atso.models import ViewEnsemble
    from monai_bundles.common.multiview import MultiViewInferer, per_slice_loop_inference

    torch.manual_seed(0)
    ours_net = ViewEnsemble(network_fn, views, 1, optimize=True).eval()
    plain = [torch.nn.Sequential(m, torch.nn.Sigmoid()) for m in ours_net.models[0]]
    if ours_net.models[0][0](torch.zeros(1, context, *roi)).shape[1] > 1:
        plain = [torch.nn.Sequential(m, torch.nn.Softmax(dim=1)) for m in ours_net.models[0]]
    for p in plain:
        p.eval()
    inferer = MultiViewInferer(views, context, roi, sw_batch_size=sw_batch_size)
    ours_s = loop_s = diff = 0.0
    with torch.no_grad():
        for vol in volumes:
            t0 = time.perf_counter()
            ours = inferer(vol, ours_net)
            t1 = time.perf_counter()
            ref = per_slice_loop_inference(plain, vol, views, context, roi)
            t2 = time.perf_counter()
            ours_s, loop_s = ours_s + t1 - t0, loop_s + t2 - t1
            diff = max(diff, float((torch.as_tensor(ours) - torch.as_tensor(ref)).abs().max()))
    assert diff < 1e-5, f"the batched inferer differs from the per-slice loop by {diff}"
    return ours_s, loop_s, diff


def plot(results: dict, out: Path) -> None:
    """``out/curves.{csv,png}``: @R / @E per generation of every method (Dice in [0, 1])."""
    from monai_bundles.atso.workflow import write_curves

    write_curves(
        {
            m: {k: {g: v / 100.0 for g, v in c.items()} for k, c in r["curves"].items()}
            for m, r in results.items()
            if "curves" in r
        },
        Path(out) / "curves",
    )


def assemble(results: dict, generations: int, speed_pl) -> dict:
    """The JSON fields shared by both benchmarks (metrics, baseline, methods, curves, speed)."""
    sl, atso = results["self_learning"], results["atso"]
    ours_s, loop_s, diff = speed_pl
    return dict(
        metrics=results["atso"]["metrics"],
        baseline_metrics=results["stso"]["metrics"],
        methods={m: r["metrics"] for m, r in results.items()},
        curves={m: r.get("curves") for m, r in results.items() if "curves" in r},
        dsc_vs_m0={m: r.get("dsc_vs_m0") for m, r in results.items() if "curves" in r},
        speed={
            "generation_vs_self_learning": speed_entry(
                atso["generation_s"], sl["generation_s"], 1.10
            ),
            "pseudolabel_vs_loop": speed_entry(ours_s, loop_s, 0.67),
        },
        pseudolabel_max_abs_diff=diff,
        seconds={m: r["wall_s"] for m, r in results.items()},
        optimizer_steps={m: r.get("optimizer_steps") for m, r in results.items()},
        generations=generations,
    )
