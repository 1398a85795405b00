"""Bundle runs killed while saving, resumed with ``--resume true``, and kept from each other.

The supervised UNet bundle through ``python -m monai.bundle`` on synthetic slices (64x64, batch 4,
4 iterations per epoch): a run SIGKILLed while writing ``checkpoint_epoch=2.pt`` keeps
``checkpoint_epoch=1.pt``; ``--resume true`` continues from it and ends with exactly the weights,
optimizer and iteration of a straight run; a second run into the same ``ckpt_dir`` stops with a
message naming the options, and ``--overwrite true`` replaces the old run. DMD (ACDC, 2D):
``--resume true`` continues a finished 1-epoch run in its own ``ckpt_dir`` (the exact resume of
DMD with ``--resume_from``: test_bundle_dmd.py).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUNDLES, ENV, REPO, run_bundle, tiny_overrides
from test_bad_input_monai_ckpt import SLOW_SAVE_HOOK, kill_while_saving

from monai_bundles.common.command import bundle_run_command
from sslseg.datasets.synthetic import make_slices

UNET = str(BUNDLES / "supervised_unet" / "configs" / "train.json")
# python -m monai.bundle with SLOW_SAVE_HOOK installed first
HOOKED_MONAI_BUNDLE = SLOW_SAVE_HOOK + (
    "import runpy, sys\n"
    "sys.argv = ['monai.bundle'] + sys.argv[3:]  # drop '-m monai.bundle'\n"
    "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic ACDC-like slices: 16 labeled 64x64 slices, 1 validation volume."""
    root = tmp_path_factory.mktemp("acdc_synth")
    datalist = make_slices(root, num_volumes=6, depth=8, size=64, seed=0, num_labeled=2)
    return str(root), datalist


def _overrides(data, work: Path, **extra) -> dict:
    dataset_dir, datalist = data
    tiny = dict(patch_size=[64, 64], batch_size=4, max_epochs=2, val_interval=2, cache_rate=0)
    return {**tiny_overrides(dataset_dir, datalist, work, **tiny), **extra}


def _load(path: Path) -> dict:
    assert path.is_file(), f"no checkpoint at {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=f"model.{key} differs")
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][i], state, msg=f"momentum {i} differs")


@pytest.mark.slow
def test_unet_killed_while_saving_resumes_like_a_straight_run(data, tmp_path):
    straight = tmp_path / "straight"
    run_bundle([UNET], _overrides(data, straight))
    killed = tmp_path / "killed"
    hook = tmp_path / "hooked_bundle.py"
    hook.write_text(HOOKED_MONAI_BUNDLE)
    cmd = bundle_run_command([UNET], _overrides(data, killed), (sys.executable, str(hook)))
    kill_while_saving(cmd, "checkpoint_epoch=2", tmp_path)
    models = killed / "models"
    # epoch 2's validation wrote model.pt before the kill; epoch 2's checkpoint never came
    assert sorted(p.name for p in models.glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert list(models.glob(".checkpoint_epoch=2.pt.*.tmp")), "the interrupted write is hidden"

    log = run_bundle([UNET], _overrides(data, killed, resume=True))
    assert f"resuming from {models / 'checkpoint_epoch=1.pt'}" in log, log[-3000:]
    assert "Epoch: 1/2" not in log, "the resumed run must start at epoch 2"
    assert not list(models.glob(".*.tmp")), "the interrupted write's temp file is cleared"
    _assert_same_run(
        _load(straight / "models" / "checkpoint_final.pt"),
        _load(models / "checkpoint_final.pt"),
    )
    assert sorted(p.name for p in models.glob("*.pt")) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_final.pt",
        "model.pt",
    ]


@pytest.mark.slow
def test_unet_second_run_into_used_ckpt_dir(data, tmp_path):
    run_bundle([UNET], _overrides(data, tmp_path, max_epochs=1, val_interval=1))
    best = (tmp_path / "models" / "model.pt").read_bytes()
    cmd = bundle_run_command([UNET], _overrides(data, tmp_path, max_epochs=1))
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "holds another run's checkpoints" in last and "--overwrite true" in last, last
    assert (tmp_path / "models" / "model.pt").read_bytes() == best, "model.pt was touched"
    log = run_bundle([UNET], _overrides(data, tmp_path, max_epochs=1, overwrite=True))
    assert "removing the previous run's" in log


@pytest.mark.slow
def test_dmd_resume_true_continues_in_the_same_ckpt_dir(data, tmp_path):
    """DMD (ACDC, 2D): 1 epoch, then ``--resume true --max_epochs 2`` in the same folder."""
    configs = [str(BUNDLES / "dmd" / "configs" / f) for f in ("train.json", "train_acdc.json")]
    dataset_dir, datalist = data
    tiny = dict(patch_size=[64, 64], labeled_batch_size=2, unlabeled_batch_size=2, epoch_length=2)
    overrides = tiny_overrides(dataset_dir, datalist, tmp_path, **tiny)
    run_bundle(configs, overrides)
    models = tmp_path / "models"
    log = run_bundle(configs, {**overrides, "max_epochs": 2, "resume": True})
    assert f"resuming from {models / 'checkpoint_final.pt'}" in log, log[-3000:]
    assert _load(models / "checkpoint_final.pt")["trainer"]["iteration"] == 4
    # the resumed run's epoch 2 replaced epoch 1's checkpoint (n_saved 1), none left behind
    assert sorted(p.name for p in models.glob("*.pt")) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_final.pt",
        "model.pt",
    ]
