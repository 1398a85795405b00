"""tools/coco_eval.py (sslseg-coco-eval) on tiny gt / prediction json files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_util

from sslseg.metrics.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "coco_eval.py")


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def files(tmp_path):
    """gt: one 20x20 image, two overlapping cytoplasm and one nucleus (one as a polygon);
    predictions: the same masks (perfect)."""
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:12, 2:12] = masks[1, 6:16, 6:16] = masks[2, 4:7, 4:7] = True
    anns = [
        {
            "id": i + 1,
            "image_id": 7,
            "category_id": c,
            "segmentation": _rle(m),
            "area": int(m.sum()),
            "bbox": mask_util.toBbox(_rle(m)).tolist(),
            "iscrowd": 0,
        }
        for i, (m, c) in enumerate(zip(masks, [1, 1, 2]))
    ]
    anns[2]["segmentation"] = [[4, 4, 7, 4, 7, 7, 4, 7]]  # polygon of the nucleus square
    gt = {
        "images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cytoplasm"}, {"id": 2, "name": "nuclei"}],
    }
    preds = [
        {"image_id": 7, "category_id": c, "segmentation": _rle(m), "score": s}
        for m, c, s in zip(masks, [1, 1, 2], [0.9, 0.8, 0.7])
    ]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path, gt, preds


def test_cli_subprocess_perfect(files, tmp_path):
    gt_path, pred_path, _, _ = files
    out = tmp_path / "m" / "metrics.json"
    proc = subprocess.run(
        [sys.executable, TOOL, "--gt", str(gt_path), "--pred", str(pred_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cytoplasm" in proc.stdout and "nuclei" in proc.stdout and "AJI" in proc.stdout
    table = json.loads(out.read_text())
    assert set(table) == {"cytoplasm", "nuclei", "mean"}
    # the polygon [4,4 .. 7,7] rasterises (pycocotools) to the 3x3 square rows/cols 4..6
    for name, row in table.items():
        for col, value in row.items():
            assert value == pytest.approx(100.0), f"{name} {col}"


def test_cli_subprocess_missing_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, TOOL, "--gt", str(tmp_path / "nope.json"), "--pred", "x.json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2 and "gt file not found" in proc.stderr and "nope.json" in proc.stderr
    )


def test_cli_bad_predictions(files, tmp_path, capsys):
    gt_path, _, _, preds = files
    bad_image = [dict(preds[0], image_id=99)]
    no_segm = [{k: v for k, v in preds[0].items() if k != "segmentation"}]
    for bad, message in ((bad_image, "image_id 99 not in"), (no_segm, "has no 'segmentation'")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        assert main(["--gt", str(gt_path), "--pred", str(path)]) == 2
        assert message in capsys.readouterr().err
