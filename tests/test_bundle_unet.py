"""The supervised 2D UNet bundle, end to end through ``python -m monai.bundle`` on synthetic data.

Real configs with tiny overrides (64x64 patches, 1 epoch, batch 4): training writes a checkpoint,
evaluate.json writes per-case metrics, inference.json writes one label map per case, the metadata
validates against our local schema, and multi_gpu_train.json runs under torchrun with gloo.
"""

import csv
import json
import math
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, SCHEMA, TORCHRUN_2, run_bundle, tiny_overrides
from monai.bundle import ConfigWorkflow, verify_metadata
from monai.networks.nets import UNet

from sslseg.datasets.synthetic import make_slices

CONFIGS = BUNDLES / "supervised_unet" / "configs"
TRAIN, EVALUATE, INFER = (str(CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic ACDC-like set: 16 labeled 64x64 slices, 1 validation + 1 test volume (8x64x64)."""
    root = tmp_path_factory.mktemp("acdc_synth")
    datalist = make_slices(
        root, num_volumes=6, depth=8, size=64, num_classes=NUM_CLASSES, seed=0, num_labeled=2
    )
    return {"dataset_dir": str(root), "datalist": datalist, "work": tmp_path_factory.mktemp("run")}


def _overrides(data, **extra) -> dict:
    """The tiny-run overrides shared by every command (paths under the test's tmp dir)."""
    tiny = tiny_overrides(
        data["dataset_dir"], data["datalist"], data["work"], patch_size=[64, 64], batch_size=4
    )
    return {**tiny, **extra}


_run = run_bundle


def _assert_unet_checkpoint(path: Path) -> None:
    assert path.is_file(), f"no checkpoint at {path}"
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_CLASSES,
        channels=[16, 32, 64, 128, 256],
        strides=[2, 2, 2, 2],
        num_res_units=2,
        norm="batch",
        dropout=0.1,
    )
    net.load_state_dict(state)  # strict: same architecture, no DDP "module." prefix


@pytest.fixture(scope="module")
def trained(data):
    """One tiny training run shared by the evaluate / inference tests."""
    log = _run([TRAIN], _overrides(data))
    return {"log": log, "ckpt": data["work"] / "models" / "model.pt"}


@pytest.mark.parametrize(
    "workflow_type,configs",
    [
        ("train", [TRAIN]),
        ("infer", [INFER]),  # standalone, as in the model zoo
        ("infer", [TRAIN, EVALUATE]),
    ],
)
def test_required_properties(data, workflow_type, configs):
    workflow = ConfigWorkflow(config_file=configs, workflow_type=workflow_type, **_overrides(data))
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(CONFIGS.parent)
    assert str(workflow.device) in ("cpu", "cuda")


@pytest.mark.slow
def test_train_writes_checkpoint(trained):
    assert "train_loss" in trained["log"] and "val_mean_dice" in trained["log"]
    _assert_unet_checkpoint(trained["ckpt"])


@pytest.mark.slow
def test_evaluate_writes_case_metrics(data, trained):
    out = data["work"] / "evaluate"
    _run([TRAIN, EVALUATE], _overrides(data, output_dir=str(out)))
    doc = json.loads((out / "metrics.json").read_text())
    n_val = len(json.loads(Path(data["datalist"]).read_text())["validation"])
    assert len(doc["cases"]) == n_val
    assert doc["cases"][0]["case"] == "vol_004.h5"
    for key in ("dice_mean", "jaccard_mean", *(f"dice_{c}" for c in range(1, NUM_CLASSES))):
        assert 0.0 <= doc["mean"][key] <= 1.0, (key, doc["mean"][key])
    assert math.isfinite(doc["mean"]["dice_mean"])
    assert "hd95_mean" in doc["mean"] and "asd_mean" in doc["mean"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [c["case"] for c in doc["cases"]] + ["mean"]


@pytest.mark.slow
def test_inference_writes_one_label_map_per_case(data, trained):
    out = data["work"] / "predictions"
    _run([INFER], _overrides(data, output_dir=str(out)))  # inference.json alone
    cases = json.loads(Path(data["datalist"]).read_text())["test"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(c["image"]).stem + "_seg.nii.gz" for c in cases)
    with h5py.File(Path(data["dataset_dir"]) / cases[0]["image"], "r") as f:
        shape = f["image"].shape
    pred = np.asarray(nib.load(str(out / written[0])).dataobj)
    assert pred.shape == shape, (pred.shape, shape)
    assert pred.min() >= 0 and pred.max() < NUM_CLASSES


def test_metadata_verifies_against_local_schema(tmp_path):
    meta = str(CONFIGS / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(SCHEMA))  # raises on failure; no download
    broken = json.loads(Path(meta).read_text())
    del broken["eval_metrics"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="eval_metrics"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_multi_gpu_train_runs_with_torchrun_gloo(data, tmp_path):
    """2 processes on CPU (gloo); the validation split gets 2 volumes so each rank has one."""
    datalist = json.loads(Path(data["datalist"]).read_text())
    datalist["validation"] += datalist["test"]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    overrides = _overrides(
        data,
        datalist=str(tmp_path / "datalist.json"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    log = _run([TRAIN, MULTI_GPU], overrides, launcher=TORCHRUN_2)
    assert "val_mean_dice" in log
    _assert_unet_checkpoint(tmp_path / "models" / "model.pt")
