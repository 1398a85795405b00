"""Small I/O helpers shared by the synthetic generator and the converters.

Everything derived is written atomically (temp file in the same folder, then ``os.replace``), so
an interrupted conversion never leaves a half-written json that a trainer would then load.
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from sslseg.errors import InputError, MissingInputError
from sslseg.io import PathLike, write_json_atomic, write_png_atomic  # noqa: F401 (re-exported)

DATALIST_KEYS = ("labeled", "unlabeled", "validation", "test")


def write_datalist(
    out_json: PathLike,
    labeled: Sequence[Dict[str, str]] = (),
    unlabeled: Sequence[Dict[str, str]] = (),
    validation: Sequence[Dict[str, str]] = (),
    test: Sequence[Dict[str, str]] = (),
    **extra,
) -> Path:
    """Write a ``load_decathlon_datalist``-compatible datalist with all four split keys.

    Items are ``{"image": path, "label": path}`` (unlabeled items: ``{"image": path}``).
    Extra keyword arguments are stored as additional top-level keys (e.g. a description).
    """
    data = {
        "labeled": list(labeled),
        "unlabeled": list(unlabeled),
        "validation": list(validation),
        "test": list(test),
    }
    for key, items in data.items():
        for item in items:
            if "image" not in item:
                raise InputError(f"datalist {out_json}: an item of '{key}' has no 'image': {item}")
    data.update(extra)
    return write_json_atomic(data, out_json)


def read_list_file(path: PathLike) -> List[str]:
    """Read a SSL4MIS/UA-MT style ``.list`` file: one name per line, blank lines dropped."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"list file {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_image(path: PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image with OpenCV (RGB order for color images), raising naming the file.

    Returns:
        (H, W) or (H, W, 3) array of the file's dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"image {path} does not exist")
    img = cv2.imread(str(path), flags)
    if img is None:
        raise InputError(f"image {path} cannot be decoded (corrupt or unsupported format)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3:
        img = img[..., ::-1].copy()  # BGR -> RGB
    return img


def write_png(path: PathLike, img: np.ndarray) -> Path:
    """Write an (H, W) or (H, W, 3) RGB uint8 array as PNG (deterministic bytes)."""
    arr = img[..., ::-1] if img.ndim == 3 else img
    return write_png_atomic(np.ascontiguousarray(arr), path)


def check_exists(
    paths: Sequence[PathLike], what: str, list_file: Optional[PathLike] = None
) -> None:
    """Raise ``FileNotFoundError`` naming the first missing file (and the list that named it)."""
    for p in paths:
        if not Path(p).exists():
            src = f" (listed in {list_file})" if list_file else ""
            raise MissingInputError(f"{what} file {p}{src} does not exist")
