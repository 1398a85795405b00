"""Instance label maps -> COCO json with one point per instance (MICCAI 2015, DSB2018/StarDist).

Command line: ``sslseg-convert miccai2015 SRC OUT.json`` / ``sslseg-convert stardist SRC OUT.json``.
"""

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from sslseg.errors import InputError, MissingInputError

from .coco_utils import CELL_CATEGORIES, image_record, mask_to_annotation, write_coco
from .io_utils import PathLike, read_image, write_png

logger = logging.getLogger(__name__)


def instance_map_to_annotations(
    inst_map: np.ndarray,
    category_id: int = 1,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    image_id: int = 1,
    start_id: int = 1,
    source: str = "",
) -> List[Dict]:
    """COCO annotations (RLE, bbox, area, one point) of every instance of a label map.

    Args:
        inst_map: (H, W) integer map, 0 = background, each other value one instance (values need
            not be contiguous; an instance may have several connected parts, it stays one instance).
        point_mode: "centroid" or "jitter" (see :func:`sslseg.datasets.coco_utils.instance_point`).
        start_id: annotation id of the first instance; ids increase by one.
        source: file name used in error messages.
    """
    if inst_map.ndim != 2 or not np.issubdtype(inst_map.dtype, np.integer):
        raise InputError(
            f"{source}: instance map must be a 2D integer array, got shape "
            f"{inst_map.shape} dtype {inst_map.dtype}"
        )
    if point_mode == "jitter" and rng is None:
        rng = np.random.default_rng(0)
    anns = []
    for k, sl in enumerate(ndimage.find_objects(inst_map.astype(np.int64, copy=False))):
        if sl is None:  # label value not present
            continue
        mask = np.zeros(inst_map.shape, bool)
        mask[sl] = inst_map[sl] == k + 1
        anns.append(
            mask_to_annotation(
                mask,
                category_id,
                start_id + len(anns),
                image_id,
                point_mode,
                jitter,
                rng,
                source=source,
            )
        )
    return anns


def convert_miccai2015(
    src_dir: PathLike,
    out_json: PathLike,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    seed: int = 0,
) -> Tuple[str, str]:
    """MICCAI 2015 nuclei tiles (``X.png`` + uint16 ``X_inst.png``) -> COCO json, category 1 cell.

    Images are used in place: the image root is ``src_dir``.

    Returns:
        (json_path, image_root)
    """
    src_dir = Path(src_dir)
    images = sorted(p for p in src_dir.glob("*.png") if not p.stem.endswith("_inst"))
    if not images:
        raise MissingInputError(f"no images (*.png without _inst) in {src_dir}")
    rng = np.random.default_rng(seed)
    records, anns = [], []
    for image_id, img_path in enumerate(images, start=1):
        inst_path = img_path.with_name(f"{img_path.stem}_inst.png")
        if not inst_path.is_file():
            raise MissingInputError(f"image {img_path} has no instance map {inst_path}")
        img, inst = read_image(img_path), read_image(inst_path)
        if img.shape[:2] != inst.shape[:2]:
            raise InputError(
                f"{inst_path} has shape {inst.shape[:2]} but {img_path} has " f"{img.shape[:2]}"
            )
        records.append(image_record(image_id, img_path.name, *img.shape[:2]))
        anns += instance_map_to_annotations(
            inst, 1, point_mode, jitter, rng, image_id, len(anns) + 1, source=str(inst_path)
        )
    logger.info(f"MICCAI 2015: {len(records)} images, {len(anns)} nuclei from {src_dir}")
    path = write_coco(out_json, records, anns, CELL_CATEGORIES, f"MICCAI 2015 nuclei ({src_dir})")
    return str(path), str(src_dir)


def to_uint8(img: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Percentile-normalise an (H, W) or (H, W, C) image to uint8 (``low``/``high`` -> 0/255)."""
    lo, hi = np.percentile(img, [low, high])
    scaled = (img.astype(np.float64) - lo) / max(hi - lo, 1e-8)
    return np.clip(np.round(255 * scaled), 0, 255).astype(np.uint8)


def convert_stardist(
    src_dir: PathLike,
    out_json: PathLike,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    seed: int = 0,
    image_name: str = "img2d.tif",
    mask_name: str = "mask2d.tif",
) -> Tuple[str, str]:
    """StarDist's DSB2018 example (uint16 ``img2d.tif`` + ``mask2d.tif`` labels) -> COCO json.

    Detectron2 does not read uint16 TIFF reliably, so an 8-bit percentile-normalised PNG copy
    (1st-99.8th percentile) is written to ``<out_json dir>/stardist_images/`` (the image root).

    Returns:
        (json_path, image_root)
    """
    import tifffile

    src_dir, out_json = Path(src_dir), Path(out_json)
    img_path, mask_path = src_dir / image_name, src_dir / mask_name
    for p in (img_path, mask_path):
        if not p.is_file():
            raise MissingInputError(f"StarDist file {p} does not exist")
    try:
        img, inst = tifffile.imread(img_path), tifffile.imread(mask_path)
    except Exception as e:  # tifffile raises several types for corrupt files
        raise InputError(f"cannot read StarDist TIFF in {src_dir}: {e}") from e
    if img.shape[:2] != inst.shape:
        raise InputError(f"{mask_path} has shape {inst.shape} but {img_path} has {img.shape}")
    image_root = out_json.parent / "stardist_images"
    png_name = f"{img_path.stem}.png"
    write_png(image_root / png_name, to_uint8(img))
    anns = instance_map_to_annotations(
        inst, 1, point_mode, jitter, np.random.default_rng(seed), 1, 1, source=str(mask_path)
    )
    records = [image_record(1, png_name, *img.shape[:2])]
    path = write_coco(out_json, records, anns, CELL_CATEGORIES, f"DSB2018 via StarDist ({src_dir})")
    return str(path), str(image_root)
