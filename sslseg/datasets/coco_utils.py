"""Binary mask -> COCO instance annotation (compressed RLE, bbox, area, one point).

Point convention (Detectron2 / PointSup): ``point_coords`` are continuous pixel coordinates
``[x, y]`` where pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``; the centre of that
pixel is ``(c + 0.5, r + 0.5)``. A point ``(x, y)`` lies inside ``mask`` iff
``mask[floor(y), floor(x)]`` is set (see :func:`point_in_mask`).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_util

from sslseg.errors import InputError

from .io_utils import PathLike, write_json_atomic

CERVICAL_CATEGORIES = [
    {"id": 1, "name": "cytoplasm", "supercategory": "cell"},
    {"id": 2, "name": "nuclei", "supercategory": "cell"},
]
CELL_CATEGORIES = [{"id": 1, "name": "cell", "supercategory": "cell"}]
POINT_MODES = ("centroid", "jitter")


def encode_mask(mask: np.ndarray) -> Dict:
    """Encode an (H, W) binary mask as compressed COCO RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def point_in_mask(mask: np.ndarray, xy: Sequence[float]) -> bool:
    """Whether the continuous point ``(x, y)`` falls on a set pixel of the (H, W) ``mask``."""
    c, r = int(np.floor(xy[0])), int(np.floor(xy[1]))
    return 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])


def _nearest_inside(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Centre of the set pixel of ``mask`` nearest to the point ``xy`` = (x, y)."""
    rows, cols = np.nonzero(mask)
    d2 = (cols + 0.5 - xy[0]) ** 2 + (rows + 0.5 - xy[1]) ** 2
    i = int(np.argmin(d2))
    return np.array([cols[i] + 0.5, rows[i] + 0.5])


def instance_point(
    mask: np.ndarray,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    anchor: Optional[np.ndarray] = None,
) -> List[float]:
    """One point ``[x, y]`` inside the (H, W) binary ``mask``.

    Args:
        point_mode: "centroid": the mask centroid, or the mask pixel nearest to it when the
            centroid falls outside a non-convex mask. "jitter": the centroid plus gaussian noise
            of std ``jitter`` pixels (from ``rng``), moved to the nearest mask pixel if it leaves
            the mask.
        anchor: optional (mask) from which to take the centroid instead of ``mask`` itself (e.g.
            the cell's nucleus); the result is still guaranteed inside ``mask``.
    """
    if point_mode not in POINT_MODES:
        raise InputError(f"point_mode must be one of {POINT_MODES}, got {point_mode!r}")
    src = mask if anchor is None or not anchor.any() else (anchor & mask.astype(bool))
    if not src.any():
        src = mask
    rows, cols = np.nonzero(src)
    xy = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
    if point_mode == "jitter" and jitter > 0:
        if rng is None:
            raise InputError("point_mode='jitter' needs an rng (np.random.Generator)")
        xy = xy + rng.normal(0.0, jitter, size=2)
        xy = np.clip(xy, 0.0, np.array([mask.shape[1], mask.shape[0]]) - 1e-3)
    if not point_in_mask(mask, xy):
        xy = _nearest_inside(mask, xy)
    return [float(xy[0]), float(xy[1])]


def mask_to_annotation(
    mask: np.ndarray,
    category_id: int,
    ann_id: int,
    image_id: int,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    anchor: Optional[np.ndarray] = None,
    source: str = "",
) -> Dict:
    """COCO annotation of one instance given as an (H, W) binary mask.

    Returns ``{"id", "image_id", "category_id", "segmentation" (compressed RLE), "bbox" (XYWH),
    "area" (pixel count), "iscrowd": 0, "point_coords": [[x, y]], "point_labels": [1]}``.
    Raises ``ValueError`` (naming ``source``) for an empty mask.
    """
    if mask.ndim != 2:
        raise InputError(f"{source}: instance mask must be (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError(f"{source}: instance {ann_id} (category {category_id}) has an empty mask")
    rle = encode_mask(mask)
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    # choose the point on the bbox crop (fast for dense images), then shift it back
    x0, y0, w, h = (int(v) for v in bbox)
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    x, y = instance_point(
        mask[crop], point_mode, jitter, rng, None if anchor is None else anchor[crop].astype(bool)
    )
    return {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": rle,
        "bbox": bbox,
        "area": int(mask_util.area(rle)),
        "iscrowd": 0,
        "point_coords": [[x + x0, y + y0]],
        "point_labels": [1],
    }


def image_record(image_id: int, file_name: str, height: int, width: int) -> Dict:
    """COCO ``images`` entry (``file_name`` relative to the image root)."""
    return {
        "id": int(image_id),
        "file_name": str(file_name),
        "height": int(height),
        "width": int(width),
    }


def write_coco(
    out_json: PathLike,
    images: List[Dict],
    annotations: List[Dict],
    categories: List[Dict],
    description: str = "",
):
    """Write a COCO instances json atomically; checks ids are unique and refer to images."""
    image_ids = [im["id"] for im in images]
    if len(set(image_ids)) != len(image_ids):
        raise InputError(f"{out_json}: duplicate image ids")
    known, cat_ids = set(image_ids), {c["id"] for c in categories}
    for ann in annotations:
        if ann["image_id"] not in known or ann["category_id"] not in cat_ids:
            raise InputError(
                f"{out_json}: annotation {ann['id']} refers to an unknown image "
                f"{ann['image_id']} or category {ann['category_id']}"
            )
    coco = {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return write_json_atomic(coco, out_json)
