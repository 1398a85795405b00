"""Dataset registration, the two-stream loader, device resolution and the built-in datasets."""

import itertools
import json
import os
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import d2ext  # noqa: F401  (registers the built-in datasets)
from d2ext.config import add_sslseg_config, resolve_device
from d2ext.data import (
    build_resumable_train_loader,
    build_two_stream_train_loader,
    register_coco_instances_with_points,
    register_unlabeled_images,
    split_batch_size,
)
from sslseg.datasets.synthetic import make_cells, make_unlabeled_cells
from sslseg.paths import data_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """A labeled (3 images) and an unlabeled (4 images) synthetic set, registered."""
    root = tmp_path_factory.mktemp("cells")
    labeled_json, labeled_root = make_cells(root / "labeled", num_images=3, size=96, seed=0)
    unlabeled_json, unlabeled_root = make_unlabeled_cells(
        root / "unlabeled", num_images=4, size=96, seed=1
    )
    labeled, unlabeled = _name("t_cells"), _name("t_cells_unlabeled")
    register_coco_instances_with_points(labeled, {}, labeled_json, labeled_root)
    register_unlabeled_images(unlabeled, unlabeled_json, unlabeled_root)
    return labeled, unlabeled


def test_points_are_loaded(cells):
    dicts = DatasetCatalog.get(cells[0])
    assert len(dicts) == 3
    annos = [a for d in dicts for a in d["annotations"]]
    assert annos, "synthetic cells should have instances"
    for a in annos:
        ((x, y),) = a["point_coords"]  # one centroid per instance
        assert a["point_labels"] == [1]
        x0, y0, w, h = a["bbox"]
        assert x0 - 1 <= x <= x0 + w + 1 and y0 - 1 <= y <= y0 + h + 1, (a["bbox"], (x, y))
        assert isinstance(a["segmentation"], dict), "masks are RLE"
    meta = MetadataCatalog.get(cells[0])
    assert meta.thing_classes == ["cytoplasm", "nuclei"] and meta.evaluator_type == "coco"


def test_unlabeled_registration(cells, tmp_path):
    dicts = DatasetCatalog.get(cells[1])
    assert len(dicts) == 4
    assert all("annotations" not in d and os.path.isfile(d["file_name"]) for d in dicts)
    assert {d["height"] for d in dicts} == {96}

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    register_unlabeled_images(name := _name("t_empty"), str(empty), str(tmp_path))
    with pytest.raises(ValueError, match="no 'images'"):
        DatasetCatalog.get(name)

    missing = tmp_path / "missing.json"
    img = {"id": 1, "file_name": "nope.png", "height": 8, "width": 8}
    missing.write_text(json.dumps({"images": [img], "annotations": [], "categories": []}))
    register_unlabeled_images(name := _name("t_missing"), str(missing), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        DatasetCatalog.get(name)


def test_split_batch_size():
    assert split_batch_size(2, 1.0) == (1, 1)
    assert split_batch_size(3, 1.0) == (2, 1)  # odd totals: the extra image goes to labeled
    assert split_batch_size(6, 2.0) == (2, 4)
    assert split_batch_size(3, 0.5) == (2, 1)
    with pytest.raises(AssertionError, match="both streams"):
        split_batch_size(1, 1.0)


def _loader_cfg(cells, total, ratio):
    cfg = get_cfg()
    add_sslseg_config(cfg)
    cfg.DATASETS.TRAIN = (cells[0],)
    cfg.DATASETS.TRAIN_UNLABELED = (cells[1],)
    cfg.SOLVER.IMS_PER_BATCH = total
    cfg.DATALOADER.UNLABELED_RATIO = ratio
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.SEED = 3
    return cfg


@pytest.mark.parametrize("total,ratio,expected", [(2, 1.0, (1, 1)), (3, 0.5, (2, 1))])
def test_two_stream_loader(cells, total, ratio, expected):
    loader = build_two_stream_train_loader(_loader_cfg(cells, total, ratio))
    labeled_files = {d["file_name"] for d in DatasetCatalog.get(cells[0])}
    unlabeled_files = {d["file_name"] for d in DatasetCatalog.get(cells[1])}
    seen_unlabeled = set()
    for step, (labeled, unlabeled) in enumerate(loader):
        assert (len(labeled), len(unlabeled)) == expected
        assert all(d["file_name"] in labeled_files and "instances" in d for d in labeled)
        assert all(d["file_name"] in unlabeled_files and "instances" not in d for d in unlabeled)
        assert all(d["image"].shape[0] == 3 and min(d["image"].shape[1:]) == 64 for d in labeled)
        seen_unlabeled |= {d["file_name"] for d in unlabeled}
        if step == 7:
            break
    # TrainingSampler yields whole permutations: 8 draws from 4 images cover all of them
    assert seen_unlabeled == unlabeled_files


def test_two_stream_needs_unlabeled(cells):
    cfg = _loader_cfg(cells, 2, 1.0)
    cfg.DATASETS.TRAIN_UNLABELED = ()
    with pytest.raises(AssertionError, match="TRAIN_UNLABELED is empty"):
        build_two_stream_train_loader(cfg)


def _ids(batches):
    return [[d["file_name"] for d in b] for b in batches]


def test_two_stream_gate_skips_the_unlabeled_stream(cells):
    """While the gate says no, pairs hold None and the unlabeled stream is not advanced."""
    loader = build_two_stream_train_loader(_loader_cfg(cells, 2, 1.0))
    ungated = list(itertools.islice(iter(loader), 4))
    loader = build_two_stream_train_loader(_loader_cfg(cells, 2, 1.0))
    open_from = 2
    state = {"step": 0}

    def gate():
        state["step"] += 1
        return state["step"] > open_from

    loader.unlabeled_gate = gate
    gated = list(itertools.islice(iter(loader), 4))
    assert _ids(b for b, _ in gated) == _ids(b for b, _ in ungated), "labeled stream changed"
    assert [u is None for _, u in gated] == [True, True, False, False]
    # the first unlabeled batch drawn is the stream's first, not its third
    assert _ids(u for _, u in gated[open_from:]) == _ids(u for _, u in ungated[:2])


def test_resumable_sampler_continues_the_sequence(cells):
    """skip = images already drawn: the samplers continue where an uninterrupted run is."""
    full = build_two_stream_train_loader(_loader_cfg(cells, 2, 1.0))
    pairs = list(itertools.islice(iter(full), 5))
    resumed = build_two_stream_train_loader(_loader_cfg(cells, 2, 1.0))
    for sampler in resumed.samplers:
        sampler.skip = 3  # 3 steps of 1 image per stream
    again = list(itertools.islice(iter(resumed), 2))
    assert _ids(b for b, _ in again) == _ids(b for b, _ in pairs[3:])
    assert _ids(u for _, u in again) == _ids(u for _, u in pairs[3:])


def test_resumable_train_loader_continues_and_refuses_other_samplers(cells):
    """The supervised trainers' loader: skip continues it; both loaders name a sampler they
    cannot continue."""
    cfg = _loader_cfg(cells, 2, 1.0)
    full = list(itertools.islice(iter(build_resumable_train_loader(cfg)), 4))
    resumed = build_resumable_train_loader(cfg)
    (sampler,) = resumed.samplers
    sampler.skip = 2 * 2  # 2 steps of 2 images
    assert _ids(itertools.islice(iter(resumed), 2)) == _ids(full[2:])
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    for build in (build_resumable_train_loader, build_two_stream_train_loader):
        with pytest.raises(AssertionError, match="SAMPLER_TRAIN is 'RepeatFactorTrainingSampler'"):
            build(cfg)


@pytest.mark.parametrize(
    "device,cuda,expected",
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda", False, "cuda")],
)
def test_resolve_device(monkeypatch, device, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = get_cfg()
    add_sslseg_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    assert resolve_device(cfg).MODEL.DEVICE == expected
    assert cfg.is_frozen()


def test_auto_is_the_default():
    cfg = get_cfg()
    add_sslseg_config(cfg)
    assert cfg.MODEL.DEVICE == "auto" and cfg.DATASETS.DATA_ROOT == ""


ROOT = data_root()


@pytest.mark.skipif(
    ROOT is None or not (ROOT / "isbi2014_cervical/train45").is_dir(),
    reason="real data not found (set SSLSEG_DATA or put it at ../shared/data)",
)
def test_builtin_isbi2014_counts():
    pytest.importorskip("sslseg.datasets.isbi2014", reason="ISBI 2014 converter not available")
    counts = {"isbi2014_train45": 45, "isbi2014_train": 35, "isbi2014_test": 10}
    for name, n in counts.items():
        assert len(DatasetCatalog.get(name)) == n, name
    train45 = DatasetCatalog.get("isbi2014_train45")
    assert sum(len(d["annotations"]) for d in train45) > 270  # 270 cells + their nuclei
    train = {d["image_id"] for d in DatasetCatalog.get("isbi2014_train")}
    assert not train & {d["image_id"] for d in DatasetCatalog.get("isbi2014_test")}
    for pct, k in [(10, 4), (40, 14), (100, 35)]:
        labeled = DatasetCatalog.get(f"isbi2014_train_labeled_{pct}")
        assert len(labeled) == k and {d["image_id"] for d in labeled} <= train
        if pct < 100:
            unlabeled = DatasetCatalog.get(f"isbi2014_train_unlabeled_{pct}")
            assert len(unlabeled) == 35 - k
            assert all("annotations" not in d for d in unlabeled)
            ids = {d["image_id"] for d in unlabeled}
            assert not ids & {d["image_id"] for d in labeled}
    ids = {pct: {d["image_id"] for d in DatasetCatalog.get(f"isbi2014_train_labeled_{pct}")}
           for pct in (10, 20, 40)}  # fmt: skip
    assert ids[10] < ids[20] < ids[40], "labeled fractions are nested (one permutation)"
    assert len(DatasetCatalog.get("isbi2014_edf_unlabeled")) == 16


@pytest.mark.skipif(ROOT is None, reason="real data not found")
@pytest.mark.parametrize(
    "name,sub,num_images,num_cells",
    [
        ("dsb2018_stardist_points", "stardist_dsb2018", 1, 125),
        ("miccai2015_nuclei_points", "miccai2015_nuclei", 15, 2905),
    ],
)
def test_builtin_point_sets(name, sub, num_images, num_cells):
    pytest.importorskip("sslseg.datasets.instance_maps", reason="converter not available")
    if not (ROOT / sub).is_dir():
        pytest.skip(f"{ROOT / sub} not found")
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == num_images
    annos = [a for d in dicts for a in d["annotations"]]
    assert len(annos) == num_cells
    assert all(len(a["point_coords"]) == 1 and a["point_labels"] == [1] for a in annos)
    assert MetadataCatalog.get(name).thing_classes == ["cell"]


def test_builtin_missing_root_error(tmp_path):
    from d2ext.data import set_data_root

    set_data_root(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="isbi2014_cervical"):
            DatasetCatalog.get("isbi2014_test")
    finally:
        set_data_root(None)
