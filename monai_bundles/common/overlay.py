"""``SaveOverlayd``: an RGB image with its predicted mask drawn on it, as a PNG (2D bundles).

Used after the prediction in an inference config (``postprocessing``), beside ``SaveImaged`` of
the label map: ``<output_dir>/<image name>_overlay.png`` shows the image with the foreground tinted
and its outline drawn, for a quick look at a folder of predictions. Images loaded by MONAI's
``PILReader`` are (C, W, H) (its ``reverse_indexing``); the overlay is written (H, W, 3) like the
source file. Files are written atomically (``sslseg.io.write_png_atomic``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from sslseg.io import write_png_atomic


def overlay_rgb(
    image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.35
) -> np.ndarray:
    """(H, W, 3) uint8 of ``image`` (H, W, 3, any range; min-max scaled) with ``mask`` (H, W,
    nonzero = foreground) tinted in ``color`` at ``alpha`` and outlined in ``color``."""
    img = image.astype(np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8) * 255.0
    fg = mask > 0
    tint = np.asarray(color, np.float32)
    img[fg] = (1 - alpha) * img[fg] + alpha * tint
    out = np.ascontiguousarray(img.round().clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1)
    return out


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<stem>_overlay.png`` for each item.

    Args:
        keys: the image key (channel-first (3, W, H) as loaded by ``PILReader``).
        pred_key: the predicted label map (1, W, H) or (W, H) (after ``AsDiscreted``).
        output_dir: folder of the overlays (created).
        reverse_indexing: the arrays are (W, H) as ``PILReader`` loads them (default); False for
            (H, W) arrays.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        pred_key: str = "pred",
        output_dir: str = "./",
        reverse_indexing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pred_key = pred_key
        self.output_dir = Path(output_dir)
        self.reverse_indexing = reverse_indexing

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            image = np.asarray(d[key].detach().cpu() if hasattr(d[key], "detach") else d[key])
            pred = d[self.pred_key]
            mask = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
            mask = mask.reshape(mask.shape[-2:])
            image = np.moveaxis(image, 0, -1)  # (W, H, 3) or (H, W, 3)
            if self.reverse_indexing:
                image, mask = image.transpose(1, 0, 2), mask.T
            source = getattr(d[key], "meta", {}).get("filename_or_obj", f"{key}.png")
            name = Path(str(source)).name
            stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
            bgr = np.ascontiguousarray(overlay_rgb(image, mask)[..., ::-1])
            write_png_atomic(bgr, self.output_dir / f"{stem}_overlay.png")
        return d
