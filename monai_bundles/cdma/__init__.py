"""CDMA bundle: Cross Distillation of Multiple Attentions (Zhong et al., MICCAI 2023).

Semi-supervised 2D segmentation of pathology images with one network (``networks.MTNet``: a
DeepLabv3+ encoder and ASPP shared by three decoders that differ in their attention block:
channel + spatial, spatial, channel). Each decoder is supervised on the labeled images and learns
from the other two decoders' temperature-softened predictions on all images; the entropy of the
decoders' mean prediction is minimised (``losses.CDMALoss``, ``trainer.CDMATrainer``). Inference
uses the channel + spatial attention branch. ``BUNDLE_ROOT`` is the bundle's folder (read only);
runs write under ``./output/cdma/`` of the working directory (``output_root``).
"""

import os

BUNDLE_ROOT = os.path.dirname(os.path.abspath(__file__))
