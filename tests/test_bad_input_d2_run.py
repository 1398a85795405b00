"""Bad input to Detectron2 runs (docs/bad_inputs.md, section "commands and output folders").

Checkpoints kept to the last few, temp files of a killed save removed, ``--eval-only`` without
weights, ``--resume`` without a checkpoint, re-use of a run's OUTPUT_DIR, bad batch size and
device, and a truncated newest checkpoint on ``--resume``. Trainings are tiny (a few steps at
128 px) on the synthetic cells of configs/supervised/synthetic_cells_demo.yaml.
"""

import json
import logging
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import load_tool
from test_d2_train import CONFIG, REPO, TINY

import d2ext  # noqa: F401  (registers the built-in datasets)
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer, Trainer
from d2ext.engine.checkpoint import CheckpointReadError
from d2ext.engine.periodic_checkpointer import KeepLastPeriodicCheckpointer
from d2ext.engine.run_dir import NothingToResumeError, NoWeightsError, OutputDirInUseError
from sslseg.datasets.synthetic import make_cells

train_net = load_tool("train_net")


def _args(output_dir, *flags, opts=()):
    """tools/train_net.py's arguments: ``flags``, the tiny demo config, ``opts``, OUTPUT_DIR."""
    argv = [*flags, "--config-file", CONFIG, *TINY, *opts, "OUTPUT_DIR", output_dir]
    return train_net.argument_parser().parse_args([str(a) for a in argv])


def _cfg(output_dir, *extra):
    cfg = build_cfg(CONFIG, TINY + ["OUTPUT_DIR", str(output_dir), *extra])
    cfg.freeze()
    return cfg


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------- checkpoints kept


def _run_hook(folder, max_to_keep, start_iter, max_iter):
    """Steps start_iter .. max_iter - 1 of a periodic checkpointer (period 1), tiny model."""
    checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(folder))
    hook = KeepLastPeriodicCheckpointer(checkpointer, 1, max_to_keep=max_to_keep)
    hook.trainer = SimpleNamespace(start_iter=start_iter, max_iter=max_iter, iter=start_iter)
    hook.before_train()
    for it in range(start_iter, max_iter):
        hook.trainer.iter = it
        hook.after_step()


def test_periodic_checkpoints_kept_to_the_last_few(tmp_path):
    """CHECKPOINTS_TO_KEEP 2: the two newest model_<iter>.pth and model_final.pth stay, also
    after a resume (the interrupted run's checkpoints count); 0 keeps all."""
    _run_hook(tmp_path, 2, 0, 4)
    assert _names(tmp_path) == [
        "last_checkpoint", "model_0000002.pth", "model_0000003.pth", "model_final.pth"
    ]  # fmt: skip
    _run_hook(tmp_path, 2, 4, 6)  # resumed: 2 and 3 are the interrupted run's
    assert _names(tmp_path) == [
        "last_checkpoint", "model_0000004.pth", "model_0000005.pth", "model_final.pth"
    ]  # fmt: skip
    _run_hook(tmp_path / "all", None, 0, 3)
    assert _names(tmp_path / "all") == [
        "last_checkpoint", "model_0000000.pth", "model_0000001.pth", "model_0000002.pth",
        "model_final.pth",
    ]  # fmt: skip


def test_trainer_keeps_checkpoints_per_config_key(tmp_path):
    for keep, expected in (("3", 3), ("0", None)):
        trainer = Trainer(_cfg(tmp_path / keep, "SOLVER.CHECKPOINTS_TO_KEEP", keep))
        (hook,) = [h for h in trainer._hooks if isinstance(h, KeepLastPeriodicCheckpointer)]
        assert hook.max_to_keep == expected, f"CHECKPOINTS_TO_KEEP {keep}: {hook.max_to_keep}"
        assert hook.checkpointer is trainer.checkpointer


# --------------------------------------------------------------------- killed save's temp file


@pytest.mark.parametrize("resume", [False, True])
def test_killed_saves_temp_file_removed_at_next_start(tmp_path, caplog, resume):
    """A save killed mid-write leaves ``.<name>.pth.<rand>.tmp``: the next run (``--resume``
    or not) deletes it with an INFO line naming it; other files stay."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".model_0000007.pth.k2j3h4.tmp", out / ".last_checkpoint.a1b2c3.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (out / ".notes.tmp").write_text("the user's")
    trainer = Trainer(_cfg(out, "DATASETS.TEST", "()"))
    trainer.checkpointer.logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=trainer.checkpointer.logger.name):
            trainer.resume_or_load(resume=resume)
    finally:
        trainer.checkpointer.logger.removeHandler(caplog.handler)
    assert not [p for p in stale if p.exists()], _names(out)
    assert (out / ".notes.tmp").exists(), "a file that is not a checkpoint's temp file went"
    for p in stale:
        assert f"Removed {p}" in caplog.text, caplog.text


# --------------------------------------------------------------------- truncated checkpoint


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_past_a_truncated_newest_checkpoint(tmp_path, caplog):
    """#28: the newest checkpoint truncated -> resume from the previous intact one, warning
    with both names; nothing intact -> an error naming the file."""
    model = torch.nn.Linear(2, 2)
    _run_hook(tmp_path, 2, 0, 3)  # model_0000001, model_0000002, model_final (iteration 2)
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    _truncate(tmp_path / "model_0000002.pth")
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=checkpointer.logger.name):
            extra = checkpointer.resume_or_load("", resume=True)
    finally:
        checkpointer.logger.removeHandler(caplog.handler)
    assert extra["iteration"] == 1, extra
    assert (
        f"Resuming from {tmp_path / 'model_0000001.pth'} instead of the newest checkpoint "
        f"{tmp_path / 'model_0000002.pth'}" in caplog.text
    ), caplog.text

    _truncate(tmp_path / "model_0000001.pth")
    with pytest.raises(CheckpointReadError, match="model_0000002.pth cannot be read") as e:
        checkpointer.resume_or_load("", resume=True)
    assert "model_0000001.pth cannot be read" in str(e.value), str(e.value)


def test_truncated_weights_error_names_the_file(tmp_path):
    """MODEL.WEIGHTS (or --eval-only's checkpoint) truncated: the error names the file."""
    _run_hook(tmp_path, 2, 0, 1)
    _truncate(tmp_path / "model_final.pth")
    checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path / "x"))
    with pytest.raises(CheckpointReadError, match=r"model_final.pth cannot be read \(trunc"):
        checkpointer.resume_or_load(str(tmp_path / "model_final.pth"), resume=False)


# --------------------------------------------------------------------- --eval-only


def _save_weights(folder, name="model_final"):
    """An untrained model's checkpoint ``folder/<name>.pth`` (as training would write it)."""
    cfg = _cfg(folder)
    AtomicDetectionCheckpointer(Trainer.build_model(cfg), str(folder)).save(name, iteration=0)
    return folder / f"{name}.pth"


@pytest.mark.parametrize("flags", [("--eval-only",), ("--eval-only", "--resume")])
def test_eval_only_without_weights_is_an_error(tmp_path, flags):
    """#30: --eval-only with no MODEL.WEIGHTS (nor a checkpoint for --resume) scored a random
    model with rc 0; now an error naming MODEL.WEIGHTS, before anything is written."""
    with pytest.raises(NoWeightsError, match="--eval-only needs a model to evaluate: MODEL.WEI"):
        train_net.setup(_args(tmp_path / "run", *flags))
    assert not (tmp_path / "run").exists(), "something was written"


def test_eval_only_writes_beside_the_training_run(tmp_path):
    """--eval-only writes OUTPUT_DIR/eval/<weights stem>/ (final_metrics.json, inference/,
    config.yaml), leaving the training run's own files as they were; --resume evaluates the
    checkpoint last_checkpoint names."""
    run = tmp_path / "run"
    run.mkdir()
    weights = _save_weights(run, "model_0000004")
    (run / "last_checkpoint").write_text(weights.name)
    mine = {"final_metrics.json": '{"segm": {"AP": 12.5}}', "config.yaml": "MODEL: {}"}
    for name, text in mine.items():
        (run / name).write_text(text)
    (run / "inference").mkdir()
    (run / "inference" / "keep.json").write_text("[]")

    opts = ("DATASETS.TEST", "('synthetic_cells_test',)", "TEST.DETECTIONS_PER_IMAGE", "5")
    cfg = train_net.setup(_args(run, "--eval-only", "--resume", opts=opts))
    assert cfg.MODEL.WEIGHTS == str(weights) and cfg.OUTPUT_DIR == str(run / "eval" / weights.stem)
    res = train_net.main(_args(run, "--eval-only", "--resume", opts=opts))
    assert "segm" in res, res
    for name, text in mine.items():
        assert (run / name).read_text() == text, f"{name} of the training run was overwritten"
    assert sorted(p.name for p in (run / "inference").iterdir()) == ["keep.json"]
    written = json.loads((run / "eval" / weights.stem / "final_metrics.json").read_text())
    assert written["evaluated_weights"] == str(weights) and "AP" in written["segm"], written


# --------------------------------------------------------------------- OUTPUT_DIR of a run


def test_resume_without_checkpoint_is_an_error(tmp_path):
    """#31: --resume into a folder with no checkpoint restarted from 0 silently."""
    (tmp_path / "model_final.pth").write_bytes(b"")  # no last_checkpoint: nothing to resume
    with pytest.raises(NothingToResumeError, match=f"--resume: OUTPUT_DIR {tmp_path} holds no ch"):
        train_net.setup(_args(tmp_path, "--resume"))
    with pytest.raises(NothingToResumeError, match="holds no checkpoint"):
        train_net.setup(_args(tmp_path / "new", "--resume"))


@pytest.mark.parametrize("marker", ["model_0000003.pth", "last_checkpoint"])
def test_new_run_into_a_used_output_dir_stops(tmp_path, marker):
    """Training without --resume into a folder holding another run's checkpoints stops, naming
    the folder and the options; nothing there is touched."""
    (tmp_path / marker).write_text("another run's")
    with pytest.raises(OutputDirInUseError) as e:
        train_net.setup(_args(tmp_path))
    message = str(e.value)
    for part in (f"OUTPUT_DIR {tmp_path} holds another run's checkpoints ({marker})", "--resume",
                 "--overwrite", "another folder"):  # fmt: skip
        assert part in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker]


def test_overwrite_removes_the_old_runs_outputs_only(tmp_path):
    """--overwrite: the old run's checkpoints, metrics and inference/ go, the user's files and
    earlier eval/ results stay; --resume with --overwrite is refused."""
    old = ["model_0000001.pth", "model_final.pth", "last_checkpoint", "metrics.json",
           "final_metrics.json", "events.out.tfevents.1.host"]  # fmt: skip
    for name in old:
        (tmp_path / name).write_text("old")
    (tmp_path / "inference").mkdir()
    (tmp_path / "eval" / "model_final").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="pass one of them"):
        train_net.setup(_args(tmp_path, "--resume", "--overwrite"))
    train_net.setup(_args(tmp_path, "--overwrite"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not set(old) & set(left) and "inference" not in left, left
    assert {"notes.txt", "eval", "config.yaml"} <= set(left), left


# --------------------------------------------------------------------- config values


@pytest.mark.parametrize("value", ["0", "-2"])
def test_nonpositive_batch_size_names_the_key(tmp_path, value):
    """#37: IMS_PER_BATCH 0 / -2 gave detectron2's 'divisible by the number of gpus'."""
    with pytest.raises(ValueError, match=f"SOLVER.IMS_PER_BATCH is {value}: the images per step"):
        _cfg(tmp_path, "SOLVER.IMS_PER_BATCH", value)


def test_cuda_without_gpu_names_the_key_and_auto(tmp_path, monkeypatch):
    """#26: MODEL.DEVICE cuda on a machine without a GPU: torch's 'Found no NVIDIA driver'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"MODEL.DEVICE '{device}' but torch finds no GPU"):
            _cfg(tmp_path, "MODEL.DEVICE", device)
    assert _cfg(tmp_path, "MODEL.DEVICE", "auto").MODEL.DEVICE == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="MODEL.DEVICE 'cuda:1' but this machine has 1 GPU"):
        _cfg(tmp_path, "MODEL.DEVICE", "cuda:1")


def test_unknown_device_names_the_key_and_auto(tmp_path):
    """#27: MODEL.DEVICE gpu gave torch's 'Expected one of cpu, cuda, ...'."""
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a device: set MODEL.DEVI"):
        _cfg(tmp_path, "MODEL.DEVICE", "gpu")


# --------------------------------------------------------------------- few test items, 2 ranks


@pytest.mark.slow
def test_fewer_test_images_than_processes_evaluates(tmp_path):
    """#51's Detectron2 analogue does not arise: detectron2's InferenceSampler gives a rank
    without test images an empty shard (training samplers are infinite), so 2 processes
    evaluate a 1-image test set (the MONAI side needs a check, see its section)."""
    json_file, image_root = make_cells(tmp_path / "one", num_images=1, size=64, seed=5)
    weights = _save_weights(tmp_path)
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--num-gpus", "2",
           "--dist-url", "auto", "--eval-only", "--config-file", str(CONFIG), *TINY,
           "DATASETS.COCO_JSON", f"('one_cell_image:{json_file}:{image_root}',)",
           "DATASETS.TEST", "('one_cell_image',)", "MODEL.WEIGHTS", str(weights),
           "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = tmp_path / "out" / "eval" / "model_final" / "final_metrics.json"
    assert "segm" in json.loads(metrics.read_text())


_KILLED_SAVE = """
import sys, time, torch
import d2ext.engine.checkpoint as ckpt_mod
from d2ext.engine import AtomicDetectionCheckpointer
checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), sys.argv[1])
checkpointer.save("model_0000000", iteration=0)
def slow(obj, f):
    f.write(b"partial"); f.flush(); time.sleep(120)
ckpt_mod.torch.save = slow
checkpointer.save("model_0000001", iteration=1)
"""


def test_sigkill_during_save_then_resume(tmp_path):
    """A process killed (SIGKILL) while saving leaves the previous checkpoint intact and named
    by last_checkpoint plus its partial .tmp; the next start removes the .tmp and resumes."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], cwd=REPO)
    try:
        for _ in range(600):  # wait for the partial temp file of the second save
            if list(tmp_path.glob(".model_0000001.pth.*.tmp")) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the saving process ended early (rc {proc.returncode})"
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert len(list(tmp_path.glob(".model_0000001.pth.*.tmp"))) == 1, _names(tmp_path)
    checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    (removed,) = checkpointer.remove_stale_temp_files()
    assert ".model_0000001.pth." in removed and not list(tmp_path.glob(".*.tmp"))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 0
