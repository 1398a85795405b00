"""MMT-PSM (Zhou et al., MICCAI 2020) for detectron2: see README.md in this folder."""

from .meta_arch import MMTPSMRCNN, PseudoLabels, flip_boxes

__all__ = ["MMTPSMRCNN", "PseudoLabels", "flip_boxes"]
