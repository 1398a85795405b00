"""LIVECell COCO json (polygon segmentations) -> the same json with one point per instance.

Command line: ``sslseg-convert livecell IN.json IMAGE_ROOT OUT.json``.
"""

import json
import logging
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from pycocotools import mask as mask_util

from sslseg.errors import InputError, InputKeyError, MissingInputError

from .coco_utils import instance_point, write_coco
from .io_utils import PathLike

logger = logging.getLogger(__name__)


def segmentation_to_mask(segm, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to (H, W) bool."""
    if isinstance(segm, list):  # polygons
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_util.decode(rle).astype(bool)


def convert_livecell(
    in_json: PathLike,
    image_root: PathLike,
    out_json: PathLike,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    seed: int = 0,
    check_images: bool = True,
) -> Tuple[str, str]:
    """Add ``point_coords``/``point_labels`` to every annotation of a LIVECell json.

    Segmentations (polygons as shipped) and categories are kept; ``iscrowd`` defaults to 0 and a
    missing ``area``/``bbox`` is filled from the mask. LIVECell stores ``annotations`` as a dict
    keyed by id; it is written back as a list (standard COCO).

    Returns:
        (json_path, image_root)
    """
    in_json, image_root = Path(in_json), Path(image_root)
    if not in_json.is_file():
        raise MissingInputError(f"LIVECell json {in_json} does not exist")
    try:
        coco = json.loads(in_json.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"LIVECell json {in_json} is not valid json: {e}") from e
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise InputKeyError(f"LIVECell json {in_json} has no '{key}'")
    images: Dict[int, Dict] = {im["id"]: im for im in coco["images"]}
    if check_images:
        for im in images.values():
            if not (image_root / im["file_name"]).is_file():
                raise MissingInputError(
                    f"{in_json}: image {image_root / im['file_name']} " "does not exist"
                )
    anns = coco["annotations"]
    anns = list(anns.values()) if isinstance(anns, dict) else list(anns)
    rng = np.random.default_rng(seed)
    for ann in anns:
        im = images.get(ann["image_id"])
        if im is None:
            raise InputError(
                f"{in_json}: annotation {ann['id']} refers to unknown image " f"{ann['image_id']}"
            )
        mask = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        if not mask.any():
            raise InputError(
                f"{in_json}: annotation {ann['id']} (image {im['file_name']}) has an "
                "empty segmentation"
            )
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", int(mask.sum()))
        if "bbox" not in ann:
            ann["bbox"] = [
                float(v)
                for v in mask_util.toBbox(
                    mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                )
            ]
        ann["point_coords"] = [instance_point(mask, point_mode, jitter, rng)]
        ann["point_labels"] = [1]
    logger.info(f"LIVECell: {len(images)} images, {len(anns)} instances from {in_json}")
    path = write_coco(
        out_json,
        list(images.values()),
        anns,
        coco["categories"],
        f"LIVECell with points ({in_json})",
    )
    return str(path), str(image_root)
