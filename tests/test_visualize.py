"""tools/visualize.py on a model that is not MMT-PSM (#49: supervised Mask R-CNN configs were
refused): ground truth | predictions, at the original size; MMT-PSM keeps its own views
(tests/test_visualize_mmt_psm.py runs the same tool under its former name)."""

from pathlib import Path

import cv2
import pytest
import torch
from conftest import load_tool
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import d2ext  # noqa: F401  (registers the built-in datasets)
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer
from d2ext.mmt_psm import visualize as vis

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "supervised" / "synthetic_cells_demo.yaml"
TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


tool = load_tool("visualize")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("vis_sup")
    torch.manual_seed(0)
    model = build_model(build_cfg(CONFIG, TINY))
    assert type(model).__name__ == "GeneralizedRCNN"
    AtomicDetectionCheckpointer(model, save_dir=str(out)).save("random")
    return out / "random.pth"


def test_supervised_model_ground_truth_and_predictions(weights, tmp_path, capsys):
    out = tmp_path / "vis"
    written = tool.main(
        ["--config-file", str(CONFIG), "--weights", str(weights), "--output", str(out),
         "--num-images", "1", "--score-thresh", "0.0", *TINY]
    )  # fmt: skip
    assert len(written) == 1, written
    assert "WARNING" not in capsys.readouterr().err
    first = DatasetCatalog.get("synthetic_cells_test")[0]
    img = cv2.imread(str(written[0]))
    # ground truth | predictions at the original size, plus the title bar
    assert img.shape == (first["height"] + vis.TITLE_H, 2 * first["width"] + vis.GAP, 3)


def test_pseudo_label_views_are_mmt_psm_only(weights, tmp_path):
    argv = ["--config-file", str(CONFIG), "--weights", str(weights), "--output", str(tmp_path)]
    with pytest.raises(SystemExit, match="pseudo-label views are drawn for MMT-PSM"):
        tool.main(argv + ["--unlabeled-dataset", "synthetic_cells_unlabeled", *TINY])


def test_former_name_is_the_same_tool():
    alias = load_tool("visualize_mmt_psm")
    assert Path(alias.main.__code__.co_filename) == REPO / "tools" / "visualize.py"
