"""MMT-PSM's config keys, all under ``MODEL.MMT_PSM`` (one comment per key)."""

from detectron2.config import CfgNode as CN

__all__ = ["add_mmt_psm_config"]


def add_mmt_psm_config(cfg: CN) -> None:
    """MMT-PSM keys under ``MODEL.MMT_PSM`` (README.md in this folder explains each part).

    Call after :func:`d2ext.config.add_sslseg_config`. Iterations count from 0 like
    ``trainer.iter``.
    """
    _C = cfg.MODEL.MMT_PSM = CN()
    # Which network evaluates in eval mode (--eval-only, EvalHook): "teacher" or "student".
    _C.EVAL_MODEL = "teacher"
    # -- EMA teacher (d2ext.engine.EMATeacherHook) --
    # Iteration after whose step the teacher is copied from the student; afterwards
    # alpha(t) = min(1 - 1/(t - EMA_START_ITER), EMA_MAX_ALPHA). Paper: 990. -1 = reference code
    # (EMA from the first step, alpha = min(1 - 1/(k+1), 0.99)).
    _C.EMA_START_ITER = 990
    # Upper bound of the EMA decay alpha.
    _C.EMA_MAX_ALPHA = 0.99
    # -- lambda(t), the weight of L_psm + gamma * L_mgd (d2ext.mmt_psm.hooks) --
    # Iterations with labeled data only (lambda = 0, the unlabeled stream is not even loaded).
    _C.BURN_IN_ITERS = 1000
    # Sigmoid ramp-up exp(-UP_SCALE (1 - x)^2), x = (t - BURN_IN_ITERS) / RAMP_UP_ITERS.
    _C.RAMP_UP_ITERS = 250
    # Paper: exp(-125 (1 - t/1250)^2) == exp(-5 (1 - (t - 1000)/250)^2).
    _C.RAMP_UP_SCALE = 5.0
    # Ramp-down over the last RAMP_DOWN_ITERS: exp(-DOWN_SCALE (1 - (T - t)/RAMP_DOWN_ITERS)^2).
    _C.RAMP_DOWN_ITERS = 250
    # Paper: 12.
    _C.RAMP_DOWN_SCALE = 12.0
    # -- K-view self-ensemble (d2ext.mmt_psm.KViewMapper) --
    # Colour-jittered views of each unlabeled image for the teacher (K).
    _C.NUM_TEACHER_VIEWS = 2
    # Add a horizontally flipped copy of every teacher colour view (reference: K=2 -> 4 views).
    _C.TEACHER_VIEW_FLIP = True
    # Views for the student (L). The image is flipped with probability 0.5 before any view is
    # made (shared by all views); student views are never flipped relative to teacher view 0.
    _C.NUM_STUDENT_VIEWS = 1
    # Brightness / contrast jitter: factors drawn from [1 - x, 1 + x] (torchvision ColorJitter).
    _C.BRIGHTNESS = 0.15
    _C.CONTRAST = 0.15
    # Hue jitter in [-x, x] (no effect on grey images replicated to 3 channels).
    _C.HUE = 0.05
    # Random erasing of every unlabeled view (reference code): up to ERASE_MAX_PATCHES attempts
    # (the number drawn uniformly from 0..max), each erasing one patch with probability ERASE_PROB.
    _C.ERASE_PROB = 0.9
    _C.ERASE_MAX_PATCHES = 10
    # Patch area as a fraction of the image, drawn uniformly from this range.
    _C.ERASE_AREA = (0.001, 0.004)
    # Patch aspect ratio (h / w), drawn uniformly from this range; patches get uniform noise.
    _C.ERASE_RATIO = (0.2, 5.0)
    # -- pseudo-labels and perturbation-sensitive sample mining --
    # Teacher RPN proposals (on the first teacher view) kept per unlabeled image, by objectness.
    _C.PROPOSALS_PER_IMAGE = 512
    # Sharpening temperature t of S(p) = p^(1/t) / sum p^(1/t) (t < 1 sharpens).
    _C.SHARPEN_T = 0.5
    # False: average the K views' probabilities (paper); True: average logits, then softmax (code).
    _C.AVERAGE_LOGITS = False
    # Background ranking statistic over the views: "var" (paper: sum over classes of the
    # variance) or "std_sum" (reference code: sum of standard deviations).
    _C.MINING_STAT = "var"
    # Background proposals kept per foreground proposal: 1.0 (paper), 0.5 (reference code).
    _C.BG_PER_FG = 1.0
    # Weight of background proposals in the class-balanced soft cross-entropy (others: 1).
    _C.BG_WEIGHT = 1.5
    # -- mask-guided feature distillation --
    # FPN levels distilled (one 1x1 adaptation conv each, halving the channels).
    _C.MGD_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Score threshold of the teacher detections whose masks form the foreground mask (applied
    # after the box predictor's own ROI_HEADS.SCORE_THRESH_TEST, NMS and DETECTIONS_PER_IMAGE).
    # Reference code: 0.1.
    _C.MGD_SCORE_THRESH = 0.1
    # Normalisation of L_mgd: "elements" (mean over foreground cells x channels per level, then
    # over levels: reference code) or "positions" (sum / (2 N_p), Wang et al. CVPR 2019).
    _C.MGD_NORMALIZE = "elements"
    # gamma: weight of L_mgd inside lambda(t) (L_psm + gamma L_mgd).
    _C.MGD_WEIGHT = 5.0
    # -- ablation switches --
    # Use L_psm (semantic distillation).
    _C.USE_PSM = True
    # Use L_mgd (feature distillation).
    _C.USE_MGD = True
    # True: perturbation-sensitive mining; False: L_psm on all proposals.
    _C.SAMPLE_MINING = True
