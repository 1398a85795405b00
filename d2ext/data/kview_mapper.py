"""``KViewMapper``: K teacher views and L student views of one unlabeled image (MMT-PSM).

All views share one geometry (the same ResizeShortestEdge draw) so a box on one view is a box on
every view; they differ by photometric noise (brightness, contrast, hue), random erasing and a
horizontal flip. With the defaults (the reference code's): K = 2 colour views for the teacher,
each also given flipped (4 teacher views, the flipped copy shares its colour draw and erasing),
and L = 1 student view flipped with probability 0.5.
"""

import copy
import logging
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from torchvision import transforms as TV

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
    ):
        assert num_teacher_views >= 1, f"need >= 1 teacher view, got {num_teacher_views}"
        assert num_student_views >= 1, f"need >= 1 student view, got {num_student_views}"
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_teacher_views = num_teacher_views
        self.teacher_view_flip = teacher_view_flip
        self.num_student_views = num_student_views
        self.jitter = TV.ColorJitter(brightness=brightness, contrast=contrast, hue=hue)
        self.erase = TV.RandomErasing(p=erase_prob, value=0)
        logger.info(
            f"[KViewMapper] geometry {augmentations}; {self.num_views()} teacher views, "
            f"{num_student_views} student view(s); jitter b={brightness} c={contrast} h={hue}, "
            f"erasing p={erase_prob}"
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.MMT_PSM
        return {
            # geometry only: flips are per view, below
            "augmentations": [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                )
            ],
            "image_format": cfg.INPUT.FORMAT,
            "num_teacher_views": c.NUM_TEACHER_VIEWS,
            "teacher_view_flip": c.TEACHER_VIEW_FLIP,
            "num_student_views": c.NUM_STUDENT_VIEWS,
            "brightness": c.BRIGHTNESS,
            "contrast": c.CONTRAST,
            "hue": c.HUE,
            "erase_prob": c.ERASE_PROB,
        }

    def num_views(self) -> int:
        """Number of teacher views V_t."""
        return self.num_teacher_views * (2 if self.teacher_view_flip else 1)

    def perturb(self, image: torch.Tensor) -> torch.Tensor:
        """Colour jitter + random erasing of a uint8 (C, H, W) image in ``image_format``."""
        rgb = self.image_format == "BGR"
        x = image.flip(0) if rgb else image  # ColorJitter's hue expects RGB
        x = self.jitter(x)
        x = x.flip(0) if rgb else x
        return self.erase(x)

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        base = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))

        teacher = [self.perturb(base) for _ in range(self.num_teacher_views)]
        teacher_flips = [False] * len(teacher)
        if self.teacher_view_flip:
            teacher += [v.flip(-1) for v in teacher]
            teacher_flips += [True] * self.num_teacher_views
        student, student_flips = [], []
        for _ in range(self.num_student_views):
            # a flipped student view needs a flipped teacher view to compare features with
            flip = self.teacher_view_flip and bool(torch.rand(()) < 0.5)
            v = self.perturb(base)
            student.append(v.flip(-1) if flip else v)
            student_flips.append(flip)

        d.pop("annotations", None)
        d["image"] = base
        d["teacher_views"] = torch.stack(teacher)
        d["teacher_flips"] = teacher_flips
        d["student_views"] = torch.stack(student)
        d["student_flips"] = student_flips
        return d
