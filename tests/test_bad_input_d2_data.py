"""Bad inputs of the Detectron2 data side (docs/bad_inputs.md, section d2-data): images (16-bit,
colour, truncated, missing), COCO json problems caught at load time, and the prediction tool's."""

import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import detection_utils as d2_utils
from PIL import Image

import d2ext  # noqa: F401  (registers datasets; routes detectron2's read_image through ours)
from d2ext.config import build_cfg
from d2ext.data import (
    DatasetError,
    ImageReadError,
    read_image,
    register_coco_instances_with_points,
    register_coco_json_datasets,
    register_unlabeled_images,
)
from sslseg.datasets.synthetic import make_cells, make_unlabeled_cells

REPO = Path(__file__).resolve().parent.parent
SUPERVISED = REPO / "configs" / "supervised" / "synthetic_cells_demo.yaml"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny labeled synthetic set (2 images, 64 px) to copy and break."""
    root = tmp_path_factory.mktemp("d2data")
    json_file, image_root = make_cells(root / "cells", num_images=2, size=64, seed=0)
    return Path(json_file), Path(image_root)


def _copy(source, tmp_path):
    """A writable copy of the tiny set: (json path, image root, parsed json)."""
    json_file, image_root = source
    shutil.copytree(image_root, tmp_path / "images")
    return tmp_path / "cells.json", tmp_path / "images", json.loads(json_file.read_text())


def _load(json_file, image_root, data=None):
    """Register (json written from ``data`` when given) and load; returns the dicts."""
    if data is not None:
        Path(json_file).write_text(json.dumps(data))
    name = f"t_bad_{uuid.uuid4().hex[:8]}"
    register_coco_instances_with_points(name, {}, str(json_file), str(image_root))
    return DatasetCatalog.get(name)


def _truncate(path: Path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


# ---------------------------------------------------------------- images
def test_16bit_tiff_is_stretched_not_saturated(tmp_path):
    """#44: an I;16 TIFF (values 1000..3000) reads as a 0..255 ramp, not all 255."""
    ramp = np.tile(np.linspace(1000, 3000, 64), (16, 1)).astype(np.uint16)
    path = tmp_path / "ramp16.tif"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = read_image(str(path), format="BGR")
    assert img.shape == (16, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255, (img.min(), img.max())
    assert (np.diff(img[0, :, 0].astype(int)) >= 0).all(), "the ramp keeps its order"
    # detectron2's mapper reads through the same reader
    assert d2_utils.read_image is read_image


def test_rgb_in_grayscale_config_is_converted(tmp_path, caplog):
    """#42: the cell configs say INPUT.GRAYSCALE; colour images become grayscale, said once."""
    assert build_cfg(SUPERVISED).INPUT.GRAYSCALE is True
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    for k in range(2):
        Image.fromarray(rgb).save(tmp_path / f"red{k}.png")
    with caplog.at_level(logging.WARNING):
        a = read_image(str(tmp_path / "red0.png"), format="BGR", grayscale=True)
        read_image(str(tmp_path / "red1.png"), format="BGR", grayscale=True)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert a[0, 0, 0] == round(200 * 0.299)
    said = [r for r in caplog.records if "converted to grayscale" in r.getMessage()]
    assert len(said) <= 1
    # without the switch, colour stays colour
    b = read_image(str(tmp_path / "red0.png"), format="BGR", grayscale=False)
    assert b[0, 0, 2] == 200 and b[0, 0, 0] == 0


def test_truncated_image_named_at_load(source, tmp_path):
    """#1: a truncated PNG is an error naming it when the dataset is loaded."""
    json_file, image_root, data = _copy(source, tmp_path)
    _truncate(image_root / "0001.png")
    with pytest.raises(DatasetError, match=r"0001\.png"):
        _load(json_file, image_root, data)
    # and if it is read anyway (a mapper), the error names the file too
    with pytest.raises(ImageReadError, match=r"0001\.png"):
        read_image(str(image_root / "0001.png"), format="BGR")


def test_truncated_unlabeled_image_named_at_load(tmp_path):
    json_file, image_root = make_unlabeled_cells(tmp_path / "u", num_images=2, size=32, seed=1)
    _truncate(Path(image_root) / "0000.png")
    name = f"t_bad_u_{uuid.uuid4().hex[:8]}"
    register_unlabeled_images(name, json_file, image_root)
    with pytest.raises(ImageReadError, match=r"0000\.png"):
        DatasetCatalog.get(name)


def test_missing_image_named_at_load(source, tmp_path):
    """#2: a listed image that does not exist is an error at load, not mid-training."""
    json_file, image_root, data = _copy(source, tmp_path)
    (image_root / "0000.png").unlink()
    with pytest.raises(DatasetError, match=r"image file not found: .*0000\.png"):
        _load(json_file, image_root, data)


def test_image_size_differs_from_json(source, tmp_path):
    """#43 (was clear but mid-training): now at load, naming the image and both sizes."""
    json_file, image_root, data = _copy(source, tmp_path)
    data["images"][0]["height"] = 50
    with pytest.raises(DatasetError, match=r"0000\.png is 64x64 \(h x w\), the json says 50x64"):
        _load(json_file, image_root, data)


# ---------------------------------------------------------------- annotation files
def test_non_json_annotation_file_named(source, tmp_path):
    """#5: a truncated json is an error naming the file."""
    json_file, image_root, _ = _copy(source, tmp_path)
    json_file.write_text(source[0].read_text()[:100])
    with pytest.raises(DatasetError, match=r"cells\.json: not valid JSON"):
        _load(json_file, image_root)


def test_empty_segmentation_named(source, tmp_path):
    """#3: ``"segmentation": []`` names the annotation id and the image."""
    json_file, image_root, data = _copy(source, tmp_path)
    ann = data["annotations"][1]
    ann["segmentation"] = []
    with pytest.raises(DatasetError, match=rf"annotation id {ann['id']} \(image 000\d\.png\)"):
        _load(json_file, image_root, data)


def _polygon(data, dx):
    """Replace annotation 0's mask by a 10x10 square polygon shifted by ``dx`` pixels."""
    ann = data["annotations"][0]
    x = 10 + dx
    ann["segmentation"] = [[x, 10, x + 10, 10, x + 10, 20, x, 20]]
    ann["bbox"] = [x, 10, 10, 10]
    return ann


def test_polygon_entirely_outside_is_an_error(source, tmp_path):
    """#4: a polygon entirely outside its image was dropped silently; now an error."""
    json_file, image_root, data = _copy(source, tmp_path)
    ann = _polygon(data, 500)
    with pytest.raises(DatasetError, match=rf"annotation id {ann['id']} .*entirely outside"):
        _load(json_file, image_root, data)


def test_polygon_partly_outside_is_a_warning_with_count(source, tmp_path, caplog):
    json_file, image_root, data = _copy(source, tmp_path)
    _polygon(data, 50)  # x 60..70 in a 64 px image
    with caplog.at_level(logging.WARNING, logger="d2ext.data.checks"):
        dicts = _load(json_file, image_root, data)
    assert len(dicts) == 2
    assert "1 polygons partly outside their image" in caplog.text


def test_category_out_of_range_named(source, tmp_path):
    """Label out of range: a category_id not in the categories, named with the annotation."""
    json_file, image_root, data = _copy(source, tmp_path)
    ann = data["annotations"][0]
    ann["category_id"] = 7
    with pytest.raises(DatasetError, match=rf"annotation id {ann['id']} .*category_id 7 not in"):
        _load(json_file, image_root, data)


def test_mapper_reads_16bit_through_our_reader(source, tmp_path):
    """The train loader's DatasetMapper reads a 16-bit image as a stretched ramp (#44)."""
    json_file, image_root, data = _copy(source, tmp_path)
    img8 = np.asarray(Image.open(image_root / "0000.png"))
    Image.fromarray(img8.astype(np.uint16) * 200).save(image_root / "0000.tif")
    data["images"][0]["file_name"] = "0000.tif"
    dicts = _load(json_file, image_root, data)
    cfg = build_cfg(SUPERVISED, ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"])
    out = DatasetMapper(cfg, is_train=False)(dicts[0])
    image = out["image"].numpy()
    assert image.max() == 255 and image.min() == 0
    assert len(np.unique(image)) > 20, "not a saturated (all-255) image"


# ---------------------------------------------------------------- tools/predict.py
def _predict_tool():
    return load_tool("predict")


def _predict(tmp_path, *inputs, extra=()):
    """tools/predict.py up to its input checks (the weights file exists; the checks come first)."""
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"")
    out = tmp_path / "out"
    argv = ["--config-file", str(SUPERVISED), "--weights", str(weights), "--output", str(out)]
    with pytest.raises(SystemExit) as e:
        _predict_tool().main(argv + ["--input", *map(str, inputs), *extra, "MODEL.DEVICE", "cpu"])
    assert not out.exists(), "nothing written on a bad input"
    return str(e.value.code)


def test_predict_no_images_found(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images (" in _predict(tmp_path, tmp_path / "empty")
    msg = _predict(tmp_path, tmp_path / "nothing_here_*.png")
    assert "no images found for" in msg and "nothing_here_" in msg


def test_predict_unreadable_image_named(source, tmp_path):
    json_file, image_root, _ = _copy(source, tmp_path)
    _truncate(image_root / "0001.png")
    msg = _predict(tmp_path, image_root)
    assert msg.startswith("predict: error: cannot read image"), msg
    assert "0001.png" in msg


def test_predict_refuses_images_over_the_size_limit(source, tmp_path):
    msg = _predict(tmp_path, source[1], extra=["--max-size", "32"])
    assert "longest side accepted is --max-size 32" in msg and "not tiled" in msg


# ---------------------------------------------------------------- DATASETS.COCO_JSON
def test_coco_json_key_bad_entries_named(source, tmp_path):
    """A malformed entry, a json whose categories do not match NUM_CLASSES, a taken name."""
    json_file, image_root = map(str, source)
    with pytest.raises(DatasetError, match=r"entry 'no_json_here': expected 'name:json_file'"):
        register_coco_json_datasets(["no_json_here"])
    with pytest.raises(DatasetError, match=r"cells\.json has 2 categories .*NUM_CLASSES is 3"):
        register_coco_json_datasets([f"t_own_{uuid.uuid4().hex[:8]}:{json_file}"], num_classes=3)
    with pytest.raises(DatasetError, match="'synthetic_cells_train' is already registered"):
        register_coco_json_datasets([f"synthetic_cells_train:{json_file}:{image_root}"])
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*nope\.json"):
        register_coco_json_datasets([f"t_own_x:{tmp_path / 'nope.json'}"])


# ---------------------------------------------------------------- point-only annotations (CKS)
def test_point_only_annotation_accepted(source, tmp_path):
    """An annotation with ``point_coords`` and no ``segmentation`` key loads (CKS point labels),
    keeping its point and COCO id; an empty segmentation is still an error."""
    json_file, image_root, data = _copy(source, tmp_path)
    ann = data["annotations"][0]
    del ann["segmentation"]
    ann["point_coords"] = [[12.5, 20.5]]
    dicts = _load(json_file, image_root, data)
    loaded = next(a for d in dicts for a in d["annotations"] if a["id"] == ann["id"])
    assert loaded["point_coords"] == [[12.5, 20.5]] and "segmentation" not in loaded
    ann["segmentation"] = []
    with pytest.raises(DatasetError, match=rf"annotation id {ann['id']} .*segmentation is empty"):
        _load(json_file, image_root, data)


def test_point_outside_image_named(source, tmp_path):
    """A point outside its image (x = width is outside) names the file and the annotation id."""
    json_file, image_root, data = _copy(source, tmp_path)
    ann = data["annotations"][1]
    del ann["segmentation"]
    ann["point_coords"] = [[64.0, 10.0]]
    file_name = next(i["file_name"] for i in data["images"] if i["id"] == ann["image_id"])
    with pytest.raises(DatasetError) as e:
        _load(json_file, image_root, data)
    msg = str(e.value)
    assert (
        f"annotation id {ann['id']} (image {file_name}): point (64, 10) outside the 64x64 image"
        in msg
    )
    assert "cells.json" in msg
    ann["point_coords"] = [10.0, 10.0]  # not a list of pairs
    with pytest.raises(DatasetError, match=rf"annotation id {ann['id']} .*not a list of \[x, y\]"):
        _load(json_file, image_root, data)
