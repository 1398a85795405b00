"""ATSO on real CT geometry (totalseg_ct: one abdominal CT, 122x101x30 at 3 mm, a model-made
pancreas mask; never an accuracy claim): the HU window of train_ct.json, NIfTI images and labels,
three-view training and inference on an anisotropic volume, NIfTI pseudo labels with the image's
affine. Skips when the staged data is absent."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from monai_bundles.atso import BUNDLE_ROOT
from monai_bundles.atso.workflow import ATSOWorkflow
from sslseg.paths import data_root

CONFIGS = f"{BUNDLE_ROOT}/configs"


def _ct_dir():
    root = data_root()
    if root is None or not (root / "totalseg_ct" / "example_ct_sm.nii.gz").is_file():
        pytest.skip("totalseg_ct not staged (../shared/data/totalseg_ct; SSLSEG_DATA)")
    return root / "totalseg_ct"


@pytest.mark.slow
def test_ct_three_views_nifti_pseudo_labels(tmp_path):
    src = _ct_dir()
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b", "c"):  # S, R (one case), test: the same CT under three names
        shutil.copyfile(src / "example_ct_sm.nii.gz", data / f"ct_{name}.nii.gz")
        shutil.copyfile(src / "pancreas.nii.gz", data / f"ct_{name}_label.nii.gz")
    datalist = {
        "labeled": [{"image": "ct_a.nii.gz", "label": "ct_a_label.nii.gz"}],
        "unlabeled": [{"image": "ct_b.nii.gz", "label": "ct_b_label.nii.gz"}],
        "test": [{"image": "ct_c.nii.gz", "label": "ct_c_label.nii.gz"}],
    }
    (data / "datalist.json").write_text(json.dumps(datalist))
    wf = ATSOWorkflow(
        config_file=[f"{CONFIGS}/train.json", f"{CONFIGS}/train_ct.json"],
        logging_file=False,
        dataset_dir=str(data),
        run_dir=str(tmp_path / "run"),
        method="self_learning",
        generations=1,
        m0_iterations=2,
        generation_iterations=2,
        slice_size=[32, 32],
        batch_size=1,
    )
    wf.initialize()
    summary = wf.run()
    image = nib.load(str(data / "ct_b.nii.gz"))
    pseudo = nib.load(str(tmp_path / "run" / "g01" / "pseudo" / "ct_b.nii.gz"))
    assert pseudo.shape == image.shape == (122, 101, 30)
    assert pseudo.get_data_dtype() == np.uint8
    np.testing.assert_allclose(pseudo.affine, image.affine, atol=1e-4)
    manifest = json.loads((tmp_path / "run" / "g01" / "pseudo" / "manifest.json").read_text())
    assert manifest["cases"]["ct_b"]["dice_R"] is not None  # R's ground truth: @R only
    assert 0.0 <= summary["final_metrics"]["dice_mean"] <= 1.0


def test_ct_config_applies_the_rstn_hu_window():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([f"{CONFIGS}/train.json", f"{CONFIGS}/train_ct.json"])
    parser["dataset_dir"] = "/nonexistent"
    (window,) = parser.get_parsed_content("intensity")
    x = np.array([[[[-1000.0, -100.0, 70.0, 240.0, 3000.0]]]], dtype=np.float32)
    out = np.asarray(window({"image": x})["image"])
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
