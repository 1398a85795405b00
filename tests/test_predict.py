"""tools/predict.py end to end on randomly initialised models (Mask R-CNN and MMT-PSM, CPU, tiny
sizes): COCO json, 16-bit label maps and overlays from a run folder's config.yaml +
model_final.pth, on PNG, JPEG and 16-bit TIFF inputs given as a folder, a glob and a list."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_tool
from detectron2.modeling import build_model
from PIL import Image

import d2ext  # noqa: F401  (registers models)
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer
from sslseg.datasets.synthetic import make_unlabeled_cells

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "4",
]  # fmt: skip


tool = load_tool("predict")


def make_run(folder: Path, config: str, teacher_ready=None) -> Path:
    """A run folder as training leaves it: config.yaml + model_final.pth (random weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = build_cfg(REPO / "configs" / config, TINY + ["OUTPUT_DIR", str(folder)])
    torch.manual_seed(0)
    model = build_model(cfg)
    if teacher_ready is not None:
        model.teacher_ready.fill_(teacher_ready)
    AtomicDetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    (folder / "config.yaml").write_text(cfg.dump())
    return folder / "config.yaml"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Inputs: a folder of 2 PNGs, a JPEG, a 16-bit TIFF listed in a text file."""
    root = tmp_path_factory.mktemp("predict_in")
    _, image_root = make_unlabeled_cells(root / "cells", num_images=2, size=64, seed=3)
    gray = np.asarray(Image.open(Path(image_root) / "0000.png"))
    other = root / "other"
    other.mkdir()
    Image.fromarray(gray).convert("RGB").save(other / "photo.jpg")
    Image.fromarray(gray.astype(np.uint16) * 250).save(other / "deep.tif")
    (other / "list.txt").write_text("# my images\ndeep.tif\n\n")
    return Path(image_root), other


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run_sup"), "supervised/synthetic_cells_demo.yaml")


def test_predicts_coco_json_label_maps_and_overlays(supervised_run, images, tmp_path, capsys):
    folder, other = images
    out = tmp_path / "pred"
    argv = ["--config-file", str(supervised_run), "--output", str(out), "--score-thresh", "0"]
    inputs = ["--input", str(folder), str(other / "*.jpg"), str(other / "list.txt")]
    result = tool.main(argv + inputs)
    assert "instances in 4 images" in capsys.readouterr().out
    saved = json.loads((out / "predictions.json").read_text())
    assert saved == result
    assert [Path(i["file_name"]).name for i in saved["images"]] == [
        "0000.png",
        "0001.png",
        "photo.jpg",
        "deep.tif",
    ]
    assert [c["name"] for c in saved["categories"]] == ["cytoplasm", "nuclei"]
    assert saved["annotations"], "a random model at score 0 still predicts"
    for img in saved["images"]:
        stem = Path(img["file_name"]).stem
        labels = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == (img["height"], img["width"])
        anns = [a for a in saved["annotations"] if a["image_id"] == img["id"]]
        assert set(np.unique(labels)) - {0} <= {a["label_value"] for a in anns}
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (img["height"], img["width"], 3)
    scores = [a["score"] for a in saved["annotations"] if a["image_id"] == 1]
    assert scores == sorted(scores, reverse=True)

    # existing outputs are not replaced without --overwrite
    with pytest.raises(SystemExit, match="output files exist already"):
        tool.main(argv + inputs)
    tool.main(argv + inputs + ["--overwrite"])


def test_model_choice_is_mmt_psm_only(supervised_run, images, tmp_path):
    argv = ["--config-file", str(supervised_run), "--input", str(images[0])]
    with pytest.raises(SystemExit, match="only MMT-PSM has a teacher"):
        tool.main(argv + ["--output", str(tmp_path), "--model", "teacher"])


def test_mmt_psm_teacher_and_student(tmp_path, images):
    ready = make_run(tmp_path / "ready", "mmt_psm/synthetic_cells_demo.yaml", teacher_ready=True)
    for network in ("teacher", "student"):
        out = tmp_path / network
        result = tool.main(
            [
                "--config-file",
                str(ready),
                "--input",
                str(images[0]),
                "--output",
                str(out),
                "--model",
                network,
                "--score-thresh",
                "0",
                "MODEL.DEVICE",
                "cpu",
            ]
        )  # fmt: skip  (config overrides may follow the inputs)
        assert network in result["info"]["description"]
        assert len(result["images"]) == 2 and (out / "labels" / "0001.png").is_file()


def test_mmt_psm_teacher_not_initialised_is_refused(tmp_path, images):
    run = make_run(tmp_path / "not_ready", "mmt_psm/synthetic_cells_demo.yaml", teacher_ready=0)
    argv = ["--config-file", str(run), "--input", str(images[0]), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="teacher is not initialised"):
        tool.main(argv + ["--model", "teacher"])
    assert not (tmp_path / "o").exists()
