"""monai_bundles.common: the per-case metrics handler and the datalist helper, on hand-made data."""

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from monai_bundles.common.case_metrics import CaseMetricsWriter, to_label_map
from monai_bundles.common.datalist import datalist_split, inference_items

NUM_CLASSES = 3


def _one_hot(label_map: np.ndarray) -> torch.Tensor:
    """(H, W) int -> (C, H, W) float one-hot, as the bundles' AsDiscreted(to_onehot=C) gives."""
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(label_map), NUM_CLASSES)
    return one_hot.permute(2, 0, 1).float()


def _label_map(shift: int = 0) -> np.ndarray:
    """16x16 map: class 1 = 4x4 square at rows 2..5 (+ shift), class 2 = 4x4 at rows 10..13."""
    lab = np.zeros((16, 16), np.int64)
    lab[2 + shift : 6 + shift, 2:6] = 1
    lab[10:14, 10:14] = 2
    return lab


def _run(writer: CaseMetricsWriter, items: list) -> Engine:
    """An engine whose output per iteration is ``items`` (a decollated batch), like an evaluator."""
    engine = Engine(lambda e, batch: batch)
    writer.attach(engine)
    engine.run([items], max_epochs=1)
    return engine


def _item(pred: np.ndarray, label: np.ndarray, name: str) -> dict:
    image = MetaTensor(torch.zeros(1, 16, 16), meta={"filename_or_obj": f"/some/dir/{name}"})
    return {"image": image, "pred": _one_hot(pred), "label": _one_hot(label)}


def test_perfect_prediction_writes_json_and_csv(tmp_path):
    lab = _label_map()
    writer = CaseMetricsWriter(output_dir=str(tmp_path), num_classes=NUM_CLASSES)
    _run(writer, [_item(lab, lab, "a.h5"), _item(lab, lab, "b.h5")])

    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["a.h5", "b.h5"]
    assert doc["mean"]["dice_mean"] == pytest.approx(1.0)
    assert doc["mean"]["jaccard_mean"] == pytest.approx(1.0)
    assert doc["mean"]["hd95_mean"] == pytest.approx(0.0)
    assert "dice_0" not in doc["mean"]  # background excluded by default

    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a.h5", "b.h5", "mean"]
    assert float(rows[0]["dice_1"]) == pytest.approx(1.0)


def test_imperfect_prediction_matches_hand_computed_dice(tmp_path):
    lab, pred = _label_map(), _label_map(shift=1)  # class 1 shifted one row: overlap 12 of 16
    writer = CaseMetricsWriter(output_dir=str(tmp_path), num_classes=NUM_CLASSES, stem="val")
    _run(writer, [_item(pred, lab, "c.h5")])
    case = json.loads((tmp_path / "val.json").read_text())["cases"][0]
    assert case["dice_1"] == pytest.approx(2 * 12 / 32)
    assert case["jaccard_1"] == pytest.approx(12 / 20)
    assert case["dice_2"] == pytest.approx(1.0)
    assert case["dice_mean"] == pytest.approx((2 * 12 / 32 + 1.0) / 2)
    assert (tmp_path / "val.csv").is_file()


def test_rows_reset_every_evaluation_epoch(tmp_path):
    lab = _label_map()
    writer = CaseMetricsWriter(output_dir=str(tmp_path), num_classes=NUM_CLASSES)
    engine = Engine(lambda e, batch: batch)
    writer.attach(engine)
    for _ in range(2):  # an evaluator is re-run at every validation round
        engine.run([[_item(lab, lab, "a.h5")]], max_epochs=1)
    assert len(json.loads((tmp_path / "metrics.json").read_text())["cases"]) == 1


def test_to_label_map_accepts_scores_and_indices():
    lab = _label_map()
    assert np.array_equal(to_label_map(_one_hot(lab)), lab)
    assert np.array_equal(to_label_map(torch.as_tensor(lab)[None]), lab)
    with pytest.raises(ValueError, match="expected a"):
        to_label_map(torch.zeros(5))


def test_clear_errors(tmp_path):
    writer = CaseMetricsWriter(output_dir=str(tmp_path), num_classes=NUM_CLASSES)
    with pytest.raises(KeyError, match="no 'pred'"):
        _run(writer, [{"label": _one_hot(_label_map())}])
    with pytest.raises(ValueError, match="prediction shape"):
        writer.add_case(torch.zeros(3, 8, 8), torch.zeros(3, 16, 16), "bad")
    with pytest.raises(RuntimeError, match="no case was scored"):
        CaseMetricsWriter(output_dir=str(tmp_path), num_classes=NUM_CLASSES).write()


def test_datalist_split(tmp_path):
    (tmp_path / "img.h5").write_bytes(b"")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "labeled": [{"image": "img.h5", "label": "img.h5"}],
                "unlabeled": [],
                "validation": [{"image": "missing.h5", "label": "missing.h5"}],
                "test": [{"image": "img.h5"}],
            }
        )
    )
    items = datalist_split(str(datalist), "labeled", str(tmp_path))
    assert items == [{"image": str(tmp_path / "img.h5"), "label": str(tmp_path / "img.h5")}]
    assert datalist_split(str(datalist), "test", str(tmp_path), keys=["image"])[0]["image"] == str(
        tmp_path / "img.h5"
    )
    assert datalist_split(str(datalist), "unlabeled", str(tmp_path), allow_empty=True) == []
    with pytest.raises(ValueError, match="'unlabeled' .* is empty"):
        datalist_split(str(datalist), "unlabeled", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        datalist_split(str(datalist), "validation", str(tmp_path))
    with pytest.raises(KeyError, match="has no 'label'"):
        datalist_split(str(datalist), "test", str(tmp_path))
    with pytest.raises(KeyError, match="no split 'train'"):
        datalist_split(str(datalist), "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datalist_split(str(tmp_path / "nope.json"), "labeled", str(tmp_path))


def test_datalist_split_in_memory_and_inference_items(tmp_path):
    """A dict datalist (the bundles' default) reads as its json; inference also takes a folder."""
    (tmp_path / "a").mkdir()
    for name in ("a/x.h5", "y.h5", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    content = {
        "labeled": [{"image": "y.h5", "label": "y.h5"}],
        "test": [{"image": "a/x.h5"}],
        "description": "hand-made",
    }
    (tmp_path / "dl.json").write_text(json.dumps(content))
    assert datalist_split(content, "labeled", str(tmp_path)) == datalist_split(
        str(tmp_path / "dl.json"), "labeled", str(tmp_path)
    )
    with pytest.raises(KeyError, match="in-memory datalist: hand-made"):
        datalist_split(content, "validation", str(tmp_path))
    assert inference_items(content, "test", str(tmp_path)) == [{"image": str(tmp_path / "a/x.h5")}]
    assert inference_items(str(tmp_path), "unused", "unused") == [
        {"image": str(tmp_path / "a" / "x.h5")},
        {"image": str(tmp_path / "y.h5")},
    ]
    with pytest.raises(FileNotFoundError, match="no \\*.nii.gz file"):
        inference_items(str(tmp_path / "a"), "test", "", pattern="*.nii.gz")
