"""Converters on the real data (skipped without it) and LIVECell on a synthetic polygon json."""

import json
import logging
from collections import Counter

import cv2
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from sslseg.datasets import (
    convert_edf,
    convert_isbi2014,
    convert_livecell,
    convert_miccai2015,
    convert_stardist,
    make_acdc_datalist,
    make_cells,
    make_la_datalist,
    make_nifti_datalist,
)
from sslseg.datasets.coco_utils import point_in_mask
from sslseg.datasets.io_utils import DATALIST_KEYS
from sslseg.paths import data_root

ROOT = data_root()
needs_data = pytest.mark.skipif(
    ROOT is None,
    reason="real data not found: set SSLSEG_DATA or "
    "put it at ../shared/data (sslseg.paths.data_root() is None)",
)


def _check_coco(json_path):
    """Load with pycocotools; every point lies inside its own decoded mask. Returns the COCO."""
    coco = COCO(json_path)
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        m = coco.annToMask(ann)
        assert m.shape == (img["height"], img["width"]) and m.sum() == ann["area"]
        assert ann["point_labels"] == [1] and point_in_mask(m, ann["point_coords"][0]), ann["id"]
    return coco


@pytest.fixture(scope="module")
def isbi(tmp_path_factory):
    if ROOT is None:
        pytest.skip("real data not found (sslseg.paths.data_root() is None)")
    out = tmp_path_factory.mktemp("isbi") / "isbi.json"
    return convert_isbi2014(ROOT / "isbi2014_cervical" / "train45", out, point_mode="nucleus")


@needs_data
def test_isbi2014(isbi):
    coco = _check_coco(isbi[0])
    cats = Counter(a["category_id"] for a in coco.anns.values())
    assert len(coco.imgs) == 45 and cats[1] == 270 and cats[2] > 0
    per_image = Counter(a["image_id"] for a in coco.anns.values() if a["category_id"] == 1)
    assert min(per_image.values()) == 2 and max(per_image.values()) == 10
    first = coco.imgs[1]
    assert first["file_name"] == "1.png" and (first["height"], first["width"]) == (512, 512)
    # cytoplasm masks overlap; with point_mode="nucleus" most cell points sit on a nucleus
    nuclei = {
        i: np.any([coco.annToMask(a) for a in coco.imgToAnns[i] if a["category_id"] == 2], axis=0)
        for i in (1, 2)
    }
    on_nucleus = [
        nuclei[a["image_id"]][int(a["point_coords"][0][1]), int(a["point_coords"][0][0])]
        for i in (1, 2)
        for a in coco.imgToAnns[i]
        if a["category_id"] == 1
    ]
    assert all(on_nucleus)


@needs_data
def test_edf(tmp_path):
    json_path, root = convert_edf(ROOT / "isbi2014_cervical" / "edf", tmp_path / "edf.json")
    coco = COCO(json_path)
    assert len(coco.imgs) == 16 and coco.dataset["annotations"] == []
    assert {(im["height"], im["width"]) for im in coco.imgs.values()} == {(1024, 1024)}


@needs_data
def test_miccai2015(tmp_path):
    json_path, root = convert_miccai2015(ROOT / "miccai2015_nuclei", tmp_path / "m.json")
    coco = _check_coco(json_path)
    assert len(coco.imgs) == 15 and len(coco.anns) == 2905
    assert {c["name"] for c in coco.dataset["categories"]} == {"cell"}
    # jittered points differ from centroids but stay inside (checked by _check_coco)
    jit, _ = convert_miccai2015(ROOT / "miccai2015_nuclei", tmp_path / "j.json", "jitter", 3.0)
    a, b = COCO(json_path).anns, _check_coco(jit).anns
    assert np.mean([a[k]["point_coords"] != b[k]["point_coords"] for k in a]) > 0.9


@needs_data
def test_stardist(tmp_path):
    json_path, root = convert_stardist(ROOT / "stardist_dsb2018", tmp_path / "sd.json")
    coco = _check_coco(json_path)
    assert len(coco.anns) == 125
    png = cv2.imread(f"{root}/{coco.imgs[1]['file_name']}", cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (512, 512) and png.max() == 255


def test_livecell_polygons(tmp_path):
    """A LIVECell-style json (polygons, annotations as a dict) built from synthetic cells."""
    json_path, image_root = make_cells(tmp_path / "cells", num_images=2, size=96)
    src = json.load(open(json_path))
    anns = {}
    for ann in src["annotations"]:
        m = mask_util.decode(ann["segmentation"])
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        anns[str(ann["id"])] = {k: ann[k] for k in ("id", "image_id", "category_id", "bbox")}
        anns[str(ann["id"])]["segmentation"] = polys
    livecell = dict(src, annotations=anns)
    (tmp_path / "lc.json").write_text(json.dumps(livecell))
    out, root = convert_livecell(tmp_path / "lc.json", image_root, tmp_path / "out.json")
    coco = _check_coco(out)
    assert len(coco.anns) == len(src["annotations"])
    assert all(isinstance(a["segmentation"], list) for a in coco.anns.values())
    bad = dict(livecell, images=[dict(livecell["images"][0], file_name="nope.png")])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        convert_livecell(tmp_path / "bad.json", image_root, tmp_path / "x.json")


def _splits(path, base):
    """All four splits; MONAI 1.6's loader raises IndexError on an empty ``test`` list."""
    raw = json.load(open(path))
    assert set(DATALIST_KEYS) <= set(raw)
    return {
        k: load_decathlon_datalist(path, True, k, base_dir=base) if raw[k] else []
        for k in DATALIST_KEYS
    }


@needs_data
def test_acdc(tmp_path, caplog):
    src = ROOT / "acdc"
    with caplog.at_level(logging.WARNING):
        s3 = _splits(make_acdc_datalist(src, tmp_path / "a3.json", 3), src)
    assert "40 of 40 test volumes" in caplog.text
    s7 = _splits(make_acdc_datalist(src, tmp_path / "a7.json", 7), src)
    assert len(s3["labeled"]) == 68 and len(s7["labeled"]) == 136
    for s in (s3, s7):
        assert len(s["labeled"]) + len(s["unlabeled"]) == 1312
        assert len(s["validation"]) == 20 and s["test"] == []
    sall = _splits(make_acdc_datalist(src, tmp_path / "all.json", "all"), src)
    assert len(sall["labeled"]) == 1312 and sall["unlabeled"] == []
    with pytest.raises(ValueError, match="labeled_patients"):
        make_acdc_datalist(src, tmp_path / "x.json", 71)


@needs_data
def test_la(tmp_path):
    src = ROOT / "la"
    s = _splits(make_la_datalist(src, tmp_path / "la.json", labeled=8), src)
    assert len(s["labeled"]) == 8 and len(s["unlabeled"]) == 8 and len(s["test"]) == 4
    with pytest.raises(FileNotFoundError, match="train.list"):
        make_la_datalist(src, tmp_path / "x.json", labeled=8, require_all=True)


@needs_data
def test_nifti(tmp_path):
    src = ROOT / "totalseg_ct"
    path = make_nifti_datalist(
        [(src / "example_ct_sm.nii.gz", src / "pancreas.nii.gz")], tmp_path / "ct.json"
    )
    item = _splits(path, src)["labeled"][0]
    d = LoadImaged(keys=("image", "label"))(item)
    assert tuple(d["image"].shape) == tuple(d["label"].shape) == (122, 101, 30)
    assert int(d["label"].sum()) == 548
    import nibabel as nib

    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(small))
    with pytest.raises(ValueError, match=r"small\.nii\.gz has shape \(4, 4, 4\)"):
        make_nifti_datalist([(src / "example_ct_sm.nii.gz", small)], tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a NIfTI"):
        make_nifti_datalist(
            [(src / "example_ct_sm.nii.gz", ROOT / "la" / "train.list")], tmp_path / "bad.json"
        )


def test_missing_source_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="isbi_train_GT.mat|images"):
        (tmp_path / "images").mkdir()
        cv2.imwrite(str(tmp_path / "images" / "1.png"), np.zeros((8, 8), np.uint8))
        convert_isbi2014(tmp_path, tmp_path / "o.json")
    with pytest.raises(FileNotFoundError, match="has no instance map"):
        cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8), np.uint8))
        convert_miccai2015(tmp_path, tmp_path / "o.json")
