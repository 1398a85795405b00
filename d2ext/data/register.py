"""Register COCO-json datasets with optional point annotations, and images-only (unlabeled) sets.

Point annotations follow detectron2's ``projects/PointSup``: each annotation may carry
``point_coords`` ``[[x, y], ...]`` (float pixels) and ``point_labels`` ``[1, ...]``; they are kept
in the dataset dicts by ``load_coco_json(..., extra_annotation_keys=...)``, with the annotation's
COCO ``id`` (so that checks of the dicts, e.g. :func:`d2ext.cks.check_cks_dicts`, name it).
An annotation may have points and no ``segmentation`` (point-only labels, CKS); detectron2's
``load_coco_json`` then leaves the key out of its dict.
"""

import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .checks import DatasetError, check_coco_dataset, read_json
from .image_io import open_image

# extra annotation keys kept; "id" is ignored by detectron2's mappers and evaluators (which
# renumber annotations when they write a COCO json)
POINT_KEYS = ["point_coords", "point_labels", "id"]


def load_coco_json_with_points(json_file, image_root, dataset_name=None) -> List[Dict]:
    """``load_coco_json`` keeping ``point_coords``/``point_labels`` and ``id`` (POINT_KEYS), after
    :func:`~d2ext.data.checks.check_coco_dataset` (bad records: a DatasetError naming them)."""
    check_coco_dataset(str(json_file), str(image_root))
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=POINT_KEYS)


def register_coco_instances_with_points(name: str, metadata: dict, json_file, image_root) -> None:
    """Like detectron2's ``register_coco_instances``, keeping point annotations when present.

    Args:
        name: dataset name, e.g. "isbi2014_train".
        metadata: extra metadata (e.g. ``thing_classes``); ``evaluator_type`` defaults to "coco".
        json_file: COCO instances json (RLE or polygon masks; optional points per annotation).
        image_root: folder the json's ``file_name`` entries are relative to.
    """
    assert isinstance(name, str), f"dataset name must be a str, got {name!r}"
    DatasetCatalog.register(name, lambda: load_coco_json_with_points(json_file, image_root, name))
    metadata = {"evaluator_type": "coco", **metadata}
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root), **metadata)


def load_unlabeled_images(json_file, image_root) -> List[Dict]:
    """Read an images-only COCO json into dataset dicts without annotations.

    Returns:
        list of ``{"file_name", "height", "width", "image_id"}``; any ``annotations`` in the json
        are ignored (the stream is unlabeled by definition).
    Raises:
        DatasetError (a ValueError): the json is not JSON or has no images;
        FileNotFoundError / ImageReadError: an image file is missing / truncated or unreadable
        (PNG: chunk CRCs verified; other formats decoded).
    """
    images = read_json(str(json_file)).get("images", [])
    if not images:
        raise DatasetError(f"{json_file}: no 'images' entries; an unlabeled set needs at least one")
    dicts = []
    for img in images:
        file_name = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(file_name):
            raise FileNotFoundError(
                f"{json_file}: image {img['file_name']!r} not found: {file_name}"
            )
        open_image(file_name, verify_only=file_name.lower().endswith(".png"))
        dicts.append(
            {
                "file_name": file_name,
                "height": img["height"],
                "width": img["width"],
                "image_id": img["id"],
            }
        )
    return dicts


def register_unlabeled_images(name: str, json_file, image_root, metadata: dict = None) -> None:
    """Register an images-only dataset (``annotations: []``) whose dicts carry no annotations."""
    assert isinstance(name, str), f"dataset name must be a str, got {name!r}"
    DatasetCatalog.register(name, lambda: load_unlabeled_images(json_file, image_root))
    MetadataCatalog.get(name).set(image_root=str(image_root), **(metadata or {}))
