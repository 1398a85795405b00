"""Bad input to Detectron2 runs (docs/bad_inputs.md, section "commands and output folders").

Checkpoints kept to the last few, temp files of a killed save removed, ``--eval-only`` without
weights, ``--resume`` without a checkpoint, re-use of a run's OUTPUT_DIR, bad batch size and
device, and a truncated newest checkpoint on ``--resume``. Trainings are tiny (a few steps at
128 px) on the synthetic cells of configs/supervised/synthetic_cells_demo.yaml.
"""

import logging
from types import SimpleNamespace

import pytest
import torch
from test_d2_train import CONFIG, TINY

import d2ext  # noqa: F401  (registers the built-in datasets)
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer, Trainer
from d2ext.engine.checkpoint import CheckpointReadError
from d2ext.engine.periodic_checkpointer import KeepLastPeriodicCheckpointer


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
