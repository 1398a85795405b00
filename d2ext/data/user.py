"""A user's own COCO json datasets, registered from the config (no Python to write).

    python tools/train_net.py --config-file configs/supervised/isbi2014_cells.yaml \\
        DATASETS.COCO_JSON '("mine_train:/data/train.json:/data/images", "mine_val:/d/v.json")' \\
        DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)' \\
        MODEL.ROI_HEADS.NUM_CLASSES 1

Each ``DATASETS.COCO_JSON`` entry is ``name:json_file[:image_root]`` (``image_root`` defaults to
the json's folder); the json is a COCO instances json as in docs/data_formats.md, optionally with
PointSup points. Registered with :func:`register_coco_instances_with_points` (``thing_classes``
from the json's categories, sorted by id), so the load-time checks of
:mod:`d2ext.data.checks` apply. :func:`setup_datasets` is what ``tools/train_net.py`` calls.
"""

import os
from typing import List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin import set_data_root
from .checks import DatasetError, read_json
from .image_io import configure_image_reader
from .register import register_coco_instances_with_points

__all__ = ["parse_coco_json_entry", "register_coco_json_datasets", "setup_datasets"]


def parse_coco_json_entry(entry: str) -> Tuple[str, str, str]:
    """``"name:json_file[:image_root]"`` -> ``(name, json_file, image_root)``."""
    parts = str(entry).split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DatasetError(
            f"DATASETS.COCO_JSON entry {entry!r}: expected 'name:json_file' or "
            f"'name:json_file:image_root'"
        )
    name, json_file = parts[0], parts[1]
    image_root = parts[2] if len(parts) == 3 else (os.path.dirname(json_file) or ".")
    return name, json_file, image_root


def register_coco_json_datasets(entries, num_classes: int = 0) -> List[str]:
    """Register each ``DATASETS.COCO_JSON`` entry (see the module docstring); returns the names.

    Args:
        num_classes: ``MODEL.ROI_HEADS.NUM_CLASSES``; when > 0, a json with another number of
            categories is an error naming both.
    Raises:
        DatasetError: malformed entry, json without categories or with the wrong number of
            them, or a name already registered for another json (e.g. a built-in dataset).
    """
    names = []
    for entry in entries:
        name, json_file, image_root = parse_coco_json_entry(entry)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file", None) == json_file:
                names.append(name)  # same json registered before (e.g. a second setup call)
                continue
            raise DatasetError(
                f"DATASETS.COCO_JSON entry {entry!r}: dataset name {name!r} is already "
                f"registered (a built-in dataset or another json); choose another name"
            )
        categories = sorted(read_json(json_file).get("categories", []), key=lambda c: c["id"])
        if not categories:
            raise DatasetError(f"{json_file}: no 'categories'; a labeled set needs at least one")
        if num_classes > 0 and len(categories) != num_classes:
            raise DatasetError(
                f"{json_file} has {len(categories)} categories "
                f"({[c['name'] for c in categories]}), MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{num_classes}: set MODEL.ROI_HEADS.NUM_CLASSES {len(categories)}"
            )
        metadata = {"thing_classes": [c["name"] for c in categories]}
        register_coco_instances_with_points(name, metadata, json_file, image_root)
        names.append(name)
    return names


def setup_datasets(cfg) -> List[str]:
    """Everything about data a run needs before loading: the data root, the image reader's
    grayscale switch and the ``DATASETS.COCO_JSON`` datasets; returns the registered names."""
    set_data_root(cfg.DATASETS.DATA_ROOT)
    configure_image_reader(cfg)
    return register_coco_json_datasets(cfg.DATASETS.COCO_JSON, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
