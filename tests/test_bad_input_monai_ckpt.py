"""Bad input and bad luck around MONAI bundle checkpoints (docs/bad_inputs.md, monai-ckpt).

Killed while saving: a process SIGKILLed in the middle of writing a checkpoint keeps the previous
one intact (``SafeCheckpointSaver``). Resume: ``--resume_from`` missing or corrupt, ``--resume
true`` with nothing to resume, a corrupt newest checkpoint (falls back to the previous intact one).
Output folder: a new run into a ``ckpt_dir`` holding another run's checkpoints stops unless
``--overwrite true``. The bundles end to end: ``tests/test_bundle_resume.py``.
"""

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, REPO
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from monai_bundles.common.checkpoint import SafeCheckpointSaver
from monai_bundles.common.checkpoint_resume import (
    as_flag,
    check_ckpt_dir,
    find_resume_checkpoint,
    select_resume_checkpoint,
)
from sslseg.errors import InputError, MissingInputError, UnreadableInputError

# prepended to a script: torch.save of a file whose name contains $SLOW_SAVE_NAME writes half the
# bytes, creates the file $SLOW_SAVE_MARKER and sleeps until the test SIGKILLs the process
SLOW_SAVE_HOOK = textwrap.dedent("""
    import io, os, time
    import torch

    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        name = getattr(f, "name", f)  # a path, or the fd of sslseg.io.atomic_open's temp file
        name = os.readlink(f"/proc/self/fd/{name}") if isinstance(name, int) else str(name)
        if os.environ["SLOW_SAVE_NAME"] not in os.path.basename(name):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        out = f if hasattr(f, "write") else open(f, "wb")
        out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        out.flush()
        open(os.environ["SLOW_SAVE_MARKER"], "w").close()
        time.sleep(600)

    torch.save = slow_save
    """)
# a tiny training loop saving every epoch (3 epochs of 2 iterations) with the saver named
KILLED_RUN = SLOW_SAVE_HOOK + textwrap.dedent("""
    import sys
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver
    from monai_bundles.common.checkpoint import SafeCheckpointSaver

    ckpt_dir, saver_name = sys.argv[1:3]
    net = torch.nn.Linear(64, 64)
    engine = Engine(lambda engine, batch: None)
    saver = {"SafeCheckpointSaver": SafeCheckpointSaver, "CheckpointSaver": CheckpointSaver}
    saver[saver_name](
        save_dir=ckpt_dir, save_dict={"net": net, "trainer": engine}, save_interval=1, n_saved=1
    ).attach(engine)
    engine.run([0, 1], max_epochs=3)
    """)


def kill_while_saving(cmd, name: str, tmp_path: Path) -> None:
    """Run ``cmd`` (a python with SLOW_SAVE_HOOK installed) and SIGKILL it while it writes the
    checkpoint whose file name contains ``name``."""
    marker = tmp_path / "saving"
    env = {**ENV, "SLOW_SAVE_NAME": name, "SLOW_SAVE_MARKER": str(marker)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"{cmd} ended before saving {name}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"{cmd} never reached the save of {name}"
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()


def _killed_while_saving(tmp_path: Path, saver: str) -> Path:
    """KILLED_RUN SIGKILLed while it writes checkpoint_epoch=2.pt; returns its ckpt_dir."""
    script, ckpt_dir = tmp_path / "run.py", tmp_path / "models"
    script.write_text(KILLED_RUN)
    kill_while_saving([sys.executable, str(script), str(ckpt_dir), saver], "epoch=2", tmp_path)
    return ckpt_dir


def _checkpoint(path: Path, iteration: int) -> Path:
    """A checkpoint as the bundles write it (a trainer state holding ``iteration``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": {"w": torch.ones(2)}, "trainer": {"iteration": iteration}}, path)
    return path


def test_killed_during_save_keeps_previous_checkpoint(tmp_path):
    ckpt_dir = _killed_while_saving(tmp_path, "SafeCheckpointSaver")
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["checkpoint_epoch=1.pt"]
    assert find_resume_checkpoint(ckpt_dir) == ckpt_dir / "checkpoint_epoch=1.pt"
    assert (
        torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)["trainer"]["iteration"]
        == 2
    )
    (leftover,) = ckpt_dir.glob(".checkpoint_epoch=2.pt.*.tmp")  # the interrupted write
    check_ckpt_dir(ckpt_dir, resuming=True)  # a resumed run clears it
    assert not leftover.exists()


def test_killed_during_save_with_monai_saver_loses_the_run(tmp_path):
    """What SafeCheckpointSaver fixes (audit #48 / section 3): MONAI's saver removes epoch 1
    before writing epoch 2, so the kill leaves a truncated file and nothing to resume from."""
    ckpt_dir = _killed_while_saving(tmp_path, "CheckpointSaver")
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["checkpoint_epoch=2.pt"]
    with pytest.raises(UnreadableInputError, match=r"no intact checkpoint .*epoch=2\.pt"):
        find_resume_checkpoint(ckpt_dir)


@pytest.mark.parametrize("fixed_name", ["final", "key_metric"])
def test_failed_save_keeps_fixed_name_file(tmp_path, monkeypatch, fixed_name):
    """checkpoint_final.pt / model.pt are replaced only by a complete file."""
    net = torch.nn.Linear(2, 2)
    kwargs = (
        dict(save_final=True, final_filename="checkpoint_final.pt")
        if fixed_name == "final"
        else dict(save_key_metric=True, key_metric_name="m", key_metric_filename="model.pt")
    )
    name = kwargs.get("final_filename", "model.pt")
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(m=e.state.epoch)
    )
    SafeCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": net}, **kwargs).attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / name).read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)
    assert (tmp_path / name).read_bytes() == before
    expected = [name] + ([f"{name}.score.json"] if fixed_name == "key_metric" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected


def _validated_run(folder, scores, net):
    """A run whose validation after each epoch scores ``scores[epoch - 1]`` (key metric ``m``);
    returns the bytes of model.pt after each epoch."""
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(m=scores[e.state.epoch - 1])
    )
    saver = SafeCheckpointSaver(
        save_dir=str(folder),
        save_dict={"net": net},
        save_key_metric=True,
        key_metric_name="m",
        key_metric_filename="model.pt",
    )
    saver.attach(engine)
    seen = []

    def bump(e):
        with torch.no_grad():
            net.weight.add_(1.0)
        seen.append((folder / "model.pt").read_bytes())

    engine.add_event_handler(Events.EPOCH_COMPLETED, bump)
    engine.run([0], max_epochs=len(scores))
    return seen


def test_resumed_run_keeps_the_better_best_model(tmp_path):
    """model.pt of an interrupted run (best 0.8) is not replaced by a resumed run's worse first
    validation (0.6), only by a better one (0.9): its score sidecar is read back."""
    net = torch.nn.Linear(2, 2)
    first = _validated_run(tmp_path, [0.5, 0.8], net)
    assert first[0] != first[1], "the second, better validation replaces model.pt"
    assert json.loads((tmp_path / "model.pt.score.json").read_text())["priority"] == 0.8
    resumed = _validated_run(tmp_path, [0.6, 0.9], net)
    assert resumed[0] == first[1], "a resumed run's worse score replaced the better model.pt"
    assert resumed[1] != first[1], "a better score must replace model.pt"
    assert json.loads((tmp_path / "model.pt.score.json").read_text())["priority"] == 0.9


def test_monai_saver_removes_final_checkpoint_before_writing(tmp_path, monkeypatch):
    """The failure mode of the row above without the fix (MONAI's own saver)."""
    engine = Engine(lambda e, b: None)
    CheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"net": torch.nn.Linear(2, 2)},
        save_final=True,
        final_filename="checkpoint_final.pt",
    ).attach(engine)
    engine.run([0], max_epochs=1)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        engine.run([0], max_epochs=2)
    assert not (tmp_path / "checkpoint_final.pt").exists()


def test_resume_from_corrupt_file_names_it(tmp_path):
    empty = tmp_path / "checkpoint_epoch=3.pt"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableInputError, match=r"checkpoint_epoch=3\.pt \(0 bytes\) cannot"):
        select_resume_checkpoint(tmp_path, resume_from=str(empty))
    truncated = tmp_path / "checkpoint_epoch=4.pt"
    truncated.write_bytes(_checkpoint(tmp_path / "x.pt", 2).read_bytes()[:100])
    with pytest.raises(UnreadableInputError, match=r"epoch=4\.pt \(100 bytes\).*truncated"):
        select_resume_checkpoint(tmp_path, resume_from=str(truncated))


def test_resume_from_missing_file_names_it(tmp_path):
    missing = tmp_path / "models" / "checkpoint_epoch=10.pt"
    with pytest.raises(MissingInputError, match=r"--resume_from .*epoch=10\.pt: no such"):
        select_resume_checkpoint(tmp_path, resume_from=str(missing))


def test_resume_with_nothing_to_resume_names_ckpt_dir(tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(MissingInputError, match=f"ckpt_dir {folder} holds no checkpoint"):
            select_resume_checkpoint(folder, resume="true")
    assert select_resume_checkpoint(tmp_path, resume=False) == ""


def test_resume_picks_newest_by_iteration_not_mtime(tmp_path):
    newest = _checkpoint(tmp_path / "checkpoint_epoch=3.pt", 6)
    _checkpoint(tmp_path / "checkpoint_final.pt", 4)  # an earlier run's end, written later
    _checkpoint(tmp_path / "checkpoint_epoch=1.pt", 2)
    torch.save({"net1": {}}, tmp_path / "model.pt")  # best model: not a training checkpoint
    assert select_resume_checkpoint(tmp_path, resume=True) == str(newest)
    explicit = tmp_path / "checkpoint_epoch=1.pt"
    assert select_resume_checkpoint(tmp_path, True, resume_from=str(explicit)) == str(explicit)


def test_newest_corrupt_falls_back_with_warning_naming_both(tmp_path, caplog):
    intact = _checkpoint(tmp_path / "checkpoint_epoch=2.pt", 4)
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(tmp_path) == intact
    assert "checkpoint_epoch=3.pt (0 bytes) cannot be loaded" in caplog.text
    assert f"resuming from {intact} instead" in caplog.text


def test_new_run_into_used_ckpt_dir_stops(tmp_path):
    check_ckpt_dir(tmp_path / "absent")  # a fresh folder: fine
    check_ckpt_dir(tmp_path)  # an empty one too
    (tmp_path / "events.out").write_text("")  # not a checkpoint
    check_ckpt_dir(tmp_path)
    torch.save({"net1": {}}, tmp_path / "model.pt")
    _checkpoint(tmp_path / "checkpoint_final.pt", 4)
    with pytest.raises(InputError, match="holds another run's checkpoints") as err:
        check_ckpt_dir(tmp_path, overwrite="false")
    for option in ("--resume true", "--overwrite true", "--ckpt_dir", "checkpoint_final.pt"):
        assert option in str(err.value), (option, str(err.value))
    check_ckpt_dir(tmp_path, resuming=True)  # continuing the run: allowed, nothing removed
    assert (tmp_path / "model.pt").is_file()
    check_ckpt_dir(tmp_path, overwrite=True)  # explicit: the old run's files go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.out"]


def test_flags_from_the_command_line():
    assert as_flag("true", "resume") and as_flag("True", "resume") and as_flag(True, "resume")
    assert not as_flag("false", "resume") and not as_flag(False, "resume")
    with pytest.raises(InputError, match="--overwrite 'maybe': expected true or false"):
        as_flag("maybe", "overwrite")
