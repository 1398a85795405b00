"""Bad inputs of CKS / LACSS (docs/bad_inputs.md, section "Detectron2: CKS (LACSS)"): unknown
config values and feature names that stop the model or optimizer build naming the key and the
value, and the training-record checks wired into ``CKSTrainer.build_train_loader``.

The per-record messages of ``check_cks_dicts`` are tested in
``tests/test_cks_model.py::test_bad_training_records_name_file_and_record``; the load-time point
checks in ``tests/test_bad_input_d2_data.py``.
"""

import re
import uuid
from pathlib import Path

import pytest
from conftest import CKS_DEMO, CKS_TINY
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import d2ext  # noqa: F401  (registers datasets, models)
from d2ext.cks import CKSTrainer
from d2ext.config import build_cfg
from d2ext.data import DatasetError

REPO = Path(__file__).resolve().parent.parent
DEMO = CKS_DEMO
TINY = CKS_TINY


def _cfg(*opts):
    return build_cfg(DEMO, TINY + list(opts))


def _build_error(*opts) -> str:
    """The message of the error that ``build_model`` raises for the config ``opts``."""
    with pytest.raises((AssertionError, ValueError)) as e:
        build_model(_cfg(*opts))
    return str(e.value)


def test_unknown_mode_names_the_key():
    msg = _build_error("MODEL.CKS.MODE", "pointz")
    assert "MODEL.CKS.MODE" in msg and "'pointz'" in msg and "'supervised'" in msg, msg


def test_unknown_init_names_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.CKS\.INIT must be one of .*got 'xavier'"):
        build_model(_cfg("MODEL.CKS.INIT", "xavier"))


def test_unknown_optimizer_names_the_key():
    cfg = _cfg("SOLVER.OPTIMIZER", "ADAM")
    model = build_model(cfg)
    with pytest.raises(ValueError) as e:
        CKSTrainer.build_optimizer(cfg, model)
    msg = str(e.value)
    assert "SOLVER.OPTIMIZER is 'ADAM'" in msg and "ADAMW" in msg and "SGD" in msg, msg
    # the two known names (any case) build
    for name in ("adamw", "SGD"):
        CKSTrainer.build_optimizer(_cfg("SOLVER.OPTIMIZER", name), model)


def test_feature_names_not_output_by_the_backbone():
    """LPN / segmentor features the backbone does not output, and a segmentor level whose
    stride is not 4: the message names the key, the value and what the backbone outputs."""
    msg = _build_error("MODEL.CKS.LPN.IN_FEATURES", "['p2', 'p6']")
    assert "MODEL.CKS.LPN.IN_FEATURES ['p2', 'p6']" in msg and "name ['p6']" in msg, msg
    assert "build_lacss_resnet_backbone does not output (['p2', 'p3', 'p4', 'p5'])" in msg, msg
    msg = _build_error("MODEL.CKS.SEGMENTOR.IN_FEATURE", "res2")
    assert "MODEL.CKS.SEGMENTOR.IN_FEATURE 'res2'" in msg and "name ['res2']" in msg, msg
    msg = _build_error("MODEL.CKS.SEGMENTOR.IN_FEATURE", "p3")
    assert "MODEL.CKS.SEGMENTOR.IN_FEATURE 'p3' has stride 8" in msg, msg


def _register(records):
    name = f"t_cks_bad_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    return name


def test_train_loader_checks_the_records_first():
    """``CKSTrainer.build_train_loader`` refuses bad training records before any step, naming
    the dataset, the image and the annotation id (mode from MODEL.CKS.MODE)."""
    image = {"file_name": "/data/img3.png", "image_id": 3, "height": 40, "width": 40}
    empty = _register([{**image, "annotations": []}])
    with pytest.raises(DatasetError, match=rf"{empty}: image /data/img3\.png .*has no points"):
        CKSTrainer.build_train_loader(_cfg("DATASETS.TRAIN", f"('{empty}',)"))
    ann = {"id": 9, "category_id": 0, "point_coords": [[5.0, 5.0]]}
    points_only = _register([{**image, "annotations": [ann]}])
    cfg = _cfg("DATASETS.TRAIN", f"('{points_only}',)", "MODEL.CKS.MODE", "supervised")
    with pytest.raises(DatasetError) as e:
        CKSTrainer.build_train_loader(cfg)
    msg = str(e.value)
    assert msg.startswith("CKS (supervised mode) training data: 1 bad records"), msg
    assert re.search(r"img3\.png .*annotation id 9: points given where masks are required", msg)
