"""``KViewMapper``: K teacher views and L student views of one unlabeled image (MMT-PSM).

All views share one geometry (the same ResizeShortestEdge draw and the same random horizontal flip
of the image, p = 0.5) so a box on one view is a box on every view; they differ by photometric
noise (brightness, contrast, hue), random erasing and, for half of the teacher's, a horizontal
flip. With the defaults (the reference code's): K = 2 colour views for the teacher, each also
given flipped (4 teacher views; the flipped copy shares its colour draw and erasing), and L = 1
student view (not flipped relative to teacher view 0).

Random erasing as in the reference code, not torchvision's ``RandomErasing`` (one patch of 2-33 %
of the image): up to ``erase_max_patches`` small patches (0.1-0.4 % of the image each) filled with
uniform noise, which perturbs cells without hiding whole regions from the student.
"""

import copy
import logging
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from torchvision import transforms as TV

from d2ext.data.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = ["KViewMapper"]


class KViewMapper:
    """Map an images-only dataset dict to a dict with the views of MMT-PSM.

    Output keys (besides the input's ``file_name``, ``image_id``, ``height``, ``width``):
        image:          uint8 (C, H, W), the resized image without noise (for visualisation)
        teacher_views:  uint8 (V_t, C, H, W); V_t = K, or 2K with ``teacher_view_flip``
                        (views K..2K-1 are views 0..K-1 flipped). View 0 is never flipped.
        teacher_flips:  list[bool] of length V_t
        student_views:  uint8 (L, C, H, W)
        student_flips:  list[bool] of length L
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_teacher_views: int = 2,
        teacher_view_flip: bool = True,
        num_student_views: int = 1,
        brightness: float = 0.15,
        contrast: float = 0.15,
        hue: float = 0.05,
        erase_prob: float = 0.9,
        erase_max_patches: int = 10,
        erase_area: Tuple[float, float] = (0.001, 0.004),
        erase_ratio: Tuple[float, float] = (0.2, 5.0),
    ):
        assert num_teacher_views >= 1, f"need >= 1 teacher view, got {num_teacher_views}"
        assert num_student_views >= 1, f"need >= 1 student view, got {num_student_views}"
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_teacher_views = num_teacher_views
        self.teacher_view_flip = teacher_view_flip
        self.num_student_views = num_student_views
        self.jitter = TV.ColorJitter(brightness=brightness, contrast=contrast, hue=hue)
        self.erase_prob = erase_prob
        self.erase_max_patches = erase_max_patches
        self.erase_area = erase_area
        self.erase_ratio = erase_ratio
        logger.info(
            f"[KViewMapper] geometry {augmentations}; {self.num_views()} teacher views, "
            f"{num_student_views} student view(s); jitter b={brightness} c={contrast} h={hue}, "
            f"erasing <= {erase_max_patches} patches with p={erase_prob}"
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.MMT_PSM
        return {
            # geometry shared by every view of an image
            "augmentations": [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                ),
                T.RandomFlip(horizontal=True, vertical=False),
            ],
            "image_format": cfg.INPUT.FORMAT,
            "num_teacher_views": c.NUM_TEACHER_VIEWS,
            "teacher_view_flip": c.TEACHER_VIEW_FLIP,
            "num_student_views": c.NUM_STUDENT_VIEWS,
            "brightness": c.BRIGHTNESS,
            "contrast": c.CONTRAST,
            "hue": c.HUE,
            "erase_prob": c.ERASE_PROB,
            "erase_max_patches": c.ERASE_MAX_PATCHES,
            "erase_area": tuple(c.ERASE_AREA),
            "erase_ratio": tuple(c.ERASE_RATIO),
        }

    def num_views(self) -> int:
        """Number of teacher views V_t."""
        return self.num_teacher_views * (2 if self.teacher_view_flip else 1)

    def erase(self, image: torch.Tensor) -> torch.Tensor:
        """Random erasing of a uint8 (C, H, W) image: n ~ U{0..max} attempts, each with
        probability ``erase_prob`` filling one patch (area fraction ~ U(erase_area), aspect
        h/w ~ U(erase_ratio), clipped to the image) with uniform noise in [0, 255]."""
        _, h, w = image.shape
        out = image.clone()
        for _ in range(int(torch.randint(0, self.erase_max_patches + 1, ()))):
            if float(torch.rand(())) >= self.erase_prob:
                continue
            area = h * w * float(torch.empty(()).uniform_(*self.erase_area))
            ratio = float(torch.empty(()).uniform_(*self.erase_ratio))
            ph = min(h, max(1, int(round((area * ratio) ** 0.5))))
            pw = min(w, max(1, int(round((area / ratio) ** 0.5))))
            y = int(torch.randint(0, h - ph + 1, ()))
            x = int(torch.randint(0, w - pw + 1, ()))
            out[:, y : y + ph, x : x + pw] = torch.randint(
                0, 256, (out.shape[0], ph, pw), dtype=out.dtype
            )
        return out

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        """Colour jitter + random erasing of a uint8 (C, H, W) image in ``image_format``."""
        rgb = self.image_format == "BGR"
        x = image.flip(0) if rgb else image  # ColorJitter's hue expects RGB
        x = self.jitter(x)
        x = x.flip(0) if rgb else x
        return self.erase(x)

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        base = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))

        teacher = [self.perturb(base) for _ in range(self.num_teacher_views)]
        teacher_flips = [False] * len(teacher)
        if self.teacher_view_flip:
            teacher += [v.flip(-1) for v in teacher]
            teacher_flips += [True] * self.num_teacher_views
        student = [self.perturb(base) for _ in range(self.num_student_views)]
        student_flips = [False] * len(student)

        d.pop("annotations", None)
        d["image"] = base
        d["teacher_views"] = torch.stack(teacher)
        d["teacher_flips"] = teacher_flips
        d["student_views"] = torch.stack(student)
        d["student_flips"] = student_flips
        return d
