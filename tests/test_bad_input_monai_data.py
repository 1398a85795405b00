"""Bad input on the MONAI side, its converters and coco_eval: one test per row of the
``monai-data`` section of ``docs/bad_inputs.md``.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import BUNDLES, ENV, REPO, run_bundle
from monai.bundle import ConfigParser

from monai_bundles.common.command import bundle_run_command, check_overrides
from monai_bundles.common.datalist import datalist_split
from monai_bundles.common.eval_checkpoint import select_eval_checkpoint
from monai_bundles.common.readers import H5Reader
from sslseg.datasets import make_nifti_datalist
from sslseg.datasets.synthetic import make_slices, make_volumes
from sslseg.errors import InputError, InputKeyError, MissingInputError, find_input_error
from sslseg.metrics.cli import main as coco_eval_main

UNET = BUNDLES / "supervised_unet" / "configs"
DMD = BUNDLES / "dmd" / "configs"
CDMA = BUNDLES / "cdma" / "configs"


@pytest.fixture
def slices(tmp_path):
    """A tiny synthetic ACDC-like set (4 classes): ``(dataset_dir, datalist json path)``."""
    root = tmp_path / "acdc"
    datalist = make_slices(root, num_volumes=6, depth=2, size=32, num_classes=4, num_labeled=2)
    return root, datalist


def _set_label(path, fill=None, value=None):
    """Overwrite the ``label`` of an h5 file: all ``fill``, or one pixel set to ``value``."""
    with h5py.File(path, "r+") as f:
        lab = f["label"][()]
        if fill is not None:
            lab[...] = fill
        if value is not None:
            lab.flat[0] = value
        del f["label"]
        f["label"] = lab


def _run(config_files, overrides, timeout=300):
    """``python -m monai.bundle run`` (not expected to succeed): ``(returncode, stderr lines)``."""
    cmd = bundle_run_command([str(f) for f in config_files], overrides)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_innermost_input_error_found_through_wrappers():
    """MONAI wraps the reader's error twice ("applying transform", "Failed to instantiate")."""
    try:
        try:
            try:
                raise InputKeyError("f.h5 has no dataset 'label'")
            except KeyError as e:
                raise RuntimeError("applying transform") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as e:
        err = find_input_error(e)
    assert isinstance(err, KeyError) and err.message == "f.h5 has no dataset 'label'"
    assert str(err) == err.message  # not KeyError's quoted repr
    assert find_input_error(RuntimeError("x")) is None


def test_bundle_run_ends_with_the_input_error(tmp_path):
    """#12-#22, #20: the last stderr line of a failed bundle run is the project's message."""
    bad = tmp_path / "datalist.json"
    bad.write_text("{not json")
    rc, lines = _run(
        [UNET / "train.json"],
        {"dataset_dir": str(tmp_path), "datalist": str(bad), "num_workers": 0},
    )
    assert rc != 0
    assert lines[-1].startswith("error: datalist ") and str(bad) in lines[-1], lines[-5:]
    assert "is not valid json" in lines[-1]
    assert any("Traceback" in line for line in lines)  # the full trace is still there, above


def test_datalist_not_json_names_the_file(tmp_path):
    """#20: a datalist that is not json (or not an object of splits) names the datalist."""
    bad = tmp_path / "dl.json"
    bad.write_text("image,label\na.h5,a.h5\n")
    with pytest.raises(InputError, match=r"dl\.json' is not valid json"):
        datalist_split(str(bad), "labeled", str(tmp_path))
    bad.write_text(json.dumps([{"image": "a.h5"}]))
    with pytest.raises(InputError, match=r"dl\.json' holds a json list, not an object of splits"):
        datalist_split(str(bad), "labeled", str(tmp_path))


def test_label_outside_class_range_names_file_and_values(slices):
    """#18: a label value 255 in a 4-class set stops the bundle run at load time, naming the
    file and the value (was `index 255 is out of bounds` in the loss, 69 frames)."""
    root, datalist = slices
    first = json.loads(open(datalist).read())["labeled"][0]["label"]
    _set_label(root / first, value=255)
    rc, lines = _run(
        [UNET / "train.json"],
        {"dataset_dir": str(root), "datalist": datalist, "num_workers": 0, "max_epochs": 1},
    )
    assert rc != 0 and lines[-1].startswith("error: split 'labeled' of datalist"), lines[-5:]
    assert "outside the 4 classes 0..3" in lines[-1] and f"{first} holds 255" in lines[-1]


def test_labels_all_background_warned_with_count(slices, caplog):
    """#17: all-background label files in a labeled split give one warning with the count."""
    root, datalist = slices
    items = json.loads(open(datalist).read())["labeled"]
    for item in items[:3]:
        _set_label(root / item["label"], fill=0)
    with caplog.at_level(logging.WARNING):
        datalist_split(datalist, "labeled", str(root), num_classes=4)
    assert f"3 of {len(items)} label files are all background" in caplog.text
    assert "split 'labeled' of datalist" in caplog.text


@pytest.mark.parametrize("bundle", [UNET, DMD, CDMA])
def test_bundles_check_labels_of_training_and_validation(bundle):
    """#17, #18: every bundle's labeled and validation datasets pass its class count."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "train.json"))
    for split in ("train", "validate"):
        assert parser[f"{split}#dataset#data#num_classes"] == "@num_classes", (bundle, split)


def test_too_few_validation_items_for_the_processes(slices):
    """#51: fewer validation items than processes names the split (was MONAI's "dataset length
    is less than the number of participating ranks"); multi_gpu_train.json passes the count."""
    root, datalist = slices
    with pytest.raises(
        InputError, match=r"split 'validation' .* has 1 item\(s\), fewer than the 2"
    ):
        datalist_split(datalist, "validation", str(root), min_items=2)
    for bundle in (UNET, DMD, CDMA):
        overrides = json.loads((bundle / "multi_gpu_train.json").read_text())
        assert overrides["validate#dataset#data#min_items"] == "$dist.get_world_size()", bundle


def test_mistyped_bundle_key_is_refused(slices, tmp_path):
    """#45: `--max_epoch 1` (a typo of max_epochs) stops the run before training, naming the key
    and its close match (was: ignored, and the default 300 epochs ran)."""
    root, datalist = slices
    rc, lines = _run(
        [UNET / "train.json"],
        {"dataset_dir": str(root), "datalist": datalist, "max_epoch": 1, "num_workers": 0},
    )
    assert rc != 0 and lines[-1].startswith("error: unknown bundle key(s) --max_epoch"), lines[-5:]
    assert "close: max_epochs" in lines[-1]


@pytest.mark.parametrize("bundle", [UNET, DMD, CDMA])
def test_override_check_allows_keys_nested_ids_and_run_args(bundle):
    """What `check_overrides` lets through: config keys of all merged files (evaluate's too),
    `a#b` ids with an existing parent, MONAI's own run arguments; other programs are not
    checked."""
    import monai

    main = str(Path(monai.__file__).parent / "bundle" / "__main__.py")
    files = [str(bundle / "train.json"), str(bundle / "evaluate.json")]
    good = {
        "max_epochs": 1,
        "evaluator#amp": False,  # "evaluator" is evaluate.json's
        "train#dataset#cache_rate": 0,
        "validate#new_key": 1,
        "logging_file": "l.conf",
        "meta_file": "m.json",
    }
    check_overrides([main, *bundle_run_command(files, good, launcher=[])[2:]])
    check_overrides(["pytest", "--max_epoch", "1"])  # not a bundle run
    bad = bundle_run_command(files, {"nope#x": 1, "max_epoch": 1}, launcher=[])[2:]
    with pytest.raises(InputError, match=r"--nope#x \(close: none\); --max_epoch \(close: max_"):
        check_overrides([main, *bad])
    for cfg in ("train.json", "multi_gpu_train.json"):
        init = json.loads((bundle / cfg).read_text())["initialize"]
        assert init[1] == "$check_overrides()", (bundle, cfg)  # first, before anything is built


def test_sslseg_convert_exits_0_and_prints_once(tmp_path):
    """`sslseg-convert` (the installed console script) exits 0 on success and prints its result
    once on stdout (was: exit status 1 and the result a 2nd time on stderr)."""
    script = Path(sys.executable).parent / "sslseg-convert"
    args = ["synthetic", "cells", "--out", str(tmp_path), "--num", "1", "--size", "32"]
    proc = subprocess.run([str(script), *args], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(tmp_path) in proc.stdout and str(tmp_path) not in proc.stderr
    assert proc.stdout.count(str(tmp_path / "cells.json")) == 1, proc.stdout


def _coco_files(tmp_path, num_images=2, scores=(0.9,)):
    """gt with ``num_images`` 16x16 images (one square cell each); predictions (perfect masks)
    on image 1 only, one per score."""
    from pycocotools import mask as mask_util

    m = np.zeros((16, 16), np.uint8)
    m[3:9, 3:9] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    images = [
        {"id": i, "file_name": f"{i}.png", "height": 16, "width": 16}
        for i in range(1, 1 + num_images)
    ]
    anns = [
        {
            "id": i,
            "image_id": i,
            "category_id": 1,
            "segmentation": rle,
            "area": 36,
            "bbox": [3, 3, 6, 6],
            "iscrowd": 0,
        }
        for i in range(1, 1 + num_images)
    ]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    preds = [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": s} for s in scores]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds))  # NaN/Infinity literals as Python's json writes them
    return str(gt_path), str(pred_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high"])
def test_coco_eval_refuses_non_finite_scores(tmp_path, capsys, bad):
    """#8: a NaN/infinite (or non-number) score is refused naming the prediction index (was: rc
    0 and a changed AP50)."""
    gt, pred = _coco_files(tmp_path, num_images=1, scores=(0.9, bad))
    assert coco_eval_main(["--gt", gt, "--pred", pred]) == 2
    err = capsys.readouterr().err
    assert f"error: prediction 1 in {pred}: score" in err and "not a finite number" in err


def test_coco_eval_reports_images_without_predictions(tmp_path, capsys, caplog):
    """#11: gt images without any prediction are counted in a warning (they count as misses);
    the table says its unit."""
    gt, pred = _coco_files(tmp_path, num_images=4)
    assert coco_eval_main(["--gt", gt, "--pred", pred]) == 0
    assert "3 of 4 ground-truth images" in caplog.text and "they count as misses" in caplog.text
    assert capsys.readouterr().out.splitlines()[0] == "all values in percent (0-100):"


def test_eval_checkpoint_falls_back_to_final(tmp_path, caplog):
    """#46: evaluate without model.pt (no validation ran) loads checkpoint_final.pt, saying so;
    with neither, the error names the folder, both files and --eval_checkpoint."""
    with pytest.raises(MissingInputError, match=r"neither model.pt .* nor checkpoint_final.pt"):
        select_eval_checkpoint(tmp_path)
    (tmp_path / "checkpoint_final.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert select_eval_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    assert "evaluating the final checkpoint" in caplog.text
    (tmp_path / "model.pt").write_bytes(b"")
    assert select_eval_checkpoint(tmp_path) == str(tmp_path / "model.pt")
    for bundle in (UNET, DMD):
        parser = ConfigParser()
        parser.read_config([str(bundle / "train.json"), str(bundle / "evaluate.json")])
        loader = parser["validate#handlers#0"]
        assert loader["_target_"].endswith("EvalCheckpointLoader"), bundle
        assert loader["load_path"] == "@eval_checkpoint" and parser["eval_checkpoint"] == ""


@pytest.mark.slow
def test_evaluate_after_a_run_without_validation(slices, tmp_path):
    """#46 end to end (UNet bundle): train 1 epoch with validation every 5, then evaluate.json
    as documented: it evaluates checkpoint_final.pt and says so."""
    root, datalist = slices
    work = tmp_path / "run"
    common = {
        "dataset_dir": str(root),
        "datalist": datalist,
        "num_workers": 0,
        "patch_size": [32, 32],
        "batch_size": 4,
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
    }
    run_bundle([str(UNET / "train.json")], {**common, "max_epochs": 1, "val_interval": 5})
    assert not (work / "models" / "model.pt").exists()
    log = run_bundle([str(UNET / "train.json"), str(UNET / "evaluate.json")], common)
    assert "evaluating the final checkpoint" in log and (work / "eval" / "metrics.json").is_file()


def _nifti_set(tmp_path, num=3):
    """``num`` LA-like 24x24x16 cases written as NIfTI image/label pairs (+ one unlabeled image),
    and the datalist ``sslseg-convert nifti`` makes of them (1 validation case)."""
    import nibabel as nib

    h5_dir = tmp_path / "h5"
    make_volumes(h5_dir, num=6, shape=(24, 24, 16), seed=0, num_labeled=2)
    pairs = []
    for i in range(num + 1):
        with h5py.File(h5_dir / "volumes" / f"case_{i:03d}.h5", "r") as f:
            img, lab = f["image"][()], f["label"][()]
        pair = (tmp_path / "nii" / f"case{i}.nii.gz", tmp_path / "nii" / f"case{i}_seg.nii.gz")
        pair[0].parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(pair[0]))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(pair[1]))
        pairs.append(pair)
    unlabeled = [pairs.pop()[0]]
    datalist = make_nifti_datalist(
        pairs, tmp_path / "nii.json", num_validation=1, unlabeled=unlabeled
    )
    return str(tmp_path / "nii"), datalist, pairs


def test_nifti_datalist_loads_through_the_bundle_pipeline(tmp_path):
    """#50: a datalist of `sslseg-convert nifti` goes through a bundle's own loading transforms
    (DMD's `load_h5`: H5Reader picks NibabelReader by suffix) and its label check (was:
    "H5Reader: cannot open <f>.nii.gz (... not HDF5)", 99 frames)."""
    base, datalist, pairs = _nifti_set(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(DMD / "train.json"))
    parser.update({"dataset_dir": base, "datalist": datalist, "cache_rate": 0, "num_workers": 0})
    item = parser.get_parsed_content("validate#dataset")[0]
    assert tuple(item["image"].shape) == tuple(item["label"].shape) == (1, 24, 24, 16)
    assert item["image"].meta["filename_or_obj"] == str(pairs[2][0].resolve())
    assert set(np.unique(item["label"].numpy())) <= {0.0, 1.0}
    train = parser.get_parsed_content("train#dataset")
    assert len(train) == 2 and tuple(train[0]["label"].shape)[0] == 1


def test_unsupported_image_format_names_the_file(tmp_path):
    """#50's neighbour: a file neither h5 nor NIfTI is named with what to do."""
    png = tmp_path / "x.png"
    png.write_bytes(b"")
    with pytest.raises(InputError, match=r"x\.png is neither h5 .* nor NIfTI .*sslseg-convert"):
        H5Reader(dataset="image").get_data(str(png))


@pytest.mark.slow
def test_nifti_datalist_trains_the_3d_bundle(tmp_path):
    """#50 end to end: DMD's (3D) train.json trains and validates on a NIfTI datalist."""
    base, datalist, _ = _nifti_set(tmp_path)
    work = tmp_path / "run"
    overrides = {
        "dataset_dir": base,
        "datalist": datalist,
        "patch_size": [16, 16, 16],
        "sw_strides": [8, 8, 8],
        "labeled_batch_size": 1,
        "unlabeled_batch_size": 1,
        "epoch_length": 2,
        "max_epochs": 1,
        "val_interval": 1,
        "num_workers": 0,
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
    }
    run_bundle([str(DMD / "train.json")], overrides)
    assert (work / "models" / "model.pt").is_file()  # validation ran on the NIfTI volume


def test_converter_and_data_root_errors_end_short(tmp_path):
    """Converters' and the bundles' own datalist builders' bad input: `sslseg-convert` prints
    `error: <message>` and exits 2 (no traceback); a bundle whose dataset_dir lacks the LA
    list files ends with the message naming the file."""
    script = Path(sys.executable).parent / "sslseg-convert"
    proc = subprocess.run(
        [str(script), "edf", str(tmp_path), str(tmp_path / "out.json")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        proc.stderr.strip().splitlines()[-1] == f"error: no images matching EDF*.png in {tmp_path}"
    )
    rc, lines = _run([DMD / "train.json"], {"dataset_dir": str(tmp_path), "num_workers": 0})
    assert rc != 0 and lines[-1].startswith("error: list file ") and str(tmp_path) in lines[-1]


WORKER_SCRIPT = """
import monai_bundles  # noqa: F401  (installs the hook)
from monai.data import DataLoader, Dataset
from monai.transforms import Lambdad
from sslseg.errors import InputKeyError

def bad(x):
    raise InputKeyError("H5Reader: /d/x.h5 has no dataset 'label'; datasets present: ['image']")

if __name__ == "__main__":
    for _ in DataLoader(Dataset([{"a": 1}], transform=Lambdad("a", bad)), num_workers=1):
        pass
"""


def test_input_error_in_a_dataloader_worker_ends_the_output(tmp_path):
    """#12-#22 with cache_rate 0 and loader workers (evaluate.json): the worker's InputError
    reaches the main process only as formatted text; its message is still the last line."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: H5Reader: /d/x.h5 has no dataset 'label'; datasets present: ['image']"


@pytest.mark.parametrize("bundle", [UNET, DMD, CDMA])
def test_standalone_inference_checks_overrides_too(bundle):
    """#45 for inference.json alone: its keys and its train.json's are accepted (one set of
    overrides serves both), a typo is refused."""
    import monai

    main = str(Path(monai.__file__).parent / "bundle" / "__main__.py")
    infer, train = str(bundle / "inference.json"), str(bundle / "train.json")
    good = bundle_run_command([infer], {"output_dir": "o", "max_epochs": 1}, launcher=[])[2:]
    check_overrides([main, *good], accept_keys_of=[train])
    bad = bundle_run_command([infer], {"checkpoint_path": "x.pt"}, launcher=[])[2:]
    with pytest.raises(InputError, match=r"--checkpoint_path \(close: checkpoint"):
        check_overrides([main, *bad], accept_keys_of=[train])
    init = json.loads((bundle / "inference.json").read_text())["initialize"]
    assert init[1] == "$check_overrides(accept_keys_of=[@bundle_root + '/configs/train.json'])"


def test_config_value_errors_are_input_errors(tmp_path, monkeypatch):
    """A bad data root or inferer setting a user passes on the command line is an InputError
    (the bundle run ends with its message), still a FileNotFoundError / ValueError to callers."""
    from monai_bundles.common.inferers import SliceVolumeInferer, la_overlap
    from sslseg.paths import data_root

    monkeypatch.setenv("SSLSEG_DATA", str(tmp_path / "nope"))
    with pytest.raises(MissingInputError, match="nope.*is not a directory"):
        data_root()
    with pytest.raises(InputError, match="stride 200 must be in 1..112"):
        la_overlap((112, 112, 80), (200, 18, 4))
    with pytest.raises(InputError, match="roi_size must be"):
        SliceVolumeInferer(roi_size=(64, 64, 8))
