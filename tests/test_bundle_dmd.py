"""The DMD bundle end to end through ``python -m monai.bundle`` on synthetic data.

Real configs with tiny overrides: LA (3D V-Nets, 48x48x32 volumes, 32x32x16 patches) and ACDC
(2D U-Nets, 64x64 slices), 2-iteration epochs. Training writes a checkpoint with both networks,
the optimizer and the RNG state; evaluate.json writes per-case metrics; inference.json writes
label maps; the supervised baseline trains network 1 alone; multi_gpu_train.json runs under
torchrun with gloo; a run resumed after epoch 1 ends with the same weights as a straight run.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    BUNDLES,
    SCHEMA,
    TORCHRUN_2,
    check_resume_equals_straight,
    run_bundle,
    tiny_overrides,
)
from monai.bundle import ConfigWorkflow, verify_metadata

from monai_bundles.common.networks import VNet
from sslseg.datasets.synthetic import make_slices, make_volumes
from sslseg.paths import data_root

CONFIGS = BUNDLES / "dmd" / "configs"
TRAIN, ACDC, SUPERVISED, EVALUATE, INFER, INFER_ACDC, MULTI_GPU = (
    str(CONFIGS / f"{n}.json")
    for n in (
        "train",
        "train_acdc",
        "train_supervised",
        "evaluate",
        "inference",
        "inference_acdc",
        "multi_gpu_train",
    )
)
LOGGING = str(CONFIGS / "logging.conf")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic LA-like volumes (2 labeled, 3 unlabeled, 1 test) and ACDC-like slices."""
    root = tmp_path_factory.mktemp("dmd_data")
    la = make_volumes(root / "la", num=6, shape=(48, 48, 32), seed=0, num_labeled=2)
    acdc = make_slices(root / "acdc", num_volumes=6, depth=8, size=64, seed=0, num_labeled=2)
    return {"la": (str(root / "la"), la), "acdc": (str(root / "acdc"), acdc)}


def _overrides(data, work: Path, task: str = "la", **extra) -> dict:
    """Tiny-run overrides shared by every command (paths under ``work``)."""
    dataset_dir, datalist = data[task]
    tiny = dict(
        patch_size=[32, 32, 16] if task == "la" else [64, 64],
        labeled_batch_size=2,
        unlabeled_batch_size=2,
        epoch_length=2,
    )
    return {**tiny_overrides(dataset_dir, datalist, work, **tiny), **extra}


def _run(config_files, overrides: dict, launcher=(sys.executable,)) -> str:
    """The bundle run with the bundle's logging.conf."""
    return run_bundle(config_files, {**overrides, "logging_file": LOGGING}, launcher)


def _load(path: Path) -> dict:
    assert path.is_file(), f"no checkpoint at {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained_la(data, tmp_path_factory):
    """One tiny LA training run shared by the evaluate / inference tests."""
    work = tmp_path_factory.mktemp("la_run")
    log = _run([TRAIN], _overrides(data, work))
    return {"log": log, "work": work}


@pytest.mark.parametrize(
    "workflow_type,configs,task",
    [
        ("train", [TRAIN], "la"),
        ("train", [TRAIN, ACDC], "acdc"),
        ("train", [TRAIN, SUPERVISED], "la"),
        ("infer", [INFER], "la"),  # standalone, as in the model zoo
        ("infer", [INFER, INFER_ACDC], "acdc"),
        ("infer", [TRAIN, EVALUATE], "la"),
    ],
)
def test_required_properties(data, tmp_path, workflow_type, configs, task):
    workflow = ConfigWorkflow(
        config_file=configs, workflow_type=workflow_type, **_overrides(data, tmp_path, task)
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(CONFIGS.parent)


@pytest.mark.slow
def test_train_la_writes_two_network_checkpoint(trained_la):
    log = trained_la["log"]
    assert "loss_distill" in log and "val_mean_dice" in log, log[-2000:]
    state = _load(trained_la["work"] / "models" / "checkpoint_final.pt")
    assert {"net1", "net2", "optimizer", "lr_scheduler", "trainer", "rng"} <= set(state)
    net = VNet(n_channels=1, n_classes=1, has_dropout=True)
    net.load_state_dict(state["net1"])  # strict: the bundle's V-Net, no DDP prefix
    net.load_state_dict(state["net2"])
    assert not torch.equal(
        state["net1"]["out_conv.weight"], state["net2"]["out_conv.weight"]
    ), "the two networks must start from different initialisations"
    assert state["trainer"]["iteration"] == 2
    assert set(_load(trained_la["work"] / "models" / "model.pt")) == {"net1", "net2"}


@pytest.mark.slow
def test_evaluate_writes_case_metrics(data, trained_la):
    out = trained_la["work"] / "evaluate"
    _run([TRAIN, EVALUATE], _overrides(data, trained_la["work"], output_dir=str(out)))
    doc = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["case_005.h5"]
    assert 0.0 <= doc["mean"]["dice_mean"] <= 1.0
    assert (out / "metrics.csv").is_file()


@pytest.mark.slow
def test_inference_writes_label_maps(data, trained_la):
    out = trained_la["work"] / "predictions"
    overrides = _overrides(data, trained_la["work"], output_dir=str(out), ensemble=True)
    _run([INFER], overrides)  # inference.json alone: model.pt + images, no training config
    assert sorted(p.name for p in out.iterdir()) == ["case_005_seg.nii.gz"]


@pytest.mark.slow
def test_train_acdc_then_evaluate(data, tmp_path):
    overrides = _overrides(data, tmp_path, "acdc", distill="kl", detach_target=True)
    assert "loss_distill" in _run([TRAIN, ACDC], overrides)
    state = _load(tmp_path / "models" / "checkpoint_final.pt")
    assert {"net1", "net2", "optimizer"} <= set(state)
    assert state["net1"]["out_conv.weight"].shape[0] == 4
    _run([TRAIN, ACDC, EVALUATE], overrides)
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(doc["cases"]) == 1 and "dice_3" in doc["mean"]  # one 8x64x64 volume, 4 classes


@pytest.mark.slow
def test_supervised_baseline_trains_network1_alone(data, tmp_path):
    log = _run([TRAIN, SUPERVISED], _overrides(data, tmp_path))
    assert "SupervisedTrainer" in log and "loss_distill" not in log
    state = _load(tmp_path / "models" / "checkpoint_final.pt")
    assert "net1" in state and "net2" not in state and state["trainer"]["iteration"] == 2
    n_params = sum(p.numel() for p in VNet(has_dropout=True).parameters())
    momentum = state["optimizer"]["state"]
    assert sum(s["momentum_buffer"].numel() for s in momentum.values()) == n_params


def test_metadata_verifies_against_local_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.slow
def test_resume_continues_the_same_run(data, tmp_path):
    """2 epochs straight == 1 epoch, then resume from its checkpoint for the 2nd epoch (the lr
    drops mid-epoch 2: the scheduler state counts)."""
    check_resume_equals_straight(
        lambda o: _run([TRAIN], o),
        lambda work, **extra: _overrides(data, work, val_interval=100, lr_step=3, **extra),
        tmp_path,
        ["net1", "net2"],
        _load,
    )


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_multi_gpu_train_runs_with_torchrun_gloo(data, tmp_path):
    """2 processes on CPU (gloo), batches per process: 1 labeled + 1 unlabeled; the validation
    split lists its volume twice so that each rank validates one."""
    datalist = json.loads(Path(data["la"][1]).read_text())
    datalist["validation"] *= 2
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    overrides = _overrides(
        data,
        tmp_path,
        datalist=str(tmp_path / "datalist.json"),
        labeled_batch_size=1,
        unlabeled_batch_size=1,
    )
    log = _run([TRAIN, MULTI_GPU], overrides, launcher=TORCHRUN_2)
    assert "val_mean_dice" in log
    state = _load(tmp_path / "models" / "checkpoint_final.pt")
    VNet(has_dropout=True).load_state_dict(state["net1"])  # saved without the DDP "module."


@pytest.mark.skipif(
    data_root() is None,
    reason="real data root absent (set SSLSEG_DATA or put "
    "the data at ../shared/data): bare-command defaults need it",
)
@pytest.mark.parametrize(
    "files,n_labeled,temperature",
    [
        (["train.json"], 8, 2.0),
        (["train.json", "train_la16.json"], 16, 1.93),
        (["train.json", "train_acdc.json"], 68, 2.0),  # 3 patients = first 68 slices
    ],
)
def test_bare_command_defaults_build_published_splits(
    tmp_path, monkeypatch, files, n_labeled, temperature
):
    """With no --dataset_dir/--datalist the bundle finds the data root and builds the datalist
    in memory: resolving the config writes no file."""
    from monai.bundle import ConfigParser

    monkeypatch.setenv("SSLSEG_WORK", str(tmp_path))
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.parse()
    splits = parser.get_parsed_content("datalist")
    assert isinstance(splits, dict) and list(tmp_path.iterdir()) == [], "a file was written"
    assert len(splits["labeled"]) == n_labeled
    assert splits["validation"], "no validation cases"
    assert parser.get_parsed_content("temperature") == pytest.approx(temperature)
