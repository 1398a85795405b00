"""The ATSO bundle end to end on synthetic volumes, in process and via ``python -m monai.bundle``.

Real configs with tiny overrides: 8 LA-like volumes of 32x32x24 (2 labeled, 5 unlabeled = R, 1
test), three 2D U-Nets (one per view) on 32x32 slabs of 3 slices, M0 and every generation 4
iterations in 2-iteration epochs (a fold student's budget scales with its data). Runs are shared
between tests (module-scoped) to keep the file at about two minutes on two CPU cores.

- each method (supervised, self-learning, STSO, ATSO) runs through ``ATSOWorkflow``: every step
  done in the ledger in plan order, ``summary.json``, pseudo-label files that fit their images and
  a manifest naming the teachers (ATSO: fold k labelled by the other fold's student);
- the method switches on the weights: with the learning rate 0 in round 2 (and the final model),
  a round-2 student's parameters are its initial weights: g01/student's for self-learning, M0's
  for STSO and ATSO (parameters only: BatchNorm running statistics move in train mode at lr 0);
- single steps from the command line, the ledger refusing a step whose prerequisite is not done,
  and the whole procedure through ``--workflow_name``;
- resume: a run stopped between two steps, and a run interrupted inside a training step (after
  its first epoch's checkpoint), end with the same weights, bit for bit, as a straight run;
- no leakage: garbage reference labels for R change @R but no weight;
- evaluate.json alone scores the final model (or ``eval_checkpoint``) of a finished run.
"""

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ENV, REPO, SCHEMA, TORCHRUN_2, run_bundle
from monai.bundle import ConfigWorkflow, verify_metadata
from test_atso_procedure import ATSO_T2_STEPS, ONE_FOLD_T2_STEPS

import monai_bundles.atso.steps as atso_steps
from monai_bundles.atso import BUNDLE_ROOT
from monai_bundles.atso.data import with_reference_labels
from monai_bundles.atso.procedure import sha256
from monai_bundles.atso.workflow import ATSOWorkflow
from monai_bundles.common.command import bundle_run_command
from monai_bundles.common.networks import UNet2D
from sslseg.datasets.synthetic import make_volumes

# one thread: bit-identical weights in this process and in the command-line runs (OMP_NUM_THREADS
# 1), and no spinning OpenMP threads on a shared two-core machine
torch.set_num_threads(1)

CONFIGS = Path(BUNDLE_ROOT) / "configs"
TRAIN, LABEL, EVALUATE = (str(CONFIGS / f"{n}.json") for n in ("train", "pseudolabel", "evaluate"))
LOGGING = str(CONFIGS / "logging.conf")
WORKFLOW = "monai_bundles.atso.workflow.ATSOWorkflow"
TINY = dict(
    m0_iterations=4,
    generation_iterations=4,
    epoch_length_max=2,
    slice_size=[32, 32],
    batch_size=2,
    sw_batch_size=8,
)
# learning rate 0 in the steps of round 2 and of the final model: their parameters stay the
# weights they start from (learning_rate itself, part of the ledger's digest, is unchanged)
FREEZE_ROUND_2 = {
    "optimizer#lr": "$0.0 if @step.startswith('g02/') or @step == 'final' else @learning_rate"
}
STEPS = {
    "supervised": ["m0", "final/eval"],
    "self_learning": ONE_FOLD_T2_STEPS,
    "stso": ONE_FOLD_T2_STEPS,
    "atso": ATSO_T2_STEPS,
}
PARAMETERS = {n for n, _ in UNet2D(in_chns=3, class_num=1).named_parameters()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The data folder: 8 synthetic volumes and ``atso_datalist.json`` (relative paths, R's items
    with ``reference_label``), so that a copy of the folder is a data set of its own."""
    root = tmp_path_factory.mktemp("atso_data") / "data"
    datalist = json.loads(Path(make_volumes(root, num=8, shape=(32, 32, 24))).read_text())
    datalist = with_reference_labels(datalist, str(root))
    assert [len(datalist[s]) for s in ("labeled", "unlabeled", "test")] == [2, 5, 1]
    assert all(i["reference_label"] == i["image"] for i in datalist["unlabeled"])
    (root / "atso_datalist.json").write_text(json.dumps(datalist))
    return root


def _overrides(data: Path, run_dir: Path, **extra) -> dict:
    return dict(
        dataset_dir=str(data),
        datalist=str(data / "atso_datalist.json"),
        run_dir=str(run_dir),
        **TINY,
        **extra,
    )


def _workflow(data: Path, run_dir: Path, **extra):
    """The whole procedure in this process; returns ``ATSOWorkflow.run()``'s value."""
    workflow = ATSOWorkflow(
        config_file=TRAIN, logging_file=False, **_overrides(data, run_dir, **extra)
    )
    workflow.initialize()
    try:
        return workflow.run()
    finally:
        workflow.finalize()


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """``runs(name) -> run folder``, each run made once: ``<method>`` or ``<method>-freeze``
    (:data:`FREEZE_ROUND_2`)."""
    root = tmp_path_factory.mktemp("atso_runs")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            method, _, variant = name.partition("-")
            _workflow(data, root / name, method=method, **(FREEZE_ROUND_2 if variant else {}))
            made[name] = root / name
        return made[name]

    return get


def _json(path: Path):
    assert path.is_file(), f"{path} is missing"
    return json.loads(path.read_text())


def _load(path: Path) -> dict:
    assert path.is_file(), f"no model at {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


def _models(run_dir: Path) -> dict:
    """``{step id: model.pt state}`` of every train step of a run."""
    return {str(p.parent.relative_to(run_dir)): _load(p) for p in sorted(run_dir.rglob("model.pt"))}


def _assert_same_models(a: Path, b: Path) -> None:
    ma, mb = _models(a), _models(b)
    assert ma and list(ma) == list(mb)
    for step, state in ma.items():
        assert list(state) == list(mb[step]) == ["view0", "view1", "view2"]
        for view, tensors in state.items():
            for name, value in tensors.items():
                assert torch.equal(value, mb[step][view][name]), f"{step} {view}.{name} differs"


def _split(state: dict, parameters: bool) -> dict:
    """The parameters (``parameters``) or the buffers of each view of a model.pt state."""
    return {
        view: {n: t for n, t in tensors.items() if (n in PARAMETERS) == parameters}
        for view, tensors in state.items()
    }


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(t, b[view][n]) for view in a for n, t in a[view].items())


def _h5(path, key):
    with h5py.File(path, "r") as f:
        return f[key][()]


def _pseudo_labels(run_dir: Path, generation: str) -> dict:
    folder = run_dir / generation / "pseudo"
    return {p.name: _h5(p, "label") for p in sorted(folder.glob("*.h5"))}


def _run_failing(config_files, overrides: dict) -> tuple:
    """A bundle run expected to fail: ``(returncode, last stderr line)``."""
    cmd = bundle_run_command(config_files, overrides)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    return proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]


def test_metadata_verifies_against_local_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


# ---------------------------------------------------------------- the four methods


@pytest.mark.slow
@pytest.mark.parametrize("name", ["supervised", "self_learning-freeze", "stso-freeze", "atso"])
def test_method_runs_every_step_and_writes_summary(runs, name):
    run_dir, method = runs(name), name.split("-")[0]
    ledger = _json(run_dir / "atso_state.json")
    assert list(ledger["steps"]) == STEPS[method], "steps done out of plan order"
    assert all(e["status"] == "done" for e in ledger["steps"].values())
    assert ledger["config_digest"]["method"] == method
    summary = _json(run_dir / "summary.json")
    final = {"supervised": "m0", "atso": "final"}.get(method, "g02/student")
    assert (summary["method"], summary["final_model"]) == (method, final)
    assert 0.0 <= summary["final_metrics"]["dice_mean"] <= 1.0
    assert summary["final_metrics"] == _json(run_dir / "final" / "eval" / "metrics.json")["mean"]
    train_steps = [s for s in STEPS[method] if ledger["steps"][s]["kind"] == "train"]
    assert sorted(_models(run_dir)) == sorted(train_steps)
    net = UNet2D(in_chns=3, class_num=1)
    for view, state in _load(run_dir / final / "model.pt").items():
        net.load_state_dict(state)  # strict: the bundle's U-Net, one per view
    assert summary["iterations"]["m0"] == ledger["steps"]["m0"]["iterations"] == 4
    if method == "supervised":
        assert summary["curves"] == {"R": {}, "E": {"G0": summary["final_metrics"]["dice_mean"]}}
        assert summary["dsc_vs_m0"] is None and not list(run_dir.glob("g*"))
        return
    generations = {"R": ["G0", "G1"], "E": ["G0", "G1", "G2"]}
    if method == "atso":
        generations["R"].append("G2")
        # proportional budgets: fold 2 (2 of R's 5 cases) trains less than fold 1 (3 cases)
        assert summary["iterations"]["g01/f2"] == 2 < summary["iterations"]["g01/f1"]
    assert {k: sorted(v) for k, v in summary["curves"].items()} == generations
    assert 0.0 <= summary["dsc_vs_m0"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["self_learning-freeze", "stso-freeze", "atso"])
def test_pseudo_label_files_and_manifests(runs, data, name):
    run_dir, method = runs(name), name.split("-")[0]
    folds = _json(run_dir / "folds.json")["folds"]
    r_ids = sorted(c for fold in folds for c in fold)
    assert len(r_ids) == 5 and len(folds) == (2 if method == "atso" else 1)
    if method == "atso":
        assert sorted(map(len, folds)) == [2, 3]
        teachers = {
            "g01": {1: ["m0/model.pt"], 2: ["m0/model.pt"]},
            "g02": {1: ["g01/f2/model.pt"], 2: ["g01/f1/model.pt"]},  # asynchronous
            "g03": {1: ["g02/f2/model.pt"], 2: ["g02/f1/model.pt"]},
        }
    else:
        teachers = {"g01": {1: ["m0/model.pt"]}, "g02": {1: ["g01/student/model.pt"]}}
    ledger = _json(run_dir / "atso_state.json")["steps"]
    assert not list(run_dir.glob("*/pseudo.tmp"))
    for generation, by_fold in teachers.items():
        manifest = _json(run_dir / generation / "pseudo" / "manifest.json")
        assert manifest["step"] == f"{generation}/label" and sorted(manifest["cases"]) == r_ids
        dice = []
        for cid, entry in manifest["cases"].items():
            assert {"file", "fold", "teachers", "teacher_sha256", "fusion"} <= set(entry)
            assert {"foreground_fraction", "dice_R"} <= set(entry)
            assert cid in folds[entry["fold"] - 1]
            assert entry["teachers"] == by_fold[entry["fold"]], (generation, cid)
            assert entry["teacher_sha256"] == [sha256(run_dir / t) for t in entry["teachers"]]
            assert entry["fusion"] == "mean_prob"
            label = _h5(run_dir / generation / "pseudo" / entry["file"], "label")
            assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
            assert label.shape == _h5(entry["image"], "image").shape == (32, 32, 24)
            assert entry["foreground_fraction"] == pytest.approx(float(label.mean()))
            assert Path(entry["image"]).is_relative_to(data)
            assert 0.0 <= entry["dice_R"] <= 1.0
            dice.append(entry["dice_R"])
        assert manifest["dice_R"] == pytest.approx(np.mean(dice))
        assert ledger[f"{generation}/label"]["dice_R"] == manifest["dice_R"]
        assert ledger[f"{generation}/label"]["cases"] == 5


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,student,init,not_init",
    [
        ("self_learning-freeze", "g02/student", "g01/student", "m0"),
        ("stso-freeze", "g02/student", "m0", "g01/student"),
        ("atso-freeze", "g02/f1", "m0", "g01/f1"),
        ("atso-freeze", "g02/f2", "m0", "g01/f2"),
        ("atso-freeze", "final", "m0", "g01/f1"),  # final_init m0
    ],
)
def test_students_start_from_the_methods_weights(runs, name, student, init, not_init):
    """At lr 0 a student's parameters are the weights it was initialised from. Its BatchNorm
    running statistics still move (train mode at lr 0), so only parameters are compared; that they
    moved shows the step did train on its data."""
    models = _models(runs(name))
    got = _load(runs(name) / student / "model.pt")
    assert _split(got, False) and all(_split(got, False).values()), "no BatchNorm buffers?"
    assert _equal(_split(got, True), _split(models[init], True)), f"{student} is not {init}"
    assert not _equal(_split(got, True), _split(models[not_init], True))
    assert not _equal(_split(got, False), _split(models[init], False))


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_single_steps_from_the_command_line(data, runs, tmp_path):
    """``--step m0`` then ``--step g01/label`` (pseudolabel.json): the same files as the
    whole-procedure driver's steps; ``--step g01/f1`` before g01/label is refused by the ledger."""
    run_dir = tmp_path / "atso"
    overrides = {**_overrides(data, run_dir), "logging_file": LOGGING}
    run_bundle([TRAIN], {**overrides, "step": "m0"})
    code, last = _run_failing([TRAIN], {**overrides, "step": "g01/f1"})
    assert code != 0 and "step 'g01/f1' needs g01/label first" in last, last
    assert not (run_dir / "g01" / "f1").exists()
    run_bundle([TRAIN, LABEL], {**overrides, "step": "g01/label"})
    assert list(_json(run_dir / "atso_state.json")["steps"]) == ["m0", "g01/label"]
    whole = runs("atso")
    m0, m0_whole = _load(run_dir / "m0" / "model.pt"), _load(whole / "m0" / "model.pt")
    assert _equal(m0, m0_whole), "m0 differs between the command line and the driver"
    ours, theirs = _pseudo_labels(run_dir, "g01"), _pseudo_labels(whole, "g01")
    assert len(ours) == 5 and list(ours) == list(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_whole_procedure_from_the_command_line(data, tmp_path):
    run_dir = tmp_path / "stso"
    overrides = _overrides(data, run_dir, method="stso", generations=1, logging_file=LOGGING)
    overrides["workflow_name"] = "monai_bundles.atso.workflow.ATSOWorkflow"
    run_bundle([TRAIN], overrides)
    steps = ["m0", "g00/eval", "g01/label", "g01/student", "final/eval"]
    assert list(_json(run_dir / "atso_state.json")["steps"]) == steps
    summary = _json(run_dir / "summary.json")
    assert (summary["method"], summary["generations"]) == ("stso", 1)
    assert summary["final_model"] == "g01/student"
    assert 0.0 <= summary["final_metrics"]["dice_mean"] <= 1.0


# ---------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_after_a_stop_between_steps(data, runs, tmp_path):
    run_dir = tmp_path / "atso"
    assert _workflow(data, run_dir, stop_after="g01/f1") is None
    ledger = _json(run_dir / "atso_state.json")["steps"]
    assert list(ledger) == STEPS["atso"][:4] and not (run_dir / "summary.json").exists()
    stamp = (run_dir / "m0" / "model.pt").stat().st_mtime_ns
    summary = _workflow(data, run_dir)
    assert (run_dir / "m0" / "model.pt").stat().st_mtime_ns == stamp, "m0 was run again"
    assert list(_json(run_dir / "atso_state.json")["steps"]) == STEPS["atso"]
    _assert_same_models(run_dir, runs("atso"))
    straight = _json(runs("atso") / "summary.json")
    assert summary["final_metrics"] == straight["final_metrics"]


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resume_inside_a_training_step(data, runs, tmp_path, monkeypatch):
    """The whole procedure is interrupted at the first iteration of g01/f1's second epoch (its
    epoch-1 checkpoint written, no model.pt, not done); the same command again continues g01/f1
    from that checkpoint (not from M0) and ends with the straight run's weights, bit for bit."""
    run_dir = tmp_path / "atso"
    original = atso_steps.run_train_step
    calls = []

    def interrupting(atso_run, step, trainer, models, saver, resume_loader=None):
        from ignite.engine import Events

        def stop(engine):
            raise Interrupted(f"{step} interrupted at iteration {engine.state.iteration}")

        if step == "g01/f1":
            trainer.add_event_handler(Events.ITERATION_STARTED(once=3), stop)
        return original(atso_run, step, trainer, models, saver, resume_loader)

    def recording(atso_run, step, trainer, models, saver, resume_loader=None):
        calls.append((step, None if resume_loader is None else Path(resume_loader.load_path)))
        return original(atso_run, step, trainer, models, saver, resume_loader)

    monkeypatch.setattr(atso_steps, "run_train_step", interrupting)
    with pytest.raises(Exception) as err:  # MONAI wraps it: "Failed to evaluate ..."
        _workflow(data, run_dir)
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    interrupted = [e for e in chain if isinstance(e, Interrupted)]
    assert interrupted and str(interrupted[0]) == "g01/f1 interrupted at iteration 3", chain
    ledger = _json(run_dir / "atso_state.json")["steps"]
    assert list(ledger) == ["m0", "g00/eval", "g01/label"]
    step_dir = run_dir / "g01" / "f1"
    assert sorted(p.name for p in (step_dir / "models").iterdir()) == ["checkpoint_epoch=1.pt"]
    assert not (step_dir / "model.pt").exists()

    monkeypatch.setattr(atso_steps, "run_train_step", recording)
    _workflow(data, run_dir)
    assert calls[0] == ("g01/f1", step_dir / "models" / "checkpoint_epoch=1.pt")
    assert [c[0] for c in calls[1:]] == ["g01/f2", "g02/f1", "g02/f2", "final"]
    assert all(path is None for _, path in calls[1:])
    assert _json(run_dir / "atso_state.json")["steps"]["g01/f1"]["iterations"] == 4
    _assert_same_models(run_dir, runs("atso"))


# ---------------------------------------------------------------- leakage, evaluation


@pytest.mark.slow
def test_reference_labels_of_r_never_reach_training(data, runs, tmp_path):
    """R's ground truth replaced by random 0/1 in a copy of the data: every model bit-identical
    to the clean run's, only @R (the manifests' dice_R) changes."""
    garbage = tmp_path / "data"
    shutil.copytree(data, garbage)
    datalist = _json(garbage / "atso_datalist.json")
    rng = np.random.default_rng(0)
    for item in datalist["unlabeled"]:
        with h5py.File(garbage / item["reference_label"], "r+") as f:
            clean = f["label"][()]
            f["label"][...] = rng.integers(0, 2, clean.shape).astype(clean.dtype)
            assert not np.array_equal(f["label"][()], clean)
    _workflow(garbage, tmp_path / "atso")
    clean_run = runs("atso")
    _assert_same_models(tmp_path / "atso", clean_run)
    for generation in ("g01", "g02", "g03"):
        ours = _json(tmp_path / "atso" / generation / "pseudo" / "manifest.json")
        theirs = _json(clean_run / generation / "pseudo" / "manifest.json")
        for cid, entry in ours["cases"].items():
            assert entry["teacher_sha256"] == theirs["cases"][cid]["teacher_sha256"]
            assert entry["dice_R"] != theirs["cases"][cid]["dice_R"], (generation, cid)
        assert ours["dice_R"] < 0.3 <= theirs["dice_R"], generation
        labels, clean_labels = _pseudo_labels(tmp_path / "atso", generation), _pseudo_labels(
            clean_run, generation
        )
        assert all(np.array_equal(labels[k], clean_labels[k]) for k in clean_labels)
    final = _json(tmp_path / "atso" / "summary.json")["final_metrics"]
    assert final == _json(clean_run / "summary.json")["final_metrics"]


@pytest.mark.slow
def test_evaluate_alone_scores_a_finished_run(data, runs):
    """evaluate.json without --step: the final model (or ``eval_checkpoint``) into
    ``<run_dir>/eval``; the ledger is not touched."""
    run_dir = runs("atso")
    ledger = (run_dir / "atso_state.json").read_text()
    for checkpoint, reference in (
        ("", "final/eval"),
        (str(run_dir / "m0" / "model.pt"), "g00/eval"),
    ):
        workflow = ConfigWorkflow(
            config_file=[TRAIN, EVALUATE],
            logging_file=False,
            workflow_type="train",
            **_overrides(data, run_dir, eval_checkpoint=checkpoint),
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        doc = _json(run_dir / "eval" / "metrics.json")
        assert [c["case"] for c in doc["cases"]] == ["case_007.h5"]
        assert doc["mean"] == _json(run_dir / reference / "metrics.json")["mean"], checkpoint
        pred = np.load(run_dir / "eval" / "pred" / "volumes__case_007.npz")["label"]
        want = np.load(run_dir / reference / "pred" / "volumes__case_007.npz")["label"]
        assert pred.shape == (32, 32, 24) and np.array_equal(pred, want)
    assert (run_dir / "atso_state.json").read_text() == ledger


@pytest.mark.parametrize(
    "files,workflow_type,step",
    [
        ([TRAIN], "train", "m0"),
        ([TRAIN, str(CONFIGS / "train_acdc.json")], "train", "m0"),
        ([str(CONFIGS / "inference.json")], "infer", None),
    ],
)
def test_configs_have_the_bundle_properties(data, tmp_path, files, workflow_type, step):
    """MONAI's required workflow properties (``check_properties() == []``), for one train step
    and for the standalone inference config."""
    extra = {"step": step} if step else {}
    workflow = ConfigWorkflow(
        config_file=files,
        logging_file=False,
        workflow_type=workflow_type,
        **_overrides(data, tmp_path / "run"),
        **extra,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_multi_gpu_train_runs_the_procedure_with_torchrun_gloo(data, tmp_path):
    """The whole ATSO procedure in 2 processes on CPU (gloo): DDP view networks in the train
    steps, each process labelling / scoring its share of the cases, rank 0 writing the ledger,
    the manifests and the summary. The test split lists its volume twice (one per process)."""
    datalist = json.loads((data / "atso_datalist.json").read_text())
    datalist["test"] *= 2
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    overrides = _overrides(data, tmp_path / "run", generations=1)
    # one volume per process and step (2 labeled volumes over 2 processes)
    overrides.update(datalist=str(tmp_path / "datalist.json"), batch_size=1)
    cmd = bundle_run_command([TRAIN, str(CONFIGS / "multi_gpu_train.json")], overrides, TORCHRUN_2)
    cmd[cmd.index("run") + 1 : cmd.index("run") + 1] = ["--workflow_name", WORKFLOW]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_dir = tmp_path / "run"
    ledger = _json(run_dir / "atso_state.json")["steps"]
    assert all(e["status"] == "done" for e in ledger.values()) and "final/eval" in ledger
    manifest = _json(run_dir / "g01" / "pseudo" / "manifest.json")
    assert len(manifest["cases"]) == 5, "the two processes' shares together cover R"
    metrics = _json(run_dir / "final" / "eval" / "metrics.json")
    assert len(metrics["cases"]) == 2, "both processes' test cases are gathered"
    UNet2D(in_chns=3, class_num=1).load_state_dict(_load(run_dir / "final" / "model.pt")["view1"])


@pytest.mark.slow
def test_volume3d_option_trains_and_labels_with_one_vnet(data, tmp_path):
    """train_volume3d.json: one 3D V-Net (view0) on 3D patches, SlidingWindowInferer for the
    pseudo labels and the test volume; the procedure is unchanged (self-learning, T = 1)."""
    from monai_bundles.common.networks import VNet

    overrides = _overrides(data, tmp_path / "run", method="self_learning", generations=1)
    overrides.update(patch_size=[32, 32, 16], sw_batch_size=2)
    del overrides["slice_size"]
    workflow = ATSOWorkflow(
        config_file=[TRAIN, str(CONFIGS / "train_volume3d.json")], logging_file=False, **overrides
    )
    workflow.initialize()
    summary = workflow.run()
    workflow.finalize()
    assert 0.0 <= summary["final_metrics"]["dice_mean"] <= 1.0
    state = _load(tmp_path / "run" / "g01" / "student" / "model.pt")
    assert sorted(state) == ["view0"]
    VNet(n_channels=1, n_classes=1, has_dropout=True).load_state_dict(state["view0"])
    for path, labels in _pseudo_labels(tmp_path / "run", "g01").items():
        assert labels.shape == (32, 32, 24) and labels.dtype == np.uint8, path
