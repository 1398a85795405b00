"""ISBI 2014 Overlapping Cervical Cytology -> COCO json (1 cytoplasm, 2 nuclei), EDF -> unlabeled.

Command line: ``sslseg-convert isbi2014 <root>/isbi2014_cervical/train45 OUT.json`` and
``sslseg-convert edf <root>/isbi2014_cervical/edf OUT.json``.
"""

import logging
import re
from pathlib import Path
from typing import Tuple

import numpy as np
from scipy import ndimage

from sslseg.errors import InputError, InputKeyError, MissingInputError

from .coco_utils import CERVICAL_CATEGORIES, image_record, mask_to_annotation, write_coco
from .io_utils import PathLike, read_image

logger = logging.getLogger(__name__)

ISBI_POINT_MODES = ("centroid", "jitter", "nucleus")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def load_isbi_gt(mat_path: PathLike):
    """Load ``isbi_train_GT.mat``.

    Returns:
        (cytoplasm, nuclei): ``cytoplasm[i]`` = list of (512, 512) uint8 per-cell masks of GT
        index i (cells overlap), ``nuclei[i]`` = (512, 512) binary nuclei mask.
    """
    from scipy.io import loadmat

    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise MissingInputError(f"ISBI ground truth {mat_path} does not exist")
    try:
        mat = loadmat(str(mat_path))
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError on bad files
        raise InputError(f"cannot read ISBI ground truth {mat_path}: {e}") from e
    for key in ("train_Cytoplasm", "train_Nuclei"):
        if key not in mat:
            raise InputKeyError(
                f"{mat_path} has no variable '{key}'; variables: "
                f"{sorted(k for k in mat if not k.startswith('__'))}"
            )
    cyto = [
        [np.asarray(m) for m in cell_list.ravel()] for cell_list in mat["train_Cytoplasm"].ravel()
    ]
    nuclei = [np.asarray(n) for n in mat["train_Nuclei"].ravel()]
    if len(cyto) != len(nuclei):
        raise InputError(f"{mat_path}: {len(cyto)} cytoplasm entries but {len(nuclei)} nuclei")
    return cyto, nuclei


def _numbered_pngs(folder: Path):
    """``N.png`` files of ``folder`` sorted by N."""
    files = [p for p in folder.glob("*.png") if re.fullmatch(r"\d+", p.stem)]
    return sorted(files, key=lambda p: int(p.stem))


def convert_isbi2014(
    src_dir: PathLike,
    out_json: PathLike,
    point_mode: str = "centroid",
    jitter: float = 0.0,
    seed: int = 0,
) -> Tuple[str, str]:
    """Convert the 45 ISBI 2014 training images to COCO json.

    ``src_dir/images/N.png`` pairs with ground-truth index N-1 of ``src_dir/isbi_train_GT.mat``.
    Category 1 (cytoplasm): each per-cell mask (overlapping). Category 2 (nuclei): the
    8-connected components of the binary nuclei mask.

    Args:
        point_mode: "centroid", "jitter" (centroid + gaussian noise of std ``jitter`` pixels), or
            "nucleus": a cytoplasm's point is the centroid of the nucleus component overlapping it
            most (the cell's own centroid if it has none); nuclei get their centroid.

    Returns:
        (json_path, image_root) with image root ``src_dir/images``.
    """
    if point_mode not in ISBI_POINT_MODES:
        raise InputError(f"point_mode must be one of {ISBI_POINT_MODES}, got {point_mode!r}")
    src_dir = Path(src_dir)
    image_root, mat_path = src_dir / "images", src_dir / "isbi_train_GT.mat"
    files = _numbered_pngs(image_root)
    if not files:
        raise MissingInputError(f"no N.png images in {image_root}")
    cyto, nuclei = load_isbi_gt(mat_path)
    rng = np.random.default_rng(seed)
    base_mode = "centroid" if point_mode == "nucleus" else point_mode
    records, anns = [], []
    for path in files:
        idx, img = int(path.stem) - 1, read_image(path)
        if not 0 <= idx < len(cyto):
            raise InputError(
                f"{path}: no ground truth index {idx} in {mat_path} " f"({len(cyto)} entries)"
            )
        shape = img.shape[:2]
        bad = [m.shape for m in cyto[idx] + [nuclei[idx]] if m.shape != shape]
        if bad:
            raise InputError(f"{mat_path} index {idx}: mask shape {bad[0]} != image {path} {shape}")
        image_id = len(records) + 1
        records.append(image_record(image_id, path.name, *shape))
        nuc_lab, num_nuc = ndimage.label(nuclei[idx] > 0, structure=_EIGHT_CONNECTED)
        src = f"{mat_path} index {idx} ({path.name})"
        for cell in cyto[idx]:
            cell = cell > 0
            anchor = None
            if point_mode == "nucleus" and num_nuc:
                counts = np.bincount(nuc_lab[cell], minlength=num_nuc + 1)[1:]
                anchor = nuc_lab == (int(np.argmax(counts)) + 1) if counts.max() > 0 else None
            anns.append(
                mask_to_annotation(
                    cell,
                    1,
                    len(anns) + 1,
                    image_id,
                    base_mode,
                    jitter,
                    rng,
                    anchor=anchor,
                    source=src,
                )
            )
        for k in range(1, num_nuc + 1):
            anns.append(
                mask_to_annotation(
                    nuc_lab == k, 2, len(anns) + 1, image_id, base_mode, jitter, rng, source=src
                )
            )
    logger.info(f"ISBI 2014: {len(records)} images, {len(anns)} instances from {src_dir}")
    path = write_coco(out_json, records, anns, CERVICAL_CATEGORIES, f"ISBI 2014 ({src_dir})")
    return str(path), str(image_root)


def convert_edf(
    src_dir: PathLike, out_json: PathLike, pattern: str = "EDF*.png"
) -> Tuple[str, str]:
    """EDF Pap-smear images (``src_dir/EDF*.png``) -> unlabeled COCO json (``annotations: []``).

    Returns:
        (json_path, image_root) with image root ``src_dir``.
    """
    src_dir = Path(src_dir)
    files = sorted(src_dir.glob(pattern))
    if not files:
        raise MissingInputError(f"no images matching {pattern} in {src_dir}")
    records = [image_record(i, p.name, *read_image(p).shape[:2]) for i, p in enumerate(files, 1)]
    path = write_coco(out_json, records, [], CERVICAL_CATEGORIES, f"EDF unlabeled ({src_dir})")
    return str(path), str(src_dir)
