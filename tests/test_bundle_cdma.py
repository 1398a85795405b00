"""The CDMA bundle end to end through ``python -m monai.bundle`` on synthetic H&E patches.

Real configs with tiny overrides: MTNet with a ResNet-18 encoder and 16-channel decoders, 64x64
patches of 96x96 PNG pairs, 2+2 images per iteration, 2-iteration epochs, max_iterations 4 with
unsup_warmup 0.25 (the cross-distillation and entropy terms start at iteration 2, the lr drops at
iterations 1 and 3). Training writes a checkpoint with the network, the optimizer, the scheduler
and the RNG state; evaluate.json writes per-case metrics of the final checkpoint; inference.json
alone writes label maps and overlays of the size of each (non-square) image, from a datalist or an
image folder; the supervised baseline trains on the labeled stream alone; multi_gpu_train.json runs
under torchrun with gloo; a run resumed after epoch 1 ends with the same weights as a straight run
(feature noise on: its RNG is resumed too). Bad PNG inputs (RGBA, grayscale, mask values, sizes)
and a bad inference_branch end the run with a message naming the file / key; {0, 255} masks are
accepted. The GlaS datalist is checked on the real data when it is there.
"""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    BUNDLES,
    ENV,
    REPO,
    SCHEMA,
    TORCHRUN_2,
    check_resume_equals_straight,
    run_bundle,
    tiny_overrides,
)
from monai.bundle import ConfigWorkflow, verify_metadata
from PIL import Image

from monai_bundles.cdma.networks import MTNet
from monai_bundles.common.command import bundle_run_command
from sslseg.datasets.pathology import glas_datalist
from sslseg.datasets.synthetic import make_binary_patches
from sslseg.paths import data_root

CONFIGS = BUNDLES / "cdma" / "configs"
TRAIN, SUPERVISED, EVALUATE, INFER, MULTI_GPU = (
    str(CONFIGS / f"{n}.json")
    for n in ("train", "train_supervised", "evaluate", "inference", "multi_gpu_train")
)
LOGGING = str(CONFIGS / "logging.conf")
# the labeled mask (and the validation mask) stored as {0, 255} in the shared synthetic set
MASK_255 = ("labels/patch_0001.png", "labels/patch_0012.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic H&E patches, 96x96: 4 labeled, 8 unlabeled, 2 validation, 2 test; one labeled
    and one validation mask rewritten as {0, 255} (accepted as {0, 1})."""
    root = tmp_path_factory.mktemp("cdma_data")
    datalist = make_binary_patches(root, num=16, size=96, seed=0, num_labeled=4)
    for name in MASK_255:
        mask = np.asarray(Image.open(root / name))
        assert set(np.unique(mask)) == {0, 1}
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / name)
    return str(root), datalist


def _overrides(data, work: Path, **extra) -> dict:
    """Tiny-run overrides shared by every command (paths under ``work``)."""
    dataset_dir, datalist = data
    tiny = dict(
        encoder="resnet18",
        decoder_channels=16,
        patch_size=[64, 64],
        labeled_batch_size=2,
        unlabeled_batch_size=2,
        epoch_length=2,
        max_iterations=4,
        unsup_warmup=0.25,
    )
    return {**tiny_overrides(dataset_dir, datalist, work, **tiny), **extra}


def _run(config_files, overrides: dict, launcher=(sys.executable,)) -> str:
    """The bundle run with the bundle's logging.conf."""
    return run_bundle(config_files, {**overrides, "logging_file": LOGGING}, launcher)


def _run_failing(config_files, overrides: dict) -> tuple:
    """A bundle run expected to fail: ``(returncode, last stderr line, log tail)``."""
    cmd = bundle_run_command(config_files, overrides)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines() or [""]
    return proc.returncode, lines[-1], (proc.stdout + proc.stderr)[-3000:]


def _load(path: Path) -> dict:
    assert path.is_file(), f"no checkpoint at {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


def _iterations(log: str) -> list:
    """``[(epoch, iteration in epoch, {term: value}), ...]`` of the trainer's StatsHandler lines
    ("Epoch: 1/2, Iter: 1/2 -- loss: 0.73 loss_cdkd: 0.0000 ...")."""
    rows = []
    for m in re.finditer(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- (.*)", log):
        terms = dict(re.findall(r"(\w+): (-?[\d.]+(?:e-?\d+)?)", m.group(3)))
        rows.append((int(m.group(1)), int(m.group(2)), terms))
    return rows


def _mtnet() -> MTNet:
    return MTNet(encoder="resnet18", decoder_channels=16)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One tiny training run, 2 epochs (4 iterations), shared by the evaluate / inference tests."""
    work = tmp_path_factory.mktemp("cdma_run")
    log = _run([TRAIN], _overrides(data, work, max_epochs=2))
    return {"log": log, "work": work}


@pytest.mark.parametrize(
    "workflow_type,configs",
    [
        ("train", [TRAIN]),
        ("train", [TRAIN, SUPERVISED]),
        ("infer", [INFER]),  # standalone, as in the model zoo
        ("infer", [TRAIN, EVALUATE]),
    ],
)
def test_required_properties(data, tmp_path, workflow_type, configs):
    workflow = ConfigWorkflow(
        config_file=configs, workflow_type=workflow_type, **_overrides(data, tmp_path)
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(CONFIGS.parent)


@pytest.mark.slow
def test_train_writes_checkpoint_and_warms_up(trained):
    log = trained["log"]
    for term in ("loss_cdkd", "loss_um", "loss_sup", "val_mean_dice"):
        assert term in log, f"{term} not logged:\n{log[-2000:]}"
    state = _load(trained["work"] / "models" / "checkpoint_final.pt")
    assert {"net", "optimizer", "lr_scheduler", "trainer", "rng"} <= set(state)
    _mtnet().load_state_dict(state["net"])  # strict: the bundle's MTNet, no DDP prefix
    assert state["trainer"]["iteration"] == 2 * 2  # epoch_length 2, max_epochs 2
    _mtnet().load_state_dict(_load(trained["work"] / "models" / "model.pt"))  # the bare net
    rows = _iterations(log)
    assert [(e, i) for e, i, _ in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)], log[-2000:]
    # warm-up = int(0.25 * 4) = 1 iteration: no cross distillation at iteration 1, then some
    assert float(rows[0][2]["loss_cdkd"]) == 0.0 and float(rows[0][2]["loss_um"]) == 0.0
    assert all(float(terms["loss_cdkd"]) > 0 for _, _, terms in rows[1:]), rows
    assert all(float(terms["loss_um"]) > 0 for _, _, terms in rows[1:]), rows


@pytest.mark.slow
def test_mask_of_0_255_is_accepted(data, trained):
    """A {0, 255} mask in the labeled and the validation split trains and validates (the shared
    run's data holds two of them)."""
    root = Path(data[0])
    for name in MASK_255:
        assert set(np.unique(np.asarray(Image.open(root / name)))) == {0, 255}
    assert "val_mean_dice" in trained["log"]
    assert (trained["work"] / "models" / "checkpoint_final.pt").is_file()


@pytest.mark.slow
def test_evaluate_writes_case_metrics(data, trained):
    out = trained["work"] / "evaluate"
    log = _run([TRAIN, EVALUATE], _overrides(data, trained["work"], output_dir=str(out)))
    final = trained["work"] / "models" / "checkpoint_final.pt"
    assert f"evaluating checkpoint {final}" in log, log[-2000:]  # the final one, not model.pt
    doc = json.loads((out / "metrics.json").read_text())
    test_cases = [Path(c["image"]).name for c in json.loads(Path(data[1]).read_text())["test"]]
    assert [c["case"] for c in doc["cases"]] == test_cases == ["patch_0014.png", "patch_0015.png"]
    assert 0.0 <= doc["mean"]["dice_mean"] <= 1.0
    assert {"hd95_mean", "asd_mean", "hd95_1", "asd_1"} <= set(doc["mean"])
    assert (out / "metrics.csv").is_file()


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """Non-square H&E-like RGB images: ``img_wide.png`` (H 80, W 112) and ``img_tall.png``
    (H 112, W 80), a ``mask_wide.png`` beside them that image_pattern ``img_*.png`` skips, and a
    datalist whose ``test`` split lists the two images. Returns ``(folder, datalist path)``."""
    root = tmp_path_factory.mktemp("cdma_wide")
    make_binary_patches(root / "src", num=8, size=112, seed=1)
    src = np.asarray(Image.open(root / "src" / "images" / "patch_0000.png"))
    folder = root / "images"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(src[:80])).save(folder / "img_wide.png")
    Image.fromarray(np.ascontiguousarray(src[:, :80])).save(folder / "img_tall.png")
    Image.fromarray(np.zeros((80, 112), np.uint8)).save(folder / "mask_wide.png")
    datalist = root / "datalist.json"
    datalist.write_text(
        json.dumps({"test": [{"image": "images/img_wide.png"}, {"image": "images/img_tall.png"}]})
    )
    return folder, datalist


IMAGE_SHAPES = {"img_wide": (80, 112), "img_tall": (112, 80)}


@pytest.mark.slow
def test_inference_writes_label_maps_and_overlays(data, trained, wide_images):
    """inference.json alone (the checkpoint and the images, no training config): label maps of
    each image's (H, W) in {0, 1} and RGB overlays; mask_scale 255 writes {0, 255}; an image
    folder as datalist with image_pattern."""
    folder, datalist = wide_images
    work = trained["work"]
    out = work / "predictions"
    common = _overrides(data, work, dataset_dir=str(datalist.parent))
    _run([INFER], {**common, "datalist": str(datalist), "output_dir": str(out)})
    expected = sorted(f"{s}_{k}.png" for s in IMAGE_SHAPES for k in ("seg", "overlay"))
    assert sorted(p.name for p in out.iterdir()) == expected
    segs = {}
    for stem, (h, w) in IMAGE_SHAPES.items():
        seg = np.asarray(Image.open(out / f"{stem}_seg.png"))
        assert seg.shape == (h, w) and seg.dtype == np.uint8, (stem, seg.shape)
        assert set(np.unique(seg)) <= {0, 1}, np.unique(seg)
        segs[stem] = seg
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape == (h, w, 3), (stem, overlay.shape)

    out255 = work / "predictions_255"
    overrides = {**common, "datalist": str(folder), "image_pattern": "img_*.png"}
    _run([INFER], {**overrides, "output_dir": str(out255), "mask_scale": 255})
    assert sorted(p.name for p in out255.iterdir()) == expected  # mask_wide.png not predicted
    for stem, seg in segs.items():
        seg255 = np.asarray(Image.open(out255 / f"{stem}_seg.png"))
        assert set(np.unique(seg255)) <= {0, 255}
        np.testing.assert_array_equal(seg255, seg.astype(np.uint8) * 255, err_msg=stem)


@pytest.mark.slow
def test_supervised_baseline_trains_on_labeled_stream(data, tmp_path):
    log = _run([TRAIN, SUPERVISED], _overrides(data, tmp_path))
    rows = _iterations(log)
    assert len(rows) == 2, log[-2000:]  # iteration 2 is past the warm-up
    for _, _, terms in rows:
        assert float(terms["loss_sup"]) > 0
        assert float(terms["loss_cdkd"]) == 0.0 and float(terms["loss_um"]) == 0.0, terms
    state = _load(tmp_path / "models" / "checkpoint_final.pt")
    _mtnet().load_state_dict(state["net"])
    assert state["trainer"]["iteration"] == 2


@pytest.mark.slow
def test_resume_continues_the_same_run(data, tmp_path):
    """2 epochs straight == 1 epoch, then resume from its checkpoint for the 2nd epoch (the lr
    drops at iteration 3, the warm-up ends at 1: both runs use max_iterations 4; the feature
    noise and dropout draws must be resumed too)."""
    check_resume_equals_straight(
        lambda o: _run([TRAIN], o),
        lambda work, **extra: _overrides(data, work, val_interval=100, **extra),
        tmp_path,
        ["net"],
        _load,
    )


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_multi_gpu_train_runs_with_torchrun_gloo(data, tmp_path):
    """2 processes on CPU (gloo), batches per process: 1 labeled + 1 unlabeled; the validation
    split holds 2 patches: each rank validates one."""
    assert len(json.loads(Path(data[1]).read_text())["validation"]) == 2
    overrides = _overrides(data, tmp_path, labeled_batch_size=1, unlabeled_batch_size=1)
    log = _run([TRAIN, MULTI_GPU], overrides, launcher=TORCHRUN_2)
    assert "val_mean_dice" in log and "loss_cdkd" in log
    state = _load(tmp_path / "models" / "checkpoint_final.pt")
    _mtnet().load_state_dict(state["net"])  # saved without the DDP "module."


def test_metadata_verifies_against_local_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


# ----------------------------------------------------------------------------- bad inputs
# The RGBA image is the FIRST item of its split: CacheDataset fills its cache in a thread pool that
# an error leaves running on the later items; before sslseg.errors' hook exited at once after its
# message, the interpreter's shutdown then sometimes aborted (SIGABRT, "terminate called without
# an active exception" after the "error: ..." line, about 1 run in 6).
def _bad_copy(data, tmp_path: Path) -> Path:
    """A copy of the synthetic set to spoil (paths of the datalist are relative)."""
    root = tmp_path / "data"
    shutil.copytree(data[0], root)
    return root


def _bad_overrides(root: Path, tmp_path: Path, **extra) -> dict:
    return _overrides((str(root), str(root / "datalist.json")), tmp_path / "run", **extra)


@pytest.mark.slow
@pytest.mark.parametrize(
    "split_image,mode,expected",
    [
        ("images/patch_0000.png", "RGBA", "4 channel(s) (RGBA) but 3 are expected"),  # labeled
        ("images/patch_0011.png", "L", "1 channel(s) (grayscale) but 3 are expected"),  # unlabeled
    ],
)
def test_image_not_rgb_names_the_file(data, tmp_path, split_image, mode, expected):
    root = _bad_copy(data, tmp_path)
    path = root / split_image
    Image.open(path).convert(mode).save(path)
    rc, last, tail = _run_failing([TRAIN], _bad_overrides(root, tmp_path))
    assert rc != 0 and last.startswith("error: "), tail
    assert str(path.resolve()) in last and expected in last, last


@pytest.mark.slow
def test_mask_value_outside_binary_names_the_file_and_value(data, tmp_path):
    """A {0, 1, 2} mask stops the run when the config is resolved (datalist_split's label check)."""
    root = _bad_copy(data, tmp_path)
    name = "labels/patch_0002.png"
    mask = np.asarray(Image.open(root / name)).copy()
    mask[:4, :4] = 2
    Image.fromarray(mask).save(root / name)
    assert set(np.unique(np.asarray(Image.open(root / name)))) == {0, 1, 2}
    rc, last, tail = _run_failing([TRAIN], _bad_overrides(root, tmp_path))
    assert rc != 0 and last.startswith("error: split 'labeled' of datalist"), tail
    assert f"{name} holds 2" in last and "outside the 2 classes" in last, last


@pytest.mark.slow
def test_mask_size_differs_from_image_names_both_files(data, tmp_path):
    root = _bad_copy(data, tmp_path)
    image, label = root / "images/patch_0003.png", root / "labels/patch_0003.png"
    Image.open(label).resize((80, 96), Image.NEAREST).save(label)  # (W 80, H 96) vs 96x96
    rc, last, tail = _run_failing([TRAIN], _bad_overrides(root, tmp_path))
    assert rc != 0 and last.startswith("error: "), tail
    assert "spatial shapes differ" in last, last
    assert str(image.resolve()) in last and str(label.resolve()) in last, last


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        {"inference_branch": "xyz"},
        {"branches": ["sa", "ca"], "inference_branch": "csa"},
    ],
)
def test_inference_branch_not_a_branch_is_refused(data, tmp_path, extra):
    rc, last, tail = _run_failing([TRAIN], _overrides(data, tmp_path / "run", **extra))
    assert rc != 0 and last.startswith("error: inference_branch "), tail
    assert repr(extra["inference_branch"]) in last, last


# ----------------------------------------------------------------------------- real GlaS data
def _glas_dir():
    root = data_root()
    return None if root is None else root / "glas"


@pytest.mark.skipif(
    _glas_dir() is None or not _glas_dir().is_dir(),
    reason="GlaS absent: no <data root>/glas (set SSLSEG_DATA or put the data at "
    "../shared/data/glas)",
)
def test_glas_datalist_on_real_data(tmp_path):
    glas = _glas_dir()
    splits = glas_datalist(glas, labeled=8, seed=0)
    labeled = [Path(it["image"]).stem for it in splits["labeled"]]
    unlabeled = [Path(it["image"]).stem for it in splits["unlabeled"]]
    test = [Path(it["image"]).stem for it in splits["test"]]
    assert (len(labeled), len(unlabeled), len(test)) == (8, 77, 20)
    assert not set(labeled) & set(unlabeled) and not (set(labeled) | set(unlabeled)) & set(test)
    assert len(set(labeled + unlabeled + test)) == 105
    with open(glas / "grade.csv", newline="") as f:
        grades = {r[0].strip(): r[2].strip() for r in list(csv.reader(f))[1:]}
    assert sorted(grades[n] for n in labeled) == ["benign"] * 3 + ["malignant"] * 5
    assert all(it["label"].endswith("_mask.png") for it in splits["labeled"] + splits["test"])
    assert glas_datalist(glas, labeled=8, seed=0) == splits
    assert [it["image"] for it in glas_datalist(glas, labeled=8, seed=1)["labeled"]] != [
        it["image"] for it in splits["labeled"]
    ]

    workflow = ConfigWorkflow(
        config_file=[TRAIN],
        workflow_type="train",
        num_workers=0,
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.parser.get_parsed_content("datalist") == splits


def test_pretrained_file_freezes_the_encoder_norm_by_default():
    """The issue's rule: frozen BatchNorm only when pretrained weights are given (the reference
    freezes ImageNet statistics); from scratch the encoder's BatchNorm trains."""
    from monai.bundle import ConfigParser

    for pretrained, expected in (("", "bn"), ("/some/resnet50.pth", "frozen_bn")):
        parser = ConfigParser()
        parser.read_config(TRAIN)
        parser["pretrained"] = pretrained
        assert parser.get_parsed_content("backbone_norm") == expected, pretrained
        assert parser["network_def"]["pretrained_weights"] == "@pretrained"


@pytest.mark.slow
def test_digestpath_tiles_train_and_evaluate(tmp_path):
    """``sslseg-convert digestpath`` output -> train.json + train_digestpath.json (its default
    datalist, ``<dataset_dir>/datalist.json``) trains, and evaluate.json scores the whole test
    images by sliding window."""
    from test_pathology_data import fake_digestpath

    from sslseg.datasets.pathology import convert_digestpath

    src, lists = fake_digestpath(tmp_path / "digestpath")
    out = tmp_path / "digestpath_tiles"
    convert_digestpath(src, lists, out, tile=64)
    configs = [TRAIN, str(CONFIGS / "train_digestpath.json")]
    overrides = _overrides((str(out), ""), tmp_path / "run")
    del overrides["datalist"]  # train_digestpath.json's own: <dataset_dir>/datalist.json
    log = _run(configs, overrides)
    assert "loss_cdkd" in log and "val_mean_dice" in log, log[-2000:]
    _run([*configs, EVALUATE], overrides)
    doc = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["test1.png"], doc["cases"]


@pytest.mark.parametrize("config", [TRAIN, INFER])
def test_sw_average_probabilities_averages_softmax(config):
    """``sw_average probabilities``: the evaluator's network returns the CSA branch's softmax
    (MONAI then averages probabilities over windows); ``logits`` (default): its logits."""
    from monai.bundle import ConfigParser

    x = torch.rand(1, 3, 64, 64)
    outputs = {}
    for mode in ("logits", "probabilities"):
        parser = ConfigParser()
        parser.read_config(config)
        parser.update({"sw_average": mode, "encoder": "resnet18", "decoder_channels": 16})
        torch.manual_seed(0)
        net = parser.get_parsed_content("prob_network").eval()
        with torch.no_grad():
            outputs[mode] = net(x)
    torch.testing.assert_close(outputs["probabilities"], torch.softmax(outputs["logits"], 1))
