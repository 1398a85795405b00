"""The synthetic generator writes exactly the formats of docs/data_formats.md, reproducibly."""

import filecmp
import json
import os

import h5py
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from sslseg.datasets.cli import convert as cli_convert
from sslseg.datasets.coco_utils import point_in_mask
from sslseg.datasets.io_utils import DATALIST_KEYS
from sslseg.datasets.synthetic import (
    make_binary_patches,
    make_cells,
    make_slices,
    make_unlabeled_cells,
    make_volumes,
)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    out = tmp_path_factory.mktemp("cells")
    return make_cells(out, num_images=4, size=128, seed=0)


def _decode(ann):
    return mask_util.decode(ann["segmentation"]).astype(bool)


def test_cells_coco_format(cells):
    json_path, image_root = cells
    coco = COCO(json_path)
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {
        1: "cytoplasm",
        2: "nuclei",
    }
    assert len(coco.imgs) == 4
    for img in coco.imgs.values():
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        cyto = [a for a in anns if a["category_id"] == 1]
        nuc = [a for a in anns if a["category_id"] == 2]
        assert 3 <= len(cyto) <= 8 and len(nuc) == len(cyto)
        for a in anns:
            assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0
            m = _decode(a)
            assert m.shape == (img["height"], img["width"])
            assert a["area"] == m.sum()
            rows, cols = np.nonzero(m)
            assert a["bbox"] == [cols.min(), rows.min(), cols.ptp() + 1, rows.ptp() + 1]
            assert a["point_labels"] == [1] and point_in_mask(m, a["point_coords"][0])
        cyto_masks = [_decode(a) for a in cyto]
        assert (np.sum(cyto_masks, axis=0) > 1).any(), "cytoplasm masks should overlap"
        for c, n in zip(cyto_masks, [_decode(a) for a in nuc]):  # nucleus i belongs to cell i
            assert n.any() and not (n & ~c).any()


def test_cells_image_darker_in_overlaps(cells):
    import cv2

    json_path, image_root = cells
    coco = COCO(json_path)
    img = coco.imgs[1]
    pix = cv2.imread(os.path.join(image_root, img["file_name"]), cv2.IMREAD_UNCHANGED)
    assert pix.ndim == 2 and pix.dtype == np.uint8
    anns = coco.loadAnns(coco.getAnnIds(imgIds=1))
    cover = np.sum([_decode(a) for a in anns if a["category_id"] == 1], axis=0)
    nuclei = np.any([_decode(a) for a in anns if a["category_id"] == 2], axis=0)
    bg, single = pix[cover == 0].mean(), pix[(cover == 1) & ~nuclei].mean()
    assert bg > single + 20 and pix[nuclei].mean() < single - 20


def test_unlabeled_cells(tmp_path):
    json_path, image_root = make_unlabeled_cells(tmp_path, num_images=3, size=96)
    d = json.load(open(json_path))
    assert d["annotations"] == [] and len(d["images"]) == 3
    assert all(os.path.isfile(os.path.join(image_root, im["file_name"])) for im in d["images"])


def _check_datalist(path, base):
    for key in DATALIST_KEYS:
        items = load_decathlon_datalist(
            path, is_segmentation=True, data_list_key=key, base_dir=base
        )
        assert items, f"split {key} empty"
        for it in items:
            assert os.path.isfile(it["image"])
            assert ("label" in it) == (key != "unlabeled")
    return json.load(open(path))


def test_binary_patches(tmp_path):
    import cv2

    path = make_binary_patches(tmp_path, num=16, size=64)
    d = _check_datalist(path, tmp_path)
    assert [len(d[k]) for k in DATALIST_KEYS] == [3, 9, 2, 2]
    item = d["labeled"][0]
    img = cv2.imread(str(tmp_path / item["image"]), cv2.IMREAD_UNCHANGED)
    lab = cv2.imread(str(tmp_path / item["label"]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (64, 64, 3) and lab.shape == (64, 64) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1}


def test_slices(tmp_path):
    path = make_slices(tmp_path, num_volumes=6, depth=4, size=32, num_labeled=2)
    d = _check_datalist(path, tmp_path)
    assert [len(d[k]) for k in DATALIST_KEYS] == [8, 8, 1, 1]  # 4 train volumes x 4 slices
    with h5py.File(tmp_path / d["labeled"][0]["image"]) as f:
        assert f["image"].shape == (32, 32) and f["image"].dtype == np.float32
        assert f["label"].dtype == np.uint8
    with h5py.File(tmp_path / d["validation"][0]["image"]) as f:
        img, lab = f["image"][()], f["label"][()]
    assert img.shape == lab.shape == (4, 32, 32) and img.min() >= 0 and img.max() <= 1
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert img[lab == 3].mean() > img[lab == 2].mean()  # LV blood brighter than myocardium


def test_volumes(tmp_path):
    path = make_volumes(tmp_path, num=6, shape=(40, 36, 24), num_labeled=2)
    d = _check_datalist(path, tmp_path)
    assert [len(d[k]) for k in DATALIST_KEYS] == [2, 3, 1, 1]
    with h5py.File(tmp_path / d["labeled"][0]["image"]) as f:
        img, lab = f["image"][()], f["label"][()]
    assert img.shape == lab.shape == (40, 36, 24)
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    assert abs(img.mean()) < 1e-3 and img[lab == 1].mean() > img[lab == 0].mean()


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    return not (cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files) and all(
        _same_tree(os.path.join(a, s), os.path.join(b, s)) for s in cmp.common_dirs
    )


def test_seeded(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_cells(tmp_path / name / "cells", num_images=2, size=64, seed=seed)
        make_slices(tmp_path / name / "slices", num_volumes=6, depth=2, size=16, seed=seed)
    assert _same_tree(tmp_path / "a", tmp_path / "b")
    for sub in ("cells/images/0000.png", "cells/cells.json", "slices/data/vol_005.h5"):
        assert not filecmp.cmp(tmp_path / "a" / sub, tmp_path / "c" / sub, shallow=False), sub


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_labeled"):
        make_slices(tmp_path, num_volumes=6, num_labeled=4)
    with pytest.raises(ValueError, match="num_classes"):
        make_slices(tmp_path, num_classes=5)


def test_cli(tmp_path):
    json_path, _ = cli_convert(
        ["synthetic", "cells", "--out", str(tmp_path), "--num", "2", "--size", "64"]
    )
    assert len(json.load(open(json_path))["images"]) == 2
