"""CellInstanceEvaluator and build_cell_evaluators on a tiny registered COCO dataset."""

import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BitMasks, Instances
from pycocotools import mask as mask_util

from d2ext.config import add_sslseg_config
from d2ext.evaluation import CellInstanceEvaluator, build_cell_evaluators
from sslseg.datasets.coco_utils import image_record, mask_to_annotation


def _grid(n_rows, n_cols, step=5, size=3):
    """(n_rows*n_cols, H, W) disjoint size x size squares."""
    masks = np.zeros((n_rows * n_cols, n_rows * step, n_cols * step), bool)
    for k in range(len(masks)):
        y, x = (k // n_cols) * step, (k % n_cols) * step
        masks[k, y : y + size, x : x + size] = True
    return masks


@pytest.fixture
def dataset(tmp_path):
    """Image 1: 150 cytoplasm cells (more than COCO's 100); image 2: 2 overlapping cytoplasm and
    2 nuclei. Segmentations are compressed RLE with str counts, as docs/data_formats.md."""
    dense = _grid(10, 15)
    img2 = np.zeros((4, 20, 20), bool)
    img2[0, 2:12, 2:12] = img2[1, 6:16, 6:16] = True  # overlapping cytoplasm
    img2[2, 4:7, 4:7] = img2[3, 10:13, 10:13] = True  # nuclei
    images, anns = [], []
    for img_id, (masks, cats) in enumerate([(dense, [1] * 150), (img2, [1, 1, 2, 2])], start=1):
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
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
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
