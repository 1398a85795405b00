"""CellInstanceEvaluator and build_cell_evaluators on a tiny registered COCO dataset."""

import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.structures import BitMasks, Instances
from pycocotools import mask as mask_util

from d2ext.config import add_sslseg_config
from d2ext.data.register import POINT_KEYS
from d2ext.evaluation import CellInstanceEvaluator, build_cell_evaluators
from sslseg.datasets.coco_utils import image_record, mask_to_annotation
from sslseg.errors import InputError


def _grid(n_rows, n_cols, step=5, size=3):
    """(n_rows*n_cols, H, W) disjoint size x size squares."""
    masks = np.zeros((n_rows * n_cols, n_rows * step, n_cols * step), bool)
    for k in range(len(masks)):
        y, x = (k // n_cols) * step, (k % n_cols) * step
        masks[k, y : y + size, x : x + size] = True
    return masks


def _write_gt(tmp_path, per_image, file_name: str):
    """COCO json of ``per_image`` = [(masks (K, H, W), category ids)], written to tmp_path."""
    images, anns = [], []
    for img_id, (masks, cats) in enumerate(per_image, start=1):
        images.append(image_record(img_id, f"{img_id}.png", *masks.shape[1:]))
        anns += [
            mask_to_annotation(m, c, len(anns) + 1 + k, img_id)
            for k, (m, c) in enumerate(zip(masks, cats))
        ]
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "cytoplasm"}, {"id": 2, "name": "nuclei"}],
    }
    path = tmp_path / file_name
    path.write_text(json.dumps(gt))
    return path


@pytest.fixture
def dataset(tmp_path):
    """Image 1: 150 cytoplasm cells (more than COCO's 100); image 2: 2 overlapping cytoplasm and
    2 nuclei. Segmentations are compressed RLE with str counts, as docs/data_formats.md."""
    dense = _grid(10, 15)
    img2 = np.zeros((4, 20, 20), bool)
    img2[0, 2:12, 2:12] = img2[1, 6:16, 6:16] = True  # overlapping cytoplasm
    img2[2, 4:7, 4:7] = img2[3, 10:13, 10:13] = True  # nuclei
    path = _write_gt(tmp_path, [(dense, [1] * 150), (img2, [1, 1, 2, 2])], "gt.json")
    name = f"metrics_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    yield name
    DatasetCatalog.remove(name)


def _perfect_outputs(dataset_name):
    """(inputs, outputs) as a model would give: Instances with the gt masks, scores, classes."""
    inputs, outputs = [], []
    for d in DatasetCatalog.get(dataset_name):
        h, w = d["height"], d["width"]
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in d["annotations"]]) > 0
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks)
        inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
        inst.scores = torch.linspace(0.99, 0.5, len(masks))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def _run(evaluator, dataset_name):
    evaluator.reset()
    evaluator.process(*_perfect_outputs(dataset_name))
    return evaluator.evaluate()


def test_cell_evaluator_perfect(dataset, tmp_path):
    results = _run(CellInstanceEvaluator(dataset, output_dir=str(tmp_path / "out")), dataset)
    cells = results["cells"]
    for cls in ("cytoplasm", "nuclei"):
        for metric in ("AJI", "AJI-matched", "InstDice", "AP50", "AP75", "mAP"):
            assert cells[f"{metric}-{cls}"] == pytest.approx(100.0), f"{metric}-{cls}"
    assert cells["AJI"] == pytest.approx(100.0)
    assert (tmp_path / "out" / "cell_metrics.json").is_file()


def test_cell_evaluator_float_masks_and_max_dets(dataset):
    inputs, outputs = _perfect_outputs(dataset)
    for out in outputs:  # soft masks are thresholded at mask_threshold
        out["instances"].pred_masks = out["instances"].pred_masks.float() * 0.8
    evaluator = CellInstanceEvaluator(dataset, max_dets=100)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    cells = evaluator.evaluate()["cells"]
    # 100 of the 150 cells of image 1 kept, all 2 of image 2: AP50 = 102 TPs / 152 gts
    assert cells["AP50-cytoplasm"] == pytest.approx(100.0 * 102 / 152)
    assert cells["AP50-nuclei"] == pytest.approx(100.0)


@pytest.mark.parametrize("max_dets", [100, 1000])
def test_build_cell_evaluators_max_dets(dataset, max_dets):
    cfg = get_cfg()
    add_sslseg_config(cfg)
    cfg.TEST.DETECTIONS_PER_IMAGE = max_dets
    results = _run(build_cell_evaluators(cfg, dataset), dataset)
    segm, cells = results["segm"], results["cells"]
    assert "AP-cytoplasm" in segm and "AP-nuclei" in segm
    assert segm["AP-nuclei"] == pytest.approx(100.0)
    if max_dets == 1000:
        assert segm["AP"] == pytest.approx(100.0) and cells["mAP"] == pytest.approx(100.0)
    else:
        assert segm["AP-cytoplasm"] < 90.0 and cells["mAP-cytoplasm"] < 90.0


# ---- LACSS options: strict AP, pooled Dice, LoiAP from pred_locations -------------------------


@pytest.fixture
def point_dataset(tmp_path):
    """Image 1 (20x20): 2 overlapping cytoplasm, 2 nuclei (4x4); image 2 (16x16): 1 cytoplasm.
    Every annotation has ``point_coords`` (the mask centroid), kept in the dataset dicts."""
    img1 = np.zeros((4, 20, 20), bool)
    img1[0, 2:12, 2:12] = img1[1, 6:16, 6:16] = True
    img1[2, 4:8, 4:8] = img1[3, 10:14, 10:14] = True
    img2 = np.zeros((1, 16, 16), bool)
    img2[0, 1:5, 1:5] = True
    path = _write_gt(tmp_path, [(img1, [1, 1, 2, 2]), (img2, [1])], "gt_points.json")
    name = f"metrics_points_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(
        name,
        lambda: load_coco_json(str(path), str(tmp_path), name, extra_annotation_keys=POINT_KEYS),
    )
    MetadataCatalog.get(name).set(
        json_file=str(path), image_root=str(tmp_path), evaluator_type="coco"
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _located_outputs(dataset_name, nucleus_shift=(1.5, 0.0)):
    """Perfect masks except the second nucleus (left half: IoU exactly 0.5); pred_locations =
    gt point (xy), shifted by ``nucleus_shift`` px for nuclei. Nucleus 1 outscores nucleus 2."""
    inputs, outputs = _perfect_outputs(dataset_name)
    for d, out in zip(DatasetCatalog.get(dataset_name), outputs):
        inst = out["instances"]
        points = torch.tensor([a["point_coords"][0] for a in d["annotations"]], dtype=torch.float32)
        is_nucleus = inst.pred_classes == 1
        points[is_nucleus] += torch.tensor(nucleus_shift)
        inst.pred_locations = points
        if is_nucleus.sum() == 2:
            k = int(torch.nonzero(is_nucleus)[1])
            inst.pred_masks[k, :, 12:] = False  # 4x4 nucleus at cols 10:14 -> cols 10:12
    return inputs, outputs


def test_cell_evaluator_lacss_options_round_trip(point_dataset, tmp_path):
    evaluator = CellInstanceEvaluator(
        point_dataset,
        output_dir=str(tmp_path / "out"),
        strict_ap=True,
        pooled_dice=True,
        loiap=True,
        distributed=False,
    )
    evaluator.reset()
    evaluator.process(*_located_outputs(point_dataset))
    cells = evaluator.evaluate()["cells"]
    for metric in ("LoiAP5", "LoiAP2", "LoiAP1", "InstDice-pooled", "AP50", "mAP"):
        assert cells[f"{metric}-cytoplasm"] == pytest.approx(100.0), metric
    # nuclei 1.5 px off: found at 5 and 2 px, not at 1 px
    assert cells["LoiAP5-nuclei"] == cells["LoiAP2-nuclei"] == pytest.approx(100.0)
    assert cells["LoiAP1-nuclei"] == 0.0 and cells["LoiAP1"] == pytest.approx(50.0)
    # strict: the IoU-0.5 nucleus (ranked 2nd) is a FP at 0.5: (1/1) / 2
    assert cells["AP50-nuclei"] == pytest.approx(50.0)
    # pooled Dice: gt term (16 + 16 * 2/3) / 32, prediction term (16 + 8 * 2/3) / 24
    assert cells["InstDice-pooled-nuclei"] == pytest.approx(50.0 * (5 / 6 + 8 / 9))
    saved = json.loads((tmp_path / "out" / "cell_metrics.json").read_text())["summary"]
    assert saved["LoiAP1"] == pytest.approx(50.0)
    # default options: AP with IoU >= 0.5, no extra keys
    default = CellInstanceEvaluator(point_dataset, distributed=False)
    default.reset()
    default.process(*_located_outputs(point_dataset))
    plain = default.evaluate()["cells"]
    assert plain["AP50-nuclei"] == pytest.approx(100.0)
    assert not any(k.startswith(("LoiAP", "InstDice-pooled")) for k in plain)


def test_cell_evaluator_loiap_errors(dataset, point_dataset):
    # the plain fixture's dataset dicts have no point_coords: error names dataset and image
    evaluator = CellInstanceEvaluator(dataset, loiap=True, distributed=False)
    inputs, outputs = _perfect_outputs(dataset)
    for out in outputs:
        out["instances"].pred_locations = torch.zeros(len(out["instances"]), 2)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with pytest.raises(InputError, match=rf"dataset '{dataset}', image_id 1 .*point_coords"):
        evaluator.evaluate()
    # locations for some images only
    evaluator = CellInstanceEvaluator(point_dataset, loiap=True, distributed=False)
    inputs, outputs = _located_outputs(point_dataset)
    outputs[1]["instances"].remove("pred_locations")
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with pytest.raises(ValueError, match="pred_locations missing for image_id 2"):
        evaluator.evaluate()


def test_cell_evaluator_loiap_skipped_without_locations(dataset, caplog):
    """A model without pred_locations (Mask R-CNN) under loiap=True: no LoiAP keys, a warning,
    the other metrics as usual (gt points are not needed then)."""
    evaluator = CellInstanceEvaluator(dataset, loiap=True, distributed=False)
    with caplog.at_level("WARNING"):
        cells = _run(evaluator, dataset)["cells"]
    assert not any(k.startswith("LoiAP") for k in cells) and cells["AP50"] == pytest.approx(100.0)
    assert "no instances.pred_locations" in caplog.text


def test_cell_evaluator_loiap_empty_output_without_locations(point_dataset):
    """An image with no detection and no pred_locations field does not turn LoiAP off."""
    inputs, outputs = _located_outputs(point_dataset)
    h, w = outputs[1]["instances"].image_size
    empty = Instances((h, w))
    empty.pred_masks = torch.zeros(0, h, w, dtype=torch.bool)
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.long)
    outputs[1] = {"instances": empty}
    evaluator = CellInstanceEvaluator(point_dataset, loiap=True, distributed=False)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    cells = evaluator.evaluate()["cells"]
    # cytoplasm: 2 exact points of image 1 ranked first, the gt of image 2 missed: 2/3
    assert cells["LoiAP5-cytoplasm"] == pytest.approx(100.0 * 2 / 3)


def test_build_cell_evaluators_cks_eval_options(point_dataset):
    cfg = get_cfg()
    add_sslseg_config(cfg)
    cfg.MODEL.CKS = CN()
    cfg.MODEL.CKS.EVAL = CN({"STRICT_AP": True, "POOLED_DICE": True, "LOIAP": True})
    evaluators = build_cell_evaluators(cfg, point_dataset)
    evaluators.reset()
    evaluators.process(*_located_outputs(point_dataset))
    results = evaluators.evaluate()
    cells = results["cells"]
    assert cells["AP50-nuclei"] == pytest.approx(50.0) and cells["LoiAP1"] == pytest.approx(50.0)
    assert "InstDice-pooled" in cells and "segm" in results
    # CKS node without EVAL, and EVAL with only some keys
    del cfg.MODEL.CKS["EVAL"]
    cell_eval = build_cell_evaluators(cfg, point_dataset)._evaluators[1]
    assert not (cell_eval._strict_ap or cell_eval._pooled_dice or cell_eval._loiap)
    cfg.MODEL.CKS.EVAL = CN({"POOLED_DICE": True})
    cell_eval = build_cell_evaluators(cfg, point_dataset)._evaluators[1]
    assert cell_eval._pooled_dice and not (cell_eval._strict_ap or cell_eval._loiap)
