"""Load-time checks of a COCO instances json and its images, before any training step.

:func:`check_coco_dataset` runs in :func:`d2ext.data.load_coco_json_with_points`, so every COCO
dataset the project loads (built-in, registered with ``register_coco_instances_with_points`` or
through ``DATASETS.COCO_JSON``) is checked when ``DatasetCatalog.get`` first loads it. Errors
name the json file, the image and the annotation id; all problems of a file are collected and
raised together as one :class:`DatasetError` (the first :data:`MAX_LISTED` listed).

Errors: the json is not valid JSON or lacks ``images``/``annotations``/``categories``; an image
file is missing, truncated or unreadable (PNG: chunk CRCs verified; other formats decoded), or
its size differs from the json's ``height``/``width``; an annotation's ``image_id`` is not an
image, its ``category_id`` is not one of ``categories`` (label out of range), its
``segmentation`` is empty (``[]``, ``{}``, or no polygon with 3 points), or its polygon lies
entirely outside the image, or its RLE ``size`` is not the image's; its ``point_coords`` is not a
list of ``[x, y]`` pairs, or a point lies outside the image (``0 <= x < width``,
``0 <= y < height``). A point-only annotation (``point_coords`` and no ``segmentation`` key, as
CKS's point labels) is accepted; one with neither is "segmentation is empty".
Warning (with the count): polygons partly outside the image (clipped to it when rasterised).
"""

import json
import logging
import os
from typing import Dict, List

import numpy as np

from sslseg.errors import InputError

from .image_io import open_image

logger = logging.getLogger(__name__)

MAX_LISTED = 10  # problems listed in one DatasetError (the rest are counted)


class DatasetError(InputError):
    """A dataset file with bad records; the message names the file and each bad record."""


def read_json(json_file: str) -> Dict:
    """``json.load`` of ``json_file``, naming the file when it is missing or not valid JSON."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation file not found: {json_file}")
    try:
        with open(json_file) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from e


def _polygon_extent(segm: List[List[float]]) -> np.ndarray:
    """(N, 2) xy points of every polygon."""
    return np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in segm])


def _segmentation_problem(segm, h: int, w: int, partly_outside: List[int], ann_id) -> str:
    """'' when the segmentation is usable, else what is wrong with it."""
    if isinstance(segm, dict):
        if not segm.get("counts"):
            return "segmentation is an empty RLE"
        size = list(segm.get("size", []))
        if size != [h, w]:
            return f"RLE size {size} is not the image's [height, width] [{h}, {w}]"
        return ""
    polys = [p for p in (segm or []) if len(p) >= 6 and len(p) % 2 == 0]
    if not polys:
        return "segmentation is empty (no polygon with at least 3 points)"
    xy = _polygon_extent(polys)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h)
    if not inside.any():
        x0, y0 = xy.min(0)
        x1, y1 = xy.max(0)
        return (
            f"polygon entirely outside the {w}x{h} image " f"(x {x0:g}..{x1:g}, y {y0:g}..{y1:g})"
        )
    if not inside.all():
        partly_outside.append(ann_id)
    return ""


def _point_problem(points, h: int, w: int) -> str:
    """'' when ``points`` is a list of [x, y] pairs inside the (h, w) image, else the problem."""
    try:
        xy = np.asarray(points, np.float64)
    except (TypeError, ValueError):
        xy = None
    if xy is None or xy.ndim != 2 or xy.shape[1] != 2 or not len(xy):
        return f"point_coords {points!r} is not a list of [x, y] pairs"
    for x, y in xy:
        if not (0 <= x < w and 0 <= y < h):
            return f"point ({x:g}, {y:g}) outside the {w}x{h} image"
    return ""


def check_coco_dataset(json_file: str, image_root: str, data: Dict = None) -> None:
    """Check ``json_file`` (a COCO instances json, optionally already parsed as ``data``) and
    the images under ``image_root`` it lists; raise :class:`DatasetError` naming every bad record
    (see the module docstring)."""
    data = read_json(json_file) if data is None else data
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing_keys or not isinstance(data, dict):
        raise DatasetError(f"{json_file}: not a COCO instances json (no {missing_keys} keys)")
    problems = []
    images = {}
    for img in data["images"]:
        file_name = os.path.join(image_root, img["file_name"])
        images[img["id"]] = img
        try:
            image = open_image(file_name, verify_only=file_name.lower().endswith(".png"))
        except (FileNotFoundError, OSError) as e:
            problems.append(f"image id {img['id']}: {e}")
            continue
        if (image.height, image.width) != (img.get("height"), img.get("width")):
            problems.append(
                f"image {file_name} is {image.height}x{image.width} (h x w), the json says "
                f"{img.get('height')}x{img.get('width')}"
            )
    category_ids = sorted(c["id"] for c in data["categories"])
    partly_outside = []
    for ann in data["annotations"]:
        ann_id = ann.get("id")
        img = images.get(ann.get("image_id"))
        if img is None:
            problems.append(f"annotation id {ann_id}: image_id {ann.get('image_id')} not in images")
            continue
        where = f"annotation id {ann_id} (image {img['file_name']})"
        if ann.get("category_id") not in category_ids:
            problems.append(
                f"{where}: category_id {ann.get('category_id')} not in the categories "
                f"{category_ids}"
            )
        if "segmentation" in ann or "point_coords" not in ann:  # point-only: no mask to check
            problem = _segmentation_problem(
                ann.get("segmentation"), img["height"], img["width"], partly_outside, ann_id
            )
            if problem:
                problems.append(f"{where}: {problem}")
        if "point_coords" in ann:
            problem = _point_problem(ann["point_coords"], img["height"], img["width"])
            if problem:
                problems.append(f"{where}: {problem}")
    if partly_outside:
        logger.warning(
            f"{json_file}: {len(partly_outside)} polygons partly outside their image (clipped "
            f"to it), e.g. annotation id {partly_outside[0]}"
        )
    raise_problems(f"{json_file} (images under {image_root})", problems)


def raise_problems(what: str, problems: List[str]) -> None:
    """Raise one :class:`DatasetError` "<what>: N bad records" listing the first
    :data:`MAX_LISTED` ``problems`` (and counting the rest); nothing when there are none."""
    if problems:
        more = len(problems) - MAX_LISTED
        listed = "\n  ".join(problems[:MAX_LISTED]) + (
            f"\n  ... and {more} more" if more > 0 else ""
        )
        raise DatasetError(f"{what}: {len(problems)} bad records:\n  {listed}")
