"""The one image reader of the Detectron2 side: training, evaluation and the tools read through it.

:func:`read_image` is detectron2's ``detection_utils.read_image`` (PIL, EXIF orientation, then
``convert_PIL_to_numpy``) with three differences:

- a missing, truncated or unreadable file raises an error that names it (detectron2: an unnamed
  ``OSError: image file is truncated`` from a loader worker);
- 16-bit and 32-bit images (PIL modes ``I;16*``, ``I``, ``F``; e.g. 16-bit TIFF or PNG) are
  stretched to 8 bits per image between their 0.5th and 99.5th percentiles
  (:data:`STRETCH_PERCENTILES`; values outside are clipped), then read as a grayscale 8-bit image
  (detectron2/PIL saturate them: every pixel 255);
- with ``INPUT.GRAYSCALE`` (the project's cell configs) a colour image is converted to grayscale
  (PIL "L", ITU-R 601 luma) and replicated to the channels of ``INPUT.FORMAT``, as the grayscale
  ``PIXEL_MEAN`` expects; the first such image of a process is logged with a warning.

Importing ``d2ext`` routes ``detectron2.data.detection_utils.read_image`` (used by detectron2's
``DatasetMapper``) through :func:`read_image`, so the train and test loaders use it too;
:func:`configure_image_reader` sets the grayscale switch from a config (``tools/train_net.py``
calls it through :func:`d2ext.data.setup_datasets`).
"""

import logging
from typing import Optional

import numpy as np
from detectron2.data import detection_utils
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import log_first_n
from PIL import Image

from sslseg.errors import UnreadableInputError

__all__ = [
    "STRETCH_PERCENTILES",
    "ImageReadError",
    "configure_image_reader",
    "open_image",
    "read_image",
    "to_8bit",
]

# Percentiles of each 16/32-bit image mapped to 0 and 255 when it is converted to 8 bits.
STRETCH_PERCENTILES = (0.5, 99.5)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
GRAYSCALE_MODES = ("L", "1", "LA")

_STATE = {"grayscale": False}


class ImageReadError(UnreadableInputError):
    """An image file that cannot be read (truncated, corrupt, not an image); names the file."""


def configure_image_reader(cfg) -> None:
    """Convert colour images to grayscale when ``cfg.INPUT.GRAYSCALE`` (process-wide switch)."""
    _STATE["grayscale"] = bool(cfg.INPUT.get("GRAYSCALE", False))


def open_image(file_name: str, verify_only: bool = False) -> Image.Image:
    """Open ``file_name`` with PIL and decode it (``verify_only``: PNG chunk CRCs / header only).

    Raises:
        FileNotFoundError: the file does not exist; ImageReadError: truncated or not an image.
    """
    if not PathManager.exists(file_name):
        raise FileNotFoundError(f"image file not found: {file_name}")
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            if verify_only:
                image.verify()
            else:
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(
            f"cannot read image {file_name}: {type(e).__name__}: {e} (truncated or not an image?)"
        ) from e
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit single-channel image stretched to 8-bit "L" between its
    :data:`STRETCH_PERCENTILES` (a constant image becomes all 0); other images unchanged."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    a = np.asarray(image).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(a, STRETCH_PERCENTILES)
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _is_colour(image: Image.Image) -> bool:
    if image.mode in GRAYSCALE_MODES:
        return False
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def read_image(file_name: str, format: Optional[str] = None, grayscale: Optional[bool] = None):
    """Read ``file_name`` as an HWC array in ``format`` (as detectron2's ``read_image``).

    Args:
        format: a PIL mode, "BGR" or "YUV-BT.601" (None: as stored); see the module docstring
            for 16-bit images.
        grayscale: convert colour images to grayscale first (None: the process-wide switch of
            :func:`configure_image_reader`).
    Returns:
        (H, W, C) uint8 array (float for YUV-BT.601), C = channels of ``format``.
    """
    image = open_image(file_name)
    image = detection_utils._apply_exif_orientation(image)
    image = to_8bit(image)
    grayscale = _STATE["grayscale"] if grayscale is None else grayscale
    if grayscale and image.mode not in GRAYSCALE_MODES and _is_colour(image):
        log_first_n(
            logging.WARNING,
            f"colour image {file_name} converted to grayscale (INPUT.GRAYSCALE: True); "
            "other colour images are converted without a further message",
            n=1,
            name=__name__,
        )
        image = image.convert("L")
    return detection_utils.convert_PIL_to_numpy(image, format)


def install() -> None:
    """Route ``detectron2.data.detection_utils.read_image`` (detectron2's ``DatasetMapper`` and
    every mapper calling ``utils.read_image``) through :func:`read_image` (idempotent)."""
    if detection_utils.read_image is not read_image:
        detection_utils.read_image = read_image
