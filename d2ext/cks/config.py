"""CKS / LACSS config keys (one comment per key): ``MODEL.CKS``, ``MODEL.CONVNEXT``,
``MODEL.LACSS_FPN`` and the CKS input keys under ``INPUT.CKS``.

Defaults are the paper's LIVECell setting where the paper states it and reference code 0.4.4's
otherwise (README.md in this folder, "paper vs code"). Call after
:func:`d2ext.config.add_sslseg_config`.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_cks_config"]


def add_cks_config(cfg: CN) -> None:
    """Add every CKS key with its default (in place)."""
    # -- backbones (d2ext.cks.backbone) --
    _N = cfg.MODEL.CONVNEXT = CN()
    # Blocks per stage; ConvNeXt-small (paper) = (3, 3, 27, 3), tiny = (3, 3, 9, 3).
    _N.DEPTHS = [3, 3, 27, 3]
    # Channels per stage (res2..res5, strides 4..32).
    _N.DIMS = [96, 192, 384, 768]
    # Stochastic depth, rising linearly from 0 to this over all blocks (code configs: 0.4).
    _N.DROP_PATH_RATE = 0.4
    # Initial value of the per-channel layer scale of every block.
    _N.LAYER_SCALE_INIT = 1e-6
    # Stages returned to the FPN.
    _N.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    _F = cfg.MODEL.LACSS_FPN = CN()
    # Bottom-up features merged top-down (ReLU laterals, 3x3 conv + ReLU after each merge).
    _F.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # Channels of every output level p2..p5 (code default 384; lacss_small.json 256).
    _F.OUT_CHANNELS = 384

    _C = cfg.MODEL.CKS = CN()
    # "points": CKS (one point per cell + the collaborator); "supervised": instance masks (BCE).
    _C.MODE = "points"
    # Weight init of every conv / linear: "lecun" (flax default, the code) or "he" (the paper).
    _C.INIT = "lecun"

    # -- LPN: location proposal network (d2ext.cks.lpn), shared over its levels --
    _C.LPN = CN()
    # FPN levels it predicts on (code p2..p4 = strides 4, 8, 16; ablation Table II: [p2]).
    _C.LPN.IN_FEATURES = ["p2", "p3", "p4"]
    # Channels of its conv3x3 + GroupNorm + ReLU layers (their number = the list's length).
    _C.LPN.CONV_DIMS = [384, 384, 384, 384]
    # A grid cell is positive if a point lies within this distance (pixels) of its centre.
    _C.LPN.DETECTION_ROI = 8.0
    # gamma of the binary focal loss of the score map (no alpha).
    _C.LPN.FOCAL_GAMMA = 2.0
    # Offset regression loss: "huber" (code) or "l2" (the paper's "L2 loss": 0.5 x^2).
    _C.LPN.LOC_LOSS = "huber"
    # Huber's delta (grid units).
    _C.LPN.HUBER_DELTA = 1.0
    # Offset loss divided by all grid cells ("cells", code 0.4.4) or the positives ("positives").
    _C.LPN.LOC_NORM = "cells"

    # -- detector: decode + greedy distance NMS (no weights; d2ext.cks.locations) --
    _C.DETECTOR = CN()
    # A point within this distance (pixels) of a higher-scoring kept point is dropped.
    _C.DETECTOR.NMS_DIST = 8.0
    # Minimum LPN score of a detection in training (train-location replacement) and at test.
    _C.DETECTOR.MIN_SCORE_TRAIN = 0.2
    _C.DETECTOR.MIN_SCORE_TEST = 0.2
    # At most this many detections per image (code default 768 truncates dense images).
    _C.DETECTOR.MAX_OUTPUT_TRAIN = 3072
    _C.DETECTOR.MAX_OUTPUT_TEST = 3072
    # Training: a detection within this distance (pixels) of its nearest point replaces the point
    # as the segmentor's location (the best-scoring one); <= 0: the segmentor uses the points.
    _C.DETECTOR.MAX_PROPOSAL_OFFSET = 12.0

    # -- segmentor: fixed-size crops from the stride-4 features (d2ext.cks.segmentor) --
    _C.SEGMENTOR = CN()
    # The stride-4 FPN level it reads.
    _C.SEGMENTOR.IN_FEATURE = "p2"
    # Channels of its image-level conv3x3 + GroupNorm + ReLU layers.
    _C.SEGMENTOR.CONV_DIMS = [384, 384, 384]
    # Channels of the mixed feature map the instance patches are cut from.
    _C.SEGMENTOR.MIX_DIM = 64
    # Side (pixels) of every instance's square crop window (a multiple of 8).
    _C.SEGMENTOR.CROP_SIZE = 96
    # Position encoding added to each patch: "learned" (from the feature at the point, paper),
    # "linear" (fixed coordinates, the code's ablation) or "sine" (fixed 2D sinusoids).
    _C.SEGMENTOR.POS_ENCODING = "learned"
    # (h, w, c) of the learned encoding's small map before the resize to the patch size.
    _C.SEGMENTOR.ENCODER_DIMS = [8, 8, 4]
    # Training: at most this many instances per image get a crop (a random subset); -1 = all.
    _C.SEGMENTOR.MAX_TRAIN_INSTANCES = -1

    # -- collaborator (MODE points only; discarded at inference; d2ext.cks.collaborator) --
    _C.COLLABORATOR = CN()
    # "paper" (fg UNet FG_UNET, border CNN BORDER_CNN) or "code_0_4_4" (the two specs swapped).
    _C.COLLABORATOR.PRESET = "paper"
    # Widths of the foreground UNet's levels (paper a1; a2 = +128, a3 = +128, 256).
    _C.COLLABORATOR.FG_UNET = [16, 32, 64]
    # Widths of the border CNN's conv layers (paper b1), before its output conv.
    _C.COLLABORATOR.BORDER_CNN = [32, 32]
    # Border network: "cnn" (b1) or "unet" (b2: a UNet with FG_UNET's widths).
    _C.COLLABORATOR.BORDER_NET = "cnn"
    # Output channels: one foreground / border map per cell type (dataset dict key "cell_type").
    _C.COLLABORATOR.NUM_CELL_TYPES = 1

    # -- losses (d2ext.cks.losses) --
    _C.LOSS = CN()
    # sigma (pixels, model scale) of the Gaussian prior around each instance, per cell type
    # (one value: all types); paper LIVECell 20/15/10 by size group, A431 20.
    _C.LOSS.PRIOR_SIGMA = [20.0]
    # pi: weight of the prior added to the instance logits in the collaborator's target.
    _C.LOSS.PRIOR_SCALE = 2.0
    # Prior centre: "crop" (the crop window's centre, code) or "point" (the paper).
    _C.LOSS.PRIOR_CENTER = "crop"
    # Set the collaborator's target to 1 at every point's pixel (code, not in the paper).
    _C.LOSS.FORCE_POINT_FG = True
    # Warm-up iterations (code only; 0 = none, e.g. from a supervised checkpoint): hard-label
    # L_S and a wide prior (WARMUP_SIGMA, WARMUP_SCALE).
    _C.LOSS.WARMUP_ITERS = 9000
    _C.LOSS.WARMUP_SIGMA = 100.0
    _C.LOSS.WARMUP_SCALE = 1.0
    # Warm-up L_S with the collaborator's thresholded foreground (code) instead of soft.
    _C.LOSS.WARMUP_HARD_LABEL = True
    # delta of the anti-collapse term L_MC (0 = off).
    _C.LOSS.COLLAPSE_WEIGHT = 0.01
    # L_MC form: "code" (S / sqrt(area)) or "paper" (1 / mean(m_i)).
    _C.LOSS.COLLAPSE_FORM = "code"
    # Principal <- collaborator consistency L_S: "linear" (paper eq. 8) or "ce" (ablation).
    _C.LOSS.PRINCIPAL_CONSISTENCY = "linear"
    # Collaborator <- principal consistency L_M: "linear" (paper eq. 6) or "ce" (eq. 5).
    _C.LOSS.COLLABORATOR_CONSISTENCY = "linear"
    # Weight of the border consistency L_B (both networks; 0 = off).
    _C.LOSS.BORDER_WEIGHT = 1.0

    # -- inference (d2ext.cks.meta_arch) --
    _C.TEST = CN()
    # Drop predicted masks smaller than this many pixels (output scale; 0 = keep all, LACSS eval).
    _C.TEST.MIN_AREA = 0
    # Drop instances whose crop window leaves the image (lacss deploy option).
    _C.TEST.REMOVE_OUT_OF_BOUND = False
    # Instances pasted per chunk (memory of full-size masks on dense images).
    _C.TEST.PASTE_CHUNK = 256

    # -- evaluation extras (d2ext.evaluation.build_cell_evaluators; read for every model, so off by
    # default here and on in configs/cks/Base-LACSS.yaml) --
    _C.EVAL = CN()
    # LACSS AP with strict IoU > thr (the paper's code) instead of >=.
    _C.EVAL.STRICT_AP = False
    # Report the paper's instance Dice pooled over the test set (InstDice-pooled).
    _C.EVAL.POOLED_DICE = False
    # Report LoiAP (point-location AP at 5, 2, 1 px; needs gt points and pred_locations).
    _C.EVAL.LOIAP = False

    # -- input (d2ext.cks.mapper) --
    _I = cfg.INPUT.CKS = CN()
    # Standardise each image inside the model: (x - mean) / max(std, 1/sqrt(n)) (code).
    _I.PER_IMAGE_STANDARDIZE = True
    # Dataset scale applied to every image (train and test) so that cells fit the crop;
    # predictions are returned at the original size.
    _I.SCALE = 1.0
    # Training gamma augmentation x ** g, g ~ U(lo, hi) on [0, 1] intensities ([] = off).
    _I.GAMMA = [0.5, 2.0]
    # Training isotropic resize factor range (times SCALE); paper +-15 %.
    _I.RESIZE_JITTER = [0.85, 1.15]
    # Training random crop side (pixels, after resizing); 0 = whole image.
    _I.CROP_SIZE = 544
    # Training random 90-degree rotations (paper "rotation"; not in code 0.4.4).
    _I.ROT90 = False
    # Training brightness (+-x) / contrast (1 +- x) jitter on [0, 1] intensities (0 = off).
    _I.BRIGHTNESS = 0.0
    _I.CONTRAST = 0.0
    # Cell type of every image of the datasets (index into PRIOR_SIGMA / collaborator channels)
    # when the dataset dicts have no "cell_type".
    _I.CELL_TYPE = 0
