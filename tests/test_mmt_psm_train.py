"""MMT-PSM training end to end on CPU: tools/train_net.py, EMA teacher, eval, resume, DDP, configs.

Run A (module fixture) trains configs/mmt_psm/synthetic_cells_demo.yaml for 5 iterations through
``tools/train_net.py``'s ``setup`` + ``trainer_class`` (what ``main`` does, in process so that the
per-iteration event storage can be read): steps 0-1 labeled-only burn-in, EMA copy after step 1,
steps 2-4 with the unlabeled losses. Shrunk schedule (0-based iterations):

    t            0    1    2      3      4
    lambda(t)    0    0    e^-5   e^-1.25 e^-3     (burn-in 2, ramp up 2, ramp down 2)
    ema alpha    -    0    0      1/2    2/3      (EMA_START_ITER 1; "-": no update)
    checkpoints                   model_0000003.pth  model_final.pth

Resume: ``DefaultTrainer.resume_or_load`` restores the model (student and teacher), the
optimizer, the LR scheduler and the iteration; ``MMTPSMTrainer`` also restores the global RNGs
(``RNGStateHook``) and continues both samplers after the batches already drawn. Detectron2 alone
would restart the samplers at their first index and re-seed the RNGs, so a resumed step 4 would
train on other images (here labeled 0004.png + unlabeled 0005.png instead of 0002.png + 0002.png).
The resume test checks that a resumed run ends with exactly the uninterrupted run's weights.

With the method's defaults the unsupervised losses of run A are logged but 0 this early (see
NONZERO_UNSUP); the two-process and real-data tests switch mining off and the MGD threshold to 0
so that both are positive there.

The metrics.json event log is written by detectron2's PeriodicWriter every 20 iterations and at
the last one (latest value per key), so for a 5-iteration run it holds the last step only; the
per-iteration schedule is checked on the trainer's EventStorage, from which that file is written.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import flat_cfg, load_tool
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.engine import default_argument_parser

import d2ext  # noqa: F401  (registers datasets and MMTPSMRCNN)
from d2ext.config import build_cfg
from d2ext.data import split_batch_size
from d2ext.engine import Trainer, ema_alpha, trainer_class
from d2ext.mmt_psm import KViewMapper, MMTPSMTrainer, unsup_weight
from sslseg.paths import data_root

REPO = Path(__file__).resolve().parent.parent
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIGS = REPO / "configs" / "mmt_psm"
DEMO = CONFIGS / "synthetic_cells_demo.yaml"
PERCENTS = (10, 20, 40, 80, 100)

# Smaller and faster than the demo config, same method: 128 px, fewer proposals/ROIs; every
# detection kept at test time so AP is computed after a few steps from scratch.
TINY = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.MMT_PSM.PROPOSALS_PER_IMAGE", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "100",
]  # fmt: skip
# The schedule of run A (see the module docstring).
MAX_ITER, BURN_IN, EMA_START, RAMP_UP, RAMP_DOWN, CKPT_ITER = 5, 2, 1, 2, 2, 3
SCHEDULE = [
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.CHECKPOINT_PERIOD", str(CKPT_ITER + 1),
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(4,)",
    "MODEL.MMT_PSM.EMA_START_ITER", str(EMA_START),
    "MODEL.MMT_PSM.BURN_IN_ITERS", str(BURN_IN),
    "MODEL.MMT_PSM.RAMP_UP_ITERS", str(RAMP_UP),
    "MODEL.MMT_PSM.RAMP_DOWN_ITERS", str(RAMP_DOWN),
]  # fmt: skip
# Ablation switches that make both unsupervised losses non-zero from the first steps: a barely
# trained teacher labels every proposal background (mining then keeps none: L_psm = 0) and has no
# detection scoring >= 0.5 (empty MGD mask: L_mgd = 0).
NONZERO_UNSUP = ["MODEL.MMT_PSM.SAMPLE_MINING", "False", "MODEL.MMT_PSM.MGD_SCORE_THRESH", "0.0"]
STUDENT_KEY = "backbone.bottom_up.stem.conv1.weight"
# one thread per process: 2 shared cores, oversubscribed threads slow every step down a lot
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
torch.set_num_threads(1)


train_net = load_tool("train_net")


def _args(*argv):
    return default_argument_parser().parse_args([str(a) for a in argv])


def _setup(output_dir, *opts, config=DEMO, flags=()):
    """tools/train_net.py's ``setup`` (get_cfg + project keys + file + opts + default_setup)."""
    args = _args(*flags, "--config-file", config, *TINY, *opts, "OUTPUT_DIR", output_dir)
    return train_net.setup(args), args


def _cli(*argv, timeout=420):
    cmd = [sys.executable, str(TRAIN_NET), *[str(a) for a in argv]]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _events(out):
    """Lines of OUTPUT_DIR/metrics.json (detectron2's JSONWriter), in file order."""
    return [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines()]


def _split(state):
    """(student, teacher) parts of a MMTPSMRCNN state dict (teacher keys unprefixed), both without
    the ``teacher_ready`` flag."""
    student = {k: v for k, v in state.items() if not k.startswith("teacher")}
    teacher = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    return student, teacher


def _assert_ema_step(teacher_after, teacher_before, student_after, alpha, what):
    """teacher_after == alpha * teacher_before + (1 - alpha) * student_after, for every tensor."""
    assert teacher_after.keys() == teacher_before.keys() == student_after.keys(), what
    for k, t in teacher_after.items():
        expected = alpha * teacher_before[k].double() + (1 - alpha) * student_after[k].double()
        assert torch.allclose(t.double(), expected, rtol=1e-5, atol=1e-6), (
            f"{what}: {k} is not {alpha:.4f} * previous teacher + {1 - alpha:.4f} * student "
            f"(max error {(t.double() - expected).abs().max().item():.3g})"
        )


def _drop_checkpoints(*folders):
    """Delete the .pth files (~240 MB each; pytest keeps the last 3 runs' tmp folders)."""
    for folder in folders:
        for f in Path(folder).glob("*.pth"):
            f.unlink()


def _nested_equal(a, b, path="optimizer"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path} keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _nested_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _nested_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------- run A
@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmt_psm_a")
    cfg, _ = _setup(out, *SCHEDULE)
    trainer_cls = trainer_class(cfg)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    storage = trainer.storage
    history = {
        k: [(int(it), float(v)) for v, it in storage.history(k).values()]
        for k in ("mmt_psm/lambda", "mmt_psm/ema_alpha", "loss_psm", "loss_mgd", "total_loss", "lr")
        if k in storage.histories()
    }
    del trainer
    yield SimpleNamespace(
        out=out, cfg=cfg, results=results, history=history, trainer_cls=trainer_cls
    )
    _drop_checkpoints(out)


def test_training_logs_burn_in_lambda_ema_and_unsupervised_losses(run_a):
    assert run_a.trainer_cls is MMTPSMTrainer, f"trainer {run_a.trainer_cls.__name__}"
    h = run_a.history
    lam = dict(h["mmt_psm/lambda"])
    assert sorted(lam) == list(range(MAX_ITER)), f"lambda logged at {sorted(lam)}"
    for t, w in lam.items():
        expected = unsup_weight(t, MAX_ITER, BURN_IN, RAMP_UP, RAMP_DOWN)
        assert w == pytest.approx(expected), f"lambda({t}) = {w}, expected {expected}"
        assert (w == 0) == (t < BURN_IN), f"lambda({t}) = {w} with burn-in {BURN_IN}"
    post = list(range(BURN_IN, MAX_ITER))
    for key in ("loss_psm", "loss_mgd"):
        its = [it for it, _ in h.get(key, [])]
        assert its == post, f"{key} logged at {its}, expected after burn-in {post}"
        assert all(math.isfinite(v) and v >= 0 for _, v in h[key]), f"{key}: {h[key]}"
    assert all(math.isfinite(v) for _, v in h["total_loss"]), f"total_loss {h['total_loss']}"
    alpha = dict(h["mmt_psm/ema_alpha"])
    assert sorted(alpha) == list(range(EMA_START, MAX_ITER)), f"ema_alpha logged at {alpha}"
    for t, a in alpha.items():
        assert a == pytest.approx(ema_alpha(t, EMA_START)), f"alpha({t}) = {a}"

    lines = [e for e in _events(run_a.out) if "total_loss" in e]
    assert lines and lines[-1]["iteration"] == MAX_ITER - 1, f"metrics.json: {lines}"
    last = lines[-1]
    for key in ("loss_psm", "loss_mgd", "mmt_psm/lambda", "mmt_psm/ema_alpha"):
        assert key in last and math.isfinite(last[key]), f"{key} missing from {sorted(last)}"
    assert last["mmt_psm/lambda"] == pytest.approx(lam[MAX_ITER - 1]) and lam[MAX_ITER - 1] > 0
    assert last["mmt_psm/ema_alpha"] == pytest.approx(2 / 3)


def test_final_evaluation_is_the_teachers(run_a):
    out = run_a.out
    on_disk = json.loads((out / "final_metrics.json").read_text())
    assert on_disk["evaluated_model"] == "teacher", f"evaluated {on_disk.get('evaluated_model')}"
    for metric in ("AP", "AP50", "AP75"):
        assert metric in on_disk["segm"], f"segm metrics {sorted(on_disk['segm'])}"
    assert math.isfinite(on_disk["segm"]["AP"]), f"segm AP {on_disk['segm']['AP']}"
    assert run_a.results["segm"]["AP"] == pytest.approx(on_disk["segm"]["AP"])
    inference = sorted(p.name for p in (out / "inference").iterdir())
    assert inference == ["synthetic_cells_test_teacher"], f"inference folders {inference}"


def test_checkpoint_holds_student_teacher_and_trainer_state(run_a):
    out = run_a.out
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / f"model_{CKPT_ITER:07d}.pth").is_file(), sorted(os.listdir(out))
    ckpt = _load(out / "model_final.pth")
    assert ckpt["iteration"] == MAX_ITER - 1, f"iteration {ckpt['iteration']}"
    model = ckpt["model"]
    for key in (
        STUDENT_KEY,
        "mgd_adapters.p2.weight",
        f"teacher.{STUDENT_KEY}",
        "teacher.mgd_adapters.p2.weight",
        "teacher.roi_heads.mask_head.predictor.weight",
    ):
        assert key in model, f"{key} missing from the checkpoint"
    assert model["teacher_ready"].dtype == torch.bool and bool(model["teacher_ready"])
    student, teacher = _split(model)
    assert (
        student.keys() == teacher.keys()
    ), f"student/teacher keys differ: {sorted(set(student) ^ set(teacher))[:5]}"
    state = ckpt["trainer"]
    assert state["iteration"] == MAX_ITER - 1
    assert state["_trainer"]["optimizer"]["state"], "optimizer state (momentum) missing"
    sched = state["hooks"]["LRScheduler"]
    assert sched["last_epoch"] == MAX_ITER, f"scheduler last_epoch {sched['last_epoch']}"


def test_teacher_is_an_ema_of_the_student(run_a):
    before = _load(run_a.out / f"model_{CKPT_ITER:07d}.pth")["model"]
    after = _load(run_a.out / "model_final.pth")["model"]
    s_before, t_before = _split(before)
    s_after, t_after = _split(after)
    differs = [k for k in s_after if not torch.equal(s_after[k], t_after[k])]
    assert len(differs) > len(s_after) // 2, f"teacher == student for most tensors ({differs})"
    assert not torch.equal(s_before[STUDENT_KEY], s_after[STUDENT_KEY]), "student did not train"
    # the last step (t = 4) is the only one between the two checkpoints: alpha(4) = 2/3
    alpha = dict(run_a.history["mmt_psm/ema_alpha"])[MAX_ITER - 1]
    assert alpha == pytest.approx(2 / 3)
    _assert_ema_step(t_after, t_before, s_after, alpha, "final teacher")

    model = run_a.trainer_cls.build_model(run_a.cfg)
    train_net.AtomicDetectionCheckpointer(model).load(str(run_a.out / "model_final.pth"))
    grads = [n for n, p in model.teacher.named_parameters() if p.requires_grad]
    assert not grads, f"teacher parameters require grad after loading: {grads[:5]}"
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("teacher"))
    model.train()
    assert model.training and not model.teacher.training, "teacher must stay in eval mode"
    assert bool(model.teacher_ready) and model.evaluated_model() == "teacher"
    assert torch.equal(
        model.teacher.backbone.bottom_up.stem.conv1.weight, after[f"teacher.{STUDENT_KEY}"]
    )


# ------------------------------------------------------------------------------- eval-only
def _eval_only(weights, out, *opts):
    args = _args(
        "--eval-only",
        "--config-file",
        DEMO,
        *TINY,
        *SCHEDULE,
        "MODEL.WEIGHTS",
        weights,
        "OUTPUT_DIR",
        out,
        *opts,
    )
    return train_net.main(args)


def test_eval_only_teacher_by_default_student_on_request(run_a, tmp_path):
    weights = run_a.out / "model_final.pth"
    runs = {}
    for which, opts in (("teacher", ()), ("student", ("MODEL.MMT_PSM.EVAL_MODEL", "student"))):
        out = tmp_path / which
        res = _eval_only(weights, out, *opts)
        out = out / "eval" / "model_final"  # --eval-only writes to OUTPUT_DIR/eval/<stem>/
        metrics = json.loads((out / "final_metrics.json").read_text())
        assert metrics["evaluated_model"] == which, f"{which}: {metrics['evaluated_model']}"
        assert "AP" in metrics["segm"] and "AP" in res["segm"], f"{which}: {sorted(metrics)}"
        folders = sorted(p.name for p in (out / "inference").iterdir())
        assert folders == [f"synthetic_cells_test_{which}"], f"{which}: folders {folders}"
        predictions = out / "inference" / folders[0] / "coco_instances_results.json"
        runs[which] = (metrics, json.loads(predictions.read_text()))
    (t_metrics, t_pred), (_, s_pred) = runs["teacher"], runs["student"]
    assert t_pred and s_pred, "no detections: nothing compared"
    assert t_pred != s_pred, "teacher and student predictions are identical"
    # --eval-only of model_final reproduces the evaluation at the end of training (teacher)
    trained = json.loads((run_a.out / "final_metrics.json").read_text())
    assert t_metrics["segm"]["AP"] == pytest.approx(trained["segm"]["AP"], abs=1e-6), (
        f"eval-only teacher segm AP {t_metrics['segm']['AP']} != training's "
        f"{trained['segm']['AP']}"
    )


# ------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_restores_state_and_continues_schedules(run_a, tmp_path):
    name = f"model_{CKPT_ITER:07d}.pth"
    ckpt = _load(run_a.out / name)
    assert ckpt["iteration"] == CKPT_ITER > EMA_START, "checkpoint must be after the EMA start"

    # 1) what --resume restores (in process, no training)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.symlink(run_a.out / name, state_dir / name)
    (state_dir / "last_checkpoint").write_text(name)
    cfg, _ = _setup(state_dir, *SCHEDULE, "DATASETS.TEST", "()", flags=("--resume",))
    trainer = trainer_class(cfg)(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == CKPT_ITER + 1, f"start_iter {trainer.start_iter}"
    restored = trainer.model.state_dict()
    assert restored.keys() == ckpt["model"].keys()
    changed = [k for k, v in ckpt["model"].items() if not torch.equal(restored[k], v)]
    assert not changed, f"model tensors not restored (teacher included): {changed[:5]}"
    assert bool(trainer.model.teacher_ready), "teacher_ready not restored"
    _nested_equal(trainer.optimizer.state_dict(), ckpt["trainer"]["_trainer"]["optimizer"])
    _nested_equal(
        trainer.scheduler.state_dict(), ckpt["trainer"]["hooks"]["LRScheduler"], "scheduler"
    )
    del restored
    trainer.train()  # the same resumed run, in process: compared with B below
    del trainer

    # 2) run B: a fresh folder holding only A's checkpoint, `--resume` to MAX_ITER
    b = tmp_path / "b"
    b.mkdir()
    shutil.copyfile(run_a.out / name, b / name)
    (b / "last_checkpoint").write_text(name)
    # same config as A except OUTPUT_DIR; the final evaluation (after the last checkpoint, it
    # cannot change the weights) is skipped to save time
    proc = _cli(
        "--resume", "--config-file", DEMO, *TINY, *SCHEDULE, "OUTPUT_DIR", b, "DATASETS.TEST", "()"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (b / "log.txt").read_text()
    assert f"Starting training from iteration {CKPT_ITER + 1}" in log, log[-2000:]
    lines = [e for e in _events(b) if "total_loss" in e]
    assert [e["iteration"] for e in lines] == [MAX_ITER - 1], f"B trained at {lines}"
    a_hist = {k: dict(v) for k, v in run_a.history.items()}
    for key in ("lr", "mmt_psm/lambda", "mmt_psm/ema_alpha"):
        assert lines[0][key] == pytest.approx(a_hist[key][MAX_ITER - 1]), (
            f"{key} at iteration {MAX_ITER - 1}: resumed {lines[0][key]}, "
            f"uninterrupted {a_hist[key][MAX_ITER - 1]}"
        )
    final_b = _load(b / "model_final.pth")
    assert final_b["iteration"] == MAX_ITER - 1
    # the teacher continued from the checkpoint's teacher with alpha(4) = 2/3, not a fresh copy
    s_b, t_b = _split(final_b["model"])
    _, t_ckpt = _split(ckpt["model"])
    _assert_ema_step(t_b, t_ckpt, s_b, ema_alpha(MAX_ITER - 1, EMA_START), "resumed teacher")
    # exact resume: the samplers continue where the checkpoint left them and the global RNGs
    # come back from RNGStateHook (NUM_WORKERS 0, one thread), so B ends with A's weights
    final_a = _load(run_a.out / "model_final.pth")["model"]
    differ = [k for k, v in final_b["model"].items() if not torch.equal(v, final_a[k])]
    assert not differ, f"resumed and uninterrupted runs differ in {len(differ)}: {differ[:5]}"
    again = _load(state_dir / "model_final.pth")["model"]
    differ = [k for k, v in final_b["model"].items() if not torch.equal(v, again[k])]
    assert not differ, f"two resumes from one checkpoint differ in {len(differ)}: {differ[:5]}"
    _drop_checkpoints(state_dir, b)


# ------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_cpu_training(tmp_path):
    schedule = [
        "SOLVER.IMS_PER_BATCH", "4",  # per process: 1 labeled + 1 unlabeled
        "SOLVER.MAX_ITER", "4",
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(3,)",
        "MODEL.MMT_PSM.EMA_START_ITER", "1",
        "MODEL.MMT_PSM.BURN_IN_ITERS", "2",
        "MODEL.MMT_PSM.RAMP_UP_ITERS", "1",
        "MODEL.MMT_PSM.RAMP_DOWN_ITERS", "1",
    ]  # fmt: skip
    proc = _cli(
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--config-file",
        DEMO,
        *TINY,
        *schedule,
        *NONZERO_UNSUP,
        "OUTPUT_DIR",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    ckpt = _load(tmp_path / "model_final.pth")
    assert ckpt["iteration"] == 3 and bool(ckpt["model"]["teacher_ready"])
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log, log[:2000]
    lines = [e for e in _events(tmp_path) if "total_loss" in e]
    assert lines and lines[-1]["iteration"] == 3, f"metrics.json: {lines}"
    for key in ("loss_psm", "loss_mgd"):  # averaged over the 2 processes
        assert lines[-1].get(key, 0) > 0, f"{key} not > 0 in {lines[-1]}"
    metrics = json.loads((tmp_path / "final_metrics.json").read_text())
    assert metrics["evaluated_model"] == "teacher" and "AP" in metrics["segm"], sorted(metrics)
    _drop_checkpoints(tmp_path)


# ------------------------------------------------------------------------------- configs
def _file_cfg(path):
    return build_cfg(path)


@pytest.mark.parametrize("pct", PERCENTS)
def test_isbi2014_configs_and_supervised_baselines(pct):
    mmt = _file_cfg(CONFIGS / f"isbi2014_{pct}pct.yaml")
    sup = _file_cfg(CONFIGS / f"supervised_isbi2014_{pct}pct.yaml")
    registered = set(DatasetCatalog.list())
    assert mmt.MODEL.META_ARCHITECTURE == "MMTPSMRCNN" and trainer_class(mmt) is MMTPSMTrainer
    assert sup.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and trainer_class(sup) is Trainer
    assert mmt.DATASETS.TRAIN == (f"isbi2014_train_labeled_{pct}",), mmt.DATASETS.TRAIN
    unlabeled = ((f"isbi2014_train_unlabeled_{pct}",) if pct < 100 else ()) + (
        "isbi2014_edf_unlabeled",
    )
    assert mmt.DATASETS.TRAIN_UNLABELED == unlabeled, mmt.DATASETS.TRAIN_UNLABELED
    assert mmt.DATASETS.TEST == ("isbi2014_test",), mmt.DATASETS.TEST
    names = mmt.DATASETS.TRAIN + mmt.DATASETS.TRAIN_UNLABELED + mmt.DATASETS.TEST
    assert set(names) <= registered, f"unregistered: {sorted(set(names) - registered)}"
    assert mmt.OUTPUT_DIR.endswith(f"isbi2014_{pct}pct"), mmt.OUTPUT_DIR

    a, b = flat_cfg(mmt), flat_cfg(sup)
    assert a.keys() == b.keys(), f"keys differ: {sorted(set(a) ^ set(b))}"
    differs = sorted(k for k in a if a[k] != b[k])
    assert differs == [
        "DATASETS.TRAIN_UNLABELED",
        "MODEL.META_ARCHITECTURE",
        "OUTPUT_DIR",
        "SOLVER.IMS_PER_BATCH",
    ], f"{pct}%: configs differ in {differs}"
    assert sup.DATASETS.TRAIN_UNLABELED == ()
    labeled, _ = split_batch_size(mmt.SOLVER.IMS_PER_BATCH, mmt.DATALOADER.UNLABELED_RATIO)
    assert sup.SOLVER.IMS_PER_BATCH == labeled, "baseline batch != MMT-PSM's labeled half"
    assert sup.OUTPUT_DIR.endswith(f"supervised_isbi2014_{pct}pct"), sup.OUTPUT_DIR


# ------------------------------------------------------------------------------- real data
def _isbi_root():
    root = data_root()
    return root / "isbi2014_cervical" if root is not None else None


ISBI = _isbi_root()
# the demo's small model on the real config (configs/mmt_psm/synthetic_cells_demo.yaml)
SMALL_MODEL = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "128",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "128",
]  # fmt: skip


@pytest.mark.skipif(
    ISBI is None or not ISBI.is_dir(),
    reason=f"ISBI 2014 data not found ({ISBI or 'sslseg.paths.data_root() is None'}); set "
    "SSLSEG_DATA or put it at ../shared/data/isbi2014_cervical",
)
def test_isbi2014_20pct_unlabeled_steps_on_real_data(tmp_path, monkeypatch):
    drawn = []
    call = KViewMapper.__call__

    def recording(self, dataset_dict):
        drawn.append(dataset_dict["file_name"])
        return call(self, dataset_dict)

    monkeypatch.setattr(KViewMapper, "__call__", recording)
    cfg, _ = _setup(
        tmp_path, *SMALL_MODEL,
        "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "100", *NONZERO_UNSUP,
        "MODEL.MMT_PSM.BURN_IN_ITERS", "0", "MODEL.MMT_PSM.EMA_START_ITER", "0",
        "MODEL.MMT_PSM.RAMP_UP_ITERS", "0", "MODEL.MMT_PSM.RAMP_DOWN_ITERS", "0",
        "DATASETS.TEST", "()",
        config=CONFIGS / "isbi2014_20pct.yaml",
    )  # fmt: skip
    edf = {d["file_name"] for d in DatasetCatalog.get("isbi2014_edf_unlabeled")}
    stream = [d["file_name"] for d in get_detection_dataset_dicts(cfg.DATASETS.TRAIN_UNLABELED)]
    assert len(edf) == 16 and edf <= set(stream), f"{len(edf)} EDF images, stream {len(stream)}"
    assert len(stream) == 28 + 16, f"unlabeled stream of {len(stream)} images"

    trainer = trainer_class(cfg)(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    storage = trainer.storage
    assert [v for v, _ in storage.history("mmt_psm/lambda").values()] == [1.0, 1.0]
    for key in ("loss_psm", "loss_mgd", "total_loss", "loss_mask"):
        values = [v for v, _ in storage.history(key).values()]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), f"{key}: {values}"
        if key in ("loss_psm", "loss_mgd"):
            assert all(v > 0 for v in values), f"{key}: {values}"
    assert len(drawn) == 2 and set(drawn) <= set(stream), f"unlabeled images drawn: {drawn}"
    # SEED 0 -> unlabeled sampler seed 1, whose first indices (33, 30) are EDF images
    assert set(drawn) & edf, f"no EDF image among the unlabeled images drawn: {drawn}"
    _drop_checkpoints(tmp_path)
