"""tools/visualize_mmt_psm.py and its drawing code (d2ext.mmt_psm.visualize) on a randomly
initialised MMT-PSM model (CPU, synthetic cells).

The config is configs/mmt_psm/synthetic_cells_demo.yaml with tiny overrides; the synthetic data
is generated into (or reused from) the default work directory, as in test_d2_train.py.
"""

from pathlib import Path

import cv2
import pytest
import torch
from conftest import load_tool
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import d2ext  # noqa: F401  (registers the built-in datasets and MMTPSMRCNN)
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer
from d2ext.mmt_psm import PseudoLabels
from d2ext.mmt_psm import visualize as vis

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "mmt_psm" / "synthetic_cells_demo.yaml"
TRAIN_SIZE = 128  # unlabeled views (KViewMapper uses the training size)
TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TRAIN", f"({TRAIN_SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(TRAIN_SIZE),
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.MMT_PSM.PROPOSALS_PER_IMAGE", "32",
    # a random model scores below the defaults: keep a few detections so every drawing runs
    "MODEL.MMT_PSM.MGD_SCORE_THRESH", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


tool = load_tool("visualize_mmt_psm")


def _cfg(output_dir):
    cfg = build_cfg(CONFIG, TINY + ["OUTPUT_DIR", str(output_dir)])
    cfg.freeze()
    return cfg


def _save(model, folder, name, teacher_ready):
    model.teacher_ready.fill_(teacher_ready)
    AtomicDetectionCheckpointer(model, save_dir=str(folder)).save(name)
    return folder / f"{name}.pth"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(ready, not_ready) checkpoints of one randomly initialised MMTPSMRCNN."""
    out = tmp_path_factory.mktemp("vis_ckpt")
    torch.manual_seed(0)
    model = build_model(_cfg(out))
    assert type(model).__name__ == "MMTPSMRCNN"
    return _save(model, out, "random_ready", True), _save(model, out, "random_not_ready", False)


def test_writes_prediction_and_pseudo_label_pngs(checkpoints, tmp_path, capsys):
    ready, _ = checkpoints
    out = tmp_path / "vis"
    written = tool.main([
        "--config-file", str(CONFIG), "--weights", str(ready), "--output", str(out),
        "--num-images", "1", "--score-thresh", "0.0", *TINY, "OUTPUT_DIR", str(tmp_path),
    ])  # fmt: skip
    assert len(written) == 2, written
    printed = capsys.readouterr()
    assert all(str(p) in printed.out for p in written)
    assert "WARNING" not in printed.err
    assert not [p for p in out.rglob(".*")], "temp files left"

    pred, pseudo = written
    assert pred.parent == out / "synthetic_cells_test" and pred.name.endswith("_predictions.png")
    first = DatasetCatalog.get("synthetic_cells_test")[0]
    img = cv2.imread(str(pred))
    assert img is not None, f"{pred} is not a readable image"
    w, g = first["width"], vis.GAP
    # ground truth | teacher | student at the original size, plus the title bar
    assert img.shape == (first["height"] + vis.TITLE_H, 3 * w + 2 * g, 3), img.shape

    assert pseudo.parent == out / "synthetic_cells_unlabeled"
    assert pseudo.name.endswith("_pseudo_labels.png")
    img = cv2.imread(str(pseudo))
    assert img is not None, f"{pseudo} is not a readable image"
    # top row: 3 panels; strip: 4 teacher views (2 colours x flip) + 1 student view
    n = max(3, 4 + 1)
    s = TRAIN_SIZE  # synthetic images are square: the views are TRAIN_SIZE x TRAIN_SIZE
    assert img.shape == (2 * (s + vis.TITLE_H) + g, n * s + (n - 1) * g, 3), img.shape
    assert img.std() > 5, "blank figure"


def test_warns_when_teacher_not_ready(checkpoints, tmp_path):
    _, not_ready = checkpoints
    model = build_model(_cfg(tmp_path))
    warnings = vis.load_weights(model, str(not_ready))
    assert len(warnings) == 1 and "teacher_ready is False" in warnings[0], warnings


def test_missing_files_fail_clearly(checkpoints, tmp_path):
    ready, _ = checkpoints
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", str(CONFIG), "--weights", str(missing), *TINY,
                   "OUTPUT_DIR", str(tmp_path)])  # fmt: skip
    assert "weights file not found" in str(e.value.code) and str(missing) in str(e.value.code)

    missing_cfg = tmp_path / "no_such_config.yaml"
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", str(missing_cfg), "--weights", str(ready)])
    assert "config file not found" in str(e.value.code) and str(missing_cfg) in str(e.value.code)
    assert not list(tmp_path.rglob("*.png"))


def test_mined_and_mgd_panels_on_hand_made_pseudo_labels():
    """Colours by hard label (fg classes vs red background) and the MGD mask overlay."""
    h, w = 64, 80
    boxes = Boxes(torch.tensor([[2.0, 2, 30, 30], [40, 5, 70, 35], [10, 40, 60, 60], [0, 0, 5, 5]]))
    target = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.0, 0.0, 1.0]])
    fg = torch.zeros((h + 4, w + 16), dtype=torch.bool)  # padded like an ImageList
    fg[2:30, 2:30] = True
    pl = PseudoLabels(
        proposals=boxes, view_logits=torch.zeros(4, 4, 3), target=target,
        hard=target.argmax(-1), mined=torch.tensor([True, True, True, False]),
        detections=Instances((h, w)), fg_mask=fg, image_size=(h, w),
    )  # fmt: skip
    rgb = torch.full((h, w, 3), 128, dtype=torch.uint8).numpy()
    meta = MetadataCatalog.get("synthetic_cells_test")
    panel, title = vis._mined_panel(rgb, pl, meta)
    assert panel.shape == (h, w, 3) and title.startswith("mined: 2 fg / 1 bg (red) of 4"), title
    # the background box (10..60, 40..60) is drawn in red, the first class's box in green
    edge_bg, edge_fg = panel[50, 10], panel[15, 2]
    assert edge_bg[0] > edge_bg[1] + 40, edge_bg
    assert edge_fg[1] > edge_fg[0] + 40, edge_fg
    panel, title = vis._mgd_panel(rgb, pl, meta)
    assert panel.shape == (h, w, 3) and "15.3%" in title, title
    assert (panel[15, 15].astype(int) - 128).any() and (panel[50, 70] == 128).all()
