"""``CKSDatasetMapper``: a dataset dict -> the LACSS training input (image at model scale, points,
masks in ``supervised`` mode).

Training augmentation (``INPUT.CKS``; code 0.4.4 unless said): intensities to [0, 1] (by the
image's 8-bit range), gamma ``x ** g`` with g ~ U(GAMMA), optional brightness / contrast jitter
(the A431 notebook), horizontal and vertical flips (p = 0.5 each), an isotropic resize by
``SCALE`` x U(RESIZE_JITTER) (paper +-15 %), optional 90-degree rotations (paper), then a random
``CROP_SIZE`` crop. No padding here: the model pads after its per-image standardisation.

Points follow detectron2's ``projects/PointSup``: each annotation's ``point_coords[0]`` (x, y)
goes through ``transforms.apply_coords``; instances whose point leaves the crop are dropped
(LACSS drops points outside the crop). Output ``instances``: ``gt_point_coords`` (N, 1, 2) xy,
``gt_classes`` (N,) and, in ``supervised`` mode, ``gt_masks`` (BitMasks); dicts also carry
``cell_type`` (the record's, else ``INPUT.CKS.CELL_TYPE``).

Evaluation uses detectron2's own test mapper (``INPUT.MIN_SIZE_TEST: 0`` = no resize): the model
resizes by ``INPUT.CKS.SCALE`` itself (see :mod:`d2ext.cks.meta_arch`).
"""

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from pycocotools import mask as mask_util

from sslseg.datasets.coco_utils import instance_point
from sslseg.metrics.cells import segmentation_to_rle

__all__ = ["CKSDatasetMapper", "annotation_mask", "annotation_point"]


class CKSDatasetMapper:
    """Callable: dataset dict -> ``{"image": float (3, H, W) in [0, 1], "instances", ...}``."""

    @configurable
    def __init__(
        self,
        *,
        mode: str = "points",
        image_format: str = "BGR",
        scale: float = 1.0,
        resize_jitter: Sequence[float] = (0.85, 1.15),
        gamma: Sequence[float] = (0.5, 2.0),
        brightness: float = 0.0,
        contrast: float = 0.0,
        rot90: bool = False,
        crop_size: int = 544,
        cell_type: int = 0,
    ):
        assert mode in ("points", "supervised"), f"MODEL.CKS.MODE {mode!r}"
        assert len(resize_jitter) in (0, 2), f"INPUT.CKS.RESIZE_JITTER {resize_jitter!r}: [lo, hi]"
        assert len(gamma) in (0, 2), f"INPUT.CKS.GAMMA {gamma!r}: [lo, hi] or []"
        self.mode = mode
        self.image_format = image_format
        self.scale = float(scale)
        self.resize_jitter = tuple(resize_jitter) or (1.0, 1.0)
        self.gamma = tuple(gamma)
        self.brightness = brightness
        self.contrast = contrast
        self.rot90 = rot90
        self.crop_size = crop_size
        self.cell_type = cell_type

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        assert is_train, (
            "CKSDatasetMapper maps training images; evaluation uses detectron2's DatasetMapper "
            "with INPUT.MIN_SIZE_TEST 0 (the model resizes by INPUT.CKS.SCALE)"
        )
        i = cfg.INPUT.CKS
        return {
            "mode": cfg.MODEL.CKS.MODE,
            "image_format": cfg.INPUT.FORMAT,
            "scale": i.SCALE,
            "resize_jitter": list(i.RESIZE_JITTER),
            "gamma": list(i.GAMMA),
            "brightness": i.BRIGHTNESS,
            "contrast": i.CONTRAST,
            "rot90": i.ROT90,
            "crop_size": i.CROP_SIZE,
            "cell_type": i.CELL_TYPE,
        }

    def _intensity(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) -> float32 [0, 1] with gamma / brightness / contrast jitter."""
        x = image.astype(np.float32) / 255.0
        if self.gamma:
            x = x ** np.random.uniform(*self.gamma)
        if self.brightness > 0:
            x = x + np.random.uniform(-self.brightness, self.brightness)
        if self.contrast > 0:
            x = (x - x.mean()) * np.random.uniform(1 - self.contrast, 1 + self.contrast) + x.mean()
        return x.astype(np.float32)

    def _geometry(self, h: int, w: int) -> T.TransformList:
        """Flips, resize (scale x jitter), rotation, crop for an (h, w) image."""
        ts: List[T.Transform] = []
        if np.random.rand() < 0.5:
            ts.append(T.HFlipTransform(w))
        if np.random.rand() < 0.5:
            ts.append(T.VFlipTransform(h))
        f = self.scale * np.random.uniform(*self.resize_jitter)
        nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
        ts.append(T.ResizeTransform(h, w, nh, nw))
        if self.rot90:
            k = np.random.randint(4)
            if k:
                ts.append(T.RotationTransform(nh, nw, 90 * k, expand=True))
                if k % 2:
                    nh, nw = nw, nh
        if self.crop_size > 0 and (nh > self.crop_size or nw > self.crop_size):
            ch, cw = min(self.crop_size, nh), min(self.crop_size, nw)
            y0, x0 = np.random.randint(nh - ch + 1), np.random.randint(nw - cw + 1)
            ts.append(T.CropTransform(x0, y0, cw, ch))
        return T.TransformList(ts)

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        transforms = self._geometry(*image.shape[:2])
        image = transforms.apply_image(self._intensity(image))
        h, w = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d.setdefault("cell_type", self.cell_type)
        anns = [a for a in d.pop("annotations", []) if not a.get("iscrowd", 0)]
        # supervised: each mask decoded once (its centroid stands in for a missing point)
        if self.mode == "supervised":
            masks = [annotation_mask(a, d) for a in anns]
        else:
            masks = [None] * len(anns)
        points = np.zeros((len(anns), 2), np.float64)
        for k, a in enumerate(anns):
            points[k] = annotation_point(a, d, masks[k])
        points = transforms.apply_coords(points) if len(anns) else points
        inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
        inst = Instances((h, w))
        inst.gt_point_coords = torch.as_tensor(points[inside], dtype=torch.float32).reshape(
            -1, 1, 2
        )
        inst.gt_classes = torch.zeros(int(inside.sum()), dtype=torch.int64)
        if self.mode == "supervised":
            kept = [transforms.apply_segmentation(m) > 0 for m, ok in zip(masks, inside) if ok]
            stack = np.stack(kept) if kept else np.zeros((0, h, w), bool)
            inst.gt_masks = BitMasks(torch.as_tensor(stack))
        d["instances"] = inst
        return d


def annotation_point(ann: Dict, record: Dict, mask: Optional[np.ndarray] = None) -> List[float]:
    """The annotation's point (x, y): its ``point_coords[0]``, else its mask's centroid (inside
    the mask: ``instance_point``); ``mask``: the annotation's (H, W) mask if already decoded."""
    if "point_coords" in ann:
        return list(ann["point_coords"][0])
    return instance_point(annotation_mask(ann, record) if mask is None else mask)


def annotation_mask(ann: Dict, record: Dict) -> np.ndarray:
    """The annotation's (H, W) uint8 mask from its RLE or polygons."""
    rle = segmentation_to_rle(ann["segmentation"], record["height"], record["width"])
    return mask_util.decode(rle).astype(np.uint8)
