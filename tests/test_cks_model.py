"""LACSS meta-architecture (d2ext.cks): training losses of both modes, gradient routing between the
principal and the collaborator, inference outputs and scale handling, the mapper, the dataset
checks (bad input), the warm-up phase switch.

Configs: configs/cks/synthetic_demo.yaml with tiny overrides; data: the synthetic generator.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CKS_DEMO, CKS_TINY
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

import d2ext  # noqa: F401  (registers datasets, models)
from d2ext.cks import CKSDatasetMapper, check_cks_dicts, standardize_image
from d2ext.config import build_cfg
from d2ext.data import DatasetError

REPO = Path(__file__).resolve().parent.parent
DEMO = CKS_DEMO
TINY = CKS_TINY


def _cfg(*opts):
    return build_cfg(DEMO, TINY + list(opts))


def _batch(cfg, n=1, seed=0):
    np.random.seed(seed)
    mapper = CKSDatasetMapper(cfg, True)
    return [mapper(d) for d in DatasetCatalog.get("synthetic_cks_train")[:n]]


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    return model


POINT_LOSSES = {
    "loss_lpn_score",
    "loss_lpn_loc",
    "loss_seg",
    "loss_collab_fg",
    "loss_border",
    "loss_collapse",
}


def test_points_mode_losses_finite():
    cfg = _cfg()
    losses = _model(cfg)(_batch(cfg, 2))
    assert set(losses) == POINT_LOSSES, sorted(losses)
    assert all(math.isfinite(float(v)) for v in losses.values()), losses


def test_supervised_mode_has_no_collaborator():
    cfg = _cfg("MODEL.CKS.MODE", "supervised")
    model = _model(cfg)
    assert model.collaborator is None
    batch = _batch(cfg)
    assert batch[0]["instances"].has("gt_masks")
    losses = model(batch)
    assert set(losses) == {"loss_lpn_score", "loss_lpn_loc", "loss_seg"}, sorted(losses)


def _grad_parts(model, loss):
    """Names of the top-level parts whose parameters get a nonzero gradient from ``loss``."""
    model.zero_grad()
    loss.backward(retain_graph=True)
    parts = set()
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            parts.add(name.split(".")[0])
    return parts


def test_gradient_routing():
    """L_M teaches the collaborator only, L_S / L_MC / L_det the principal only, L_B both."""
    cfg = _cfg()
    model = _model(cfg)
    with EventStorage(10_000):  # after the warm-up: soft L_S
        losses = model(_batch(cfg))
    principal = {"backbone", "segmentor"}
    assert _grad_parts(model, losses["loss_collab_fg"]) == {"collaborator"}
    assert _grad_parts(model, losses["loss_seg"]) == principal | {"lpn"} - {"lpn"}
    assert _grad_parts(model, losses["loss_collapse"]) == principal
    assert _grad_parts(model, losses["loss_border"]) == principal | {"collaborator"}
    assert _grad_parts(model, losses["loss_lpn_score"]) == {"backbone", "lpn"}


def test_warmup_phase_follows_the_event_storage():
    cfg = _cfg("MODEL.CKS.LOSS.WARMUP_ITERS", "5")
    model = _model(cfg)
    with EventStorage(4):
        assert model.in_warmup()
    with EventStorage(5):  # e.g. resumed at iteration 5
        assert not model.in_warmup()
    batch = _batch(cfg)
    with EventStorage(0):
        warm = model(batch)["loss_collab_fg"]
    with EventStorage(5):
        after = model(batch)["loss_collab_fg"]
    assert not torch.allclose(warm, after), "the prior did not change after the warm-up"


def test_inference_outputs_full_size_at_the_dataset_scale():
    cfg = _cfg("INPUT.CKS.SCALE", "0.5", "MODEL.CKS.DETECTOR.MIN_SCORE_TEST", "0.0")
    model = _model(cfg).eval()
    d = DatasetCatalog.get("synthetic_cks_test")[0]
    image = torch.rand(3, 256, 200) * 255
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 512, "width": 400}])
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (512, 400)
    assert len(inst) > 0, "min score 0 keeps every NMS survivor"
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (512, 400)
    assert inst.pred_locations.shape == (len(inst), 2)
    # locations are xy at the output size, inside the image (not in the padding)
    loc = inst.pred_locations
    assert (loc >= 0).all() and (loc[:, 0] < 400).all() and (loc[:, 1] < 512).all(), loc
    assert (inst.pred_classes == 0).all() and inst.scores.shape == (len(inst),)
    assert (inst.scores[:-1] >= inst.scores[1:]).all(), "scores must come sorted"
    boxes = inst.pred_boxes.tensor
    assert boxes.shape == (len(inst), 4) and (boxes[:, 2] >= boxes[:, 0]).all()
    assert d["height"] == 256


def test_inference_keeps_nms_distance():
    cfg = _cfg("MODEL.CKS.DETECTOR.MIN_SCORE_TEST", "0.0")
    model = _model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 128, 128) * 255}])
    loc = out["instances"].pred_locations
    d = torch.cdist(loc, loc) + torch.eye(len(loc)) * 1e9
    assert float(d.min()) > cfg.MODEL.CKS.DETECTOR.NMS_DIST


def test_standardize_image():
    x = torch.rand(3, 20, 30) * 100 + 7
    y = standardize_image(x)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
    flat = standardize_image(torch.full((1, 4, 4), 3.0))  # std 0 -> divided by 1/sqrt(n)
    assert torch.equal(flat, torch.zeros(1, 4, 4))


# ---- mapper ---------------------------------------------------------------------------------
def test_mapper_moves_points_with_the_image():
    cfg = _cfg(
        "INPUT.CKS.SCALE", "0.5", "INPUT.CKS.RESIZE_JITTER", "[1.0, 1.0]", "INPUT.CKS.GAMMA", "[]"
    )
    d = DatasetCatalog.get("synthetic_cks_train")[0]
    pts = np.array([a["point_coords"][0] for a in d["annotations"]])
    for seed in range(4):
        np.random.seed(seed)
        out = CKSDatasetMapper(cfg, True)(d)
        assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.float32
        got = out["instances"].gt_point_coords[:, 0].numpy()
        half = pts * 0.5
        options = [
            half,
            np.stack([128 - half[:, 0], half[:, 1]], 1),
            np.stack([half[:, 0], 128 - half[:, 1]], 1),
            128 - half,
        ]
        assert any(np.allclose(got, o, atol=1e-4) for o in options), (seed, got[:2], half[:2])


def test_mapper_crop_drops_points_outside_and_keeps_masks_aligned():
    cfg = _cfg("MODEL.CKS.MODE", "supervised", "INPUT.CKS.CROP_SIZE", "96", "INPUT.CKS.GAMMA", "[]")
    d = DatasetCatalog.get("synthetic_cks_train")[0]
    for seed in range(5):
        np.random.seed(seed)
        out = CKSDatasetMapper(cfg, True)(d)
        inst = out["instances"]
        h, w = out["image"].shape[1:]
        assert h <= 96 and w <= 96
        assert len(inst) <= len(d["annotations"])
        pts = inst.gt_point_coords[:, 0]
        assert ((pts >= 0) & (pts < torch.tensor([w, h]))).all()
        masks = inst.gt_masks.tensor
        assert masks.shape == (len(inst), h, w)
        # the nucleus point lies inside its (resized, flipped, cropped) cell mask
        for m, (x, y) in zip(masks, pts.tolist()):
            r, c = int(y), int(x)
            assert m[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3].any()


def test_mapper_supervised_without_points_uses_mask_centroids():
    cfg = _cfg("MODEL.CKS.MODE", "supervised", "INPUT.CKS.GAMMA", "[]")
    d = DatasetCatalog.get("synthetic_cks_train")[0]
    d = {
        **d,
        "annotations": [
            {k: v for k, v in a.items() if k != "point_coords"} for a in d["annotations"]
        ],
    }
    out = CKSDatasetMapper(cfg, True)(d)
    assert len(out["instances"]) == len(d["annotations"])


# ---- bad input --------------------------------------------------------------------------------
def _record(**ann):
    base = {"category_id": 0, "bbox": [0, 0, 2, 2], "bbox_mode": 1}
    return {
        "file_name": "/data/img7.png",
        "image_id": 7,
        "height": 50,
        "width": 40,
        "annotations": [{**base, **ann}],
    }


@pytest.mark.parametrize(
    "mode, record, message",
    [
        ("points", {**_record(), "annotations": []}, "has no points"),
        ("points", _record(id=3, point_coords=[[45.0, 10.0]]), "point (45, 10) lies outside"),
        (
            "points",
            _record(id=3, segmentation={"counts": "x", "size": [50, 40]}),
            "a mask without a point",
        ),
        (
            "supervised",
            _record(id=3, point_coords=[[5.0, 5.0]]),
            "points given where masks are required",
        ),
    ],
)
def test_bad_training_records_name_file_and_record(mode, record, message):
    with pytest.raises(DatasetError) as e:
        check_cks_dicts({"my_set": [record]}, mode)
    msg = str(e.value)
    assert message in msg and "/data/img7.png" in msg and "my_set" in msg, msg
    if record["annotations"]:
        assert "annotation id 3" in msg, msg


def test_good_records_pass():
    rec = _record(id=1, point_coords=[[5.0, 5.0]], segmentation={"counts": "x", "size": [50, 40]})
    check_cks_dicts({"a": [rec]}, "points")
    check_cks_dicts({"a": [rec]}, "supervised")
