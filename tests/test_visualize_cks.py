"""LACSS (d2ext.cks) in the command-line tools, on randomly initialised tiny models (CPU):
tools/visualize.py's four-panel figure (d2ext.cks.visualize: ground-truth points | principal |
collaborator P(fg) | P(border)), its supervised-mode variant, and tools/predict.py end to end with
the predicted locations as ``point`` in predictions.json.

Config: configs/cks/synthetic_demo.yaml with the tiny overrides of test_cks_model.py; data: the
synthetic generator (default work directory, as test_cks_model.py).
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import CKS_DEMO, CKS_TINY, load_tool
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

import d2ext  # noqa: F401  (registers datasets, models)
from d2ext.cks import visualize as cks_vis
from d2ext.config import build_cfg
from d2ext.engine import AtomicDetectionCheckpointer
from d2ext.mmt_psm import visualize as vis
from sslseg.datasets.synthetic import make_unlabeled_cells

REPO = Path(__file__).resolve().parent.parent
DEMO = CKS_DEMO
DATASET = "synthetic_cks_train"
TINY = CKS_TINY + [
    "MODEL.CKS.DETECTOR.MAX_OUTPUT_TEST", "6",  # a random LPN scores high everywhere
]  # fmt: skip
SUPERVISED = ["MODEL.CKS.MODE", "supervised"]

vis_tool = load_tool("visualize")
predict_tool = load_tool("predict")


def _model(*opts):
    cfg = build_cfg(DEMO, TINY + list(opts))
    torch.manual_seed(0)
    return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"points": (config.yaml, model_final.pth), "supervised": ...}: run folders of random
    tiny LACSS models, as training leaves them."""
    out = {}
    for mode, opts in (("points", []), ("supervised", SUPERVISED)):
        folder = tmp_path_factory.mktemp(f"cks_{mode}")
        cfg, model = _model(*opts, "OUTPUT_DIR", str(folder))
        assert (model.collaborator is None) == (mode == "supervised")
        AtomicDetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
        (folder / "config.yaml").write_text(cfg.dump())
        out[mode] = (folder / "config.yaml", folder / "model_final.pth")
    return out


def _figure_shape(d):
    n = 4  # gt points | principal | collaborator fg | border, at the original size
    return (d["height"] + vis.TITLE_H, n * d["width"] + (n - 1) * vis.GAP, 3)


def test_tool_writes_four_panel_figure(checkpoints, tmp_path, capsys):
    _, weights = checkpoints["points"]
    out = tmp_path / "vis"
    written = vis_tool.main(
        ["--config-file", str(DEMO), "--weights", str(weights), "--output", str(out),
         "--dataset", DATASET, "--num-images", "1", "--score-thresh", "0.0", *TINY]
    )  # fmt: skip
    assert len(written) == 1, written
    printed = capsys.readouterr()
    assert str(written[0]) in printed.out and "WARNING" not in printed.err, printed.err
    assert written[0].parent == out / DATASET and written[0].name.endswith("_cks.png")
    assert not [p for p in out.rglob(".*")], "temp files left"
    first = DatasetCatalog.get(DATASET)[0]
    img = cv2.imread(str(written[0]))
    assert img is not None and img.shape == _figure_shape(first), img.shape
    assert img.std() > 5, "blank figure"


def test_panels_points_mode_at_model_scale(checkpoints):
    """Titles, panel sizes; the collaborator maps come at model scale (INPUT.CKS.SCALE 0.5),
    the panels at the original size; the model's train mode is restored."""
    cfg, model = _model("INPUT.CKS.SCALE", "0.5", "MODEL.CKS.DETECTOR.MIN_SCORE_TEST", "0.0")
    vis.load_weights(model, str(checkpoints["points"][1]))
    model.train()
    d = DatasetCatalog.get(DATASET)[0]
    mapper = DatasetMapper(cfg, is_train=False)
    panels = cks_vis.cks_panels(cfg, model, mapper, d, score_thresh=0.0)
    assert model.training, "train mode not restored"
    titles = [t for t, _ in panels]
    assert len(panels) == 4, titles
    n_pts = len(d["annotations"])
    assert titles[0] == f"ground truth: {n_pts} points" and n_pts > 0, titles
    assert titles[1].startswith("principal: ") and "instances >= 0" in titles[1], titles
    assert titles[2].startswith("collaborator P(fg): mean ") and "P(border)" in titles[3], titles
    assert all(p.shape == (d["height"], d["width"], 3) for _, p in panels)
    assert not np.array_equal(panels[0][1], panels[1][1]), "no instance outlines drawn"

    model.eval()
    fg, border = cks_vis.collaborator_maps(model, mapper(d), cell_type=0)
    assert fg.shape == border.shape == (d["height"] // 2, d["width"] // 2), fg.shape
    assert 0 <= fg.min() and fg.max() <= 1 and 0 <= border.min() and border.max() <= 1
    pts = cks_vis.gt_points(d)
    assert pts.shape == (n_pts, 2)
    np.testing.assert_allclose(pts[0], d["annotations"][0]["point_coords"][0])


def test_supervised_mode_has_no_collaborator_panels(checkpoints, tmp_path):
    cfg, model = _model(*SUPERVISED)
    assert not vis.load_weights(model, str(checkpoints["supervised"][1]))
    d = DatasetCatalog.get(DATASET)[0]
    mapper = DatasetMapper(cfg, is_train=False)
    panels = cks_vis.cks_panels(cfg, model, mapper, d, score_thresh=0.0)
    assert [t for t, _ in panels[2:]] == [cks_vis.NO_COLLABORATOR] * 2, panels
    fig = cks_vis.render_cks(cfg, model, mapper, d, score_thresh=0.0)
    assert fig.shape == _figure_shape(d), fig.shape
    path = vis.write_png(vis.out_name(tmp_path, DATASET, 0, d["file_name"], "cks"), fig)
    assert cv2.imread(str(path)).shape == fig.shape

    # a supervised checkpoint in a points model: the collaborator is random, said so
    _, points_model = _model()
    warnings = vis.load_weights(points_model, str(checkpoints["supervised"][1]))
    assert len(warnings) == 1 and "collaborator parameters missing" in warnings[0], warnings


def test_predict_writes_points(checkpoints, tmp_path, capsys):
    config, _ = checkpoints["points"]
    _, image_root = make_unlabeled_cells(tmp_path / "cells", num_images=2, size=64, seed=3)
    out = tmp_path / "pred"
    result = predict_tool.main(
        ["--config-file", str(config), "--input", str(image_root), "--output", str(out),
         "--score-thresh", "0"]
    )  # fmt: skip
    assert "instances in 2 images" in capsys.readouterr().out
    saved = json.loads((out / "predictions.json").read_text())
    assert saved == result
    assert saved["categories"] == [{"id": 1, "name": "cell"}], saved["categories"]
    assert "LACSS" in saved["info"]["description"]
    anns = saved["annotations"]
    assert anns, "a random LACSS at score 0 predicts"
    for img in saved["images"]:
        stem = Path(img["file_name"]).stem
        labels = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == (img["height"], img["width"])
        assert cv2.imread(str(out / "overlays" / f"{stem}.png")).shape[:2] == labels.shape
        for a in (a for a in anns if a["image_id"] == img["id"]):
            x, y = a["point"]
            assert -1 <= x <= img["width"] and -1 <= y <= img["height"], a["point"]
            assert a["category_id"] == 1
