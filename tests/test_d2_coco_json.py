"""Training and evaluating on your own COCO json, registered only through ``DATASETS.COCO_JSON``
on the command line (no Python): tools/train_net.py, 2 CPU steps on a tiny synthetic set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import d2ext  # noqa: F401
from d2ext.data import register_coco_json_datasets
from sslseg.datasets.synthetic import make_cells

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "supervised" / "synthetic_cells_demo.yaml"
TINY = [
    "MODEL.DEVICE", "cpu",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def own_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    json_file, image_root = make_cells(root / "mine", num_images=2, size=64, seed=5)
    return json_file, image_root


def test_train_and_evaluate_on_own_json_from_the_command_line(own_set, tmp_path):
    json_file, image_root = own_set
    out = tmp_path / "out"
    train, val = (
        f"my_cells_train:{json_file}:{image_root}",
        f"my_cells_val:{json_file}:{image_root}",
    )
    opts = [
        "DATASETS.COCO_JSON", f"('{train}', '{val}')",
        "DATASETS.TRAIN", "('my_cells_train',)",
        "DATASETS.TEST", "('my_cells_val',)",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "tools/train_net.py", "--config-file", str(CONFIG), *TINY, *opts]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    metrics = json.loads((out / "final_metrics.json").read_text())
    assert "segm" in metrics and "bbox" in metrics, metrics
    assert (out / "model_final.pth").is_file()


def test_registration_checks(own_set, tmp_path):
    json_file, image_root = own_set
    (name,) = register_coco_json_datasets([f"t_own_ok:{json_file}:{image_root}"], num_classes=2)
    assert MetadataCatalog.get(name).thing_classes == ["cytoplasm", "nuclei"]
    assert len(DatasetCatalog.get(name)) == 2
    # the same entry again (a second setup in one process) is fine
    assert register_coco_json_datasets([f"t_own_ok:{json_file}:{image_root}"]) == [name]
