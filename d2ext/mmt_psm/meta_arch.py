"""``MMTPSMRCNN``: Mask R-CNN student + EMA teacher of MMT-PSM (Zhou et al., MICCAI 2020).

The meta-architecture *is* the student (a ``GeneralizedRCNN``: its state-dict keys are those of a
plain Mask R-CNN, so a supervised checkpoint loads into it and its student part loads into a plain
Mask R-CNN), plus ``mgd_adapters`` (one 1x1 conv per FPN level halving the channels) and
``teacher``: a ``GeneralizedRCNN`` with its own ``mgd_adapters``, no gradients, always in eval
mode, updated only by :class:`d2ext.engine.EMATeacherHook`. Checkpoints therefore hold both.

Training input: ``(labeled, unlabeled)`` from the two-stream loader (``unlabeled`` may be None:
labeled-only steps), or a plain list of labeled dicts. Unlabeled dicts come from
:class:`d2ext.mmt_psm.KViewMapper`. Losses: detectron2's supervised ones plus, weighted by
``self.unsup_weight`` (lambda(t), set by :class:`d2ext.mmt_psm.UnsupWeightHook`),
``loss_psm`` and ``loss_mgd`` (already multiplied by gamma).

Eval mode: the teacher predicts (``MODEL.MMT_PSM.EVAL_MODEL: teacher``) unless the student is
asked for, or the teacher has not been initialised yet (then the student, with a warning);
:meth:`evaluated_model` says which.
"""

import copy
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.logger import log_first_n
from fvcore.nn import weight_init
from torch import nn

from .losses import (
    ensemble_views,
    level_masks,
    mgd_loss,
    mine_proposals,
    psm_loss,
    sharpen,
    view_sensitivity,
)

logger = logging.getLogger(__name__)

__all__ = ["MMTPSMRCNN", "PseudoLabels", "flip_boxes"]

# Parts of the student the teacher averages (the teacher has the same attributes).
EMA_PARTS = ("backbone", "proposal_generator", "roi_heads", "mgd_adapters")


@dataclass
class PseudoLabels:
    """What the teacher teaches on one unlabeled image (coordinates of its first view).

    proposals: Boxes (R,) teacher RPN proposals shared by all views.
    view_logits: (V_t, R, C+1) teacher classifier logits per view.
    target: (R, C+1) sharpened self-ensemble (soft pseudo-label).
    hard: (R,) argmax of target; C = background.
    mined: (R,) bool, proposals used by L_psm.
    detections: Instances, the teacher's detections (scores >= MGD threshold) with pred_masks.
    fg_mask: (H_pad, W_pad) bool, union of the detections' masks (the MGD guidance).
    image_size: (h, w) of the view before padding.
    """

    proposals: Boxes
    view_logits: torch.Tensor
    target: torch.Tensor
    hard: torch.Tensor
    mined: torch.Tensor
    detections: Instances
    fg_mask: torch.Tensor
    image_size: Tuple[int, int]


def flip_boxes(boxes: Boxes, width: int) -> Boxes:
    """Horizontally flip XYXY boxes inside an image of ``width`` pixels: x -> width - x."""
    t = boxes.tensor.clone()
    t[:, 0], t[:, 2] = width - boxes.tensor[:, 2], width - boxes.tensor[:, 0]
    return Boxes(t)


def _flip_within(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Flip the first ``width`` columns of a (..., H, W_pad) tensor (padding stays at the right)."""
    out = mask.clone()
    out[..., :width] = mask[..., :width].flip(-1)
    return out


def _box_logits(
    roi_heads: StandardROIHeads, features: Dict[str, torch.Tensor], boxes: List[Boxes]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box-head class logits (sum_i R_i, C+1) and box deltas for given boxes, one list entry per
    image of ``features`` (as ``StandardROIHeads._forward_box`` without sampling or losses)."""
    x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
    return roi_heads.box_predictor(roi_heads.box_head(x))


@META_ARCH_REGISTRY.register()
class MMTPSMRCNN(GeneralizedRCNN):
    """Mask-guided mean teacher with perturbation-sensitive sample mining (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        mgd_in_features: Sequence[str],
        eval_model: str = "teacher",
        proposals_per_image: int = 512,
        sharpen_t: float = 0.5,
        average_logits: bool = False,
        mining_stat: str = "var",
        bg_per_fg: float = 1.0,
        bg_weight: float = 1.5,
        mgd_score_thresh: float = 0.1,
        mgd_weight: float = 5.0,
        mgd_normalize: str = "elements",
        use_psm: bool = True,
        use_mgd: bool = True,
        sample_mining: bool = True,
        **kwargs,
    ):
        """
        Args:
            mgd_in_features: FPN levels distilled by L_mgd.
            eval_model: "teacher" or "student", the network used in eval mode.
            others: see ``add_mmt_psm_config`` (d2ext/mmt_psm/config.py), one key each.
            kwargs: ``GeneralizedRCNN`` arguments (the student).
        """
        super().__init__(**kwargs)
        assert eval_model in (
            "teacher",
            "student",
        ), f"MODEL.MMT_PSM.EVAL_MODEL must be 'teacher' or 'student', got {eval_model!r}"
        assert isinstance(
            self.roi_heads, StandardROIHeads
        ), f"MMT-PSM needs StandardROIHeads (box + mask head), got {type(self.roi_heads).__name__}"
        shapes = self.backbone.output_shape()
        missing = [f for f in mgd_in_features if f not in shapes]
        assert not missing, f"MGD_IN_FEATURES {missing} not in backbone outputs {list(shapes)}"
        self.mgd_in_features = list(mgd_in_features)
        self.mgd_adapters = nn.ModuleDict()
        for f in self.mgd_in_features:
            conv = Conv2d(shapes[f].channels, shapes[f].channels // 2, kernel_size=1)
            weight_init.c2_msra_fill(conv)
            self.mgd_adapters[f] = conv
        self.eval_model = eval_model
        self.proposals_per_image = proposals_per_image
        self.sharpen_t = sharpen_t
        self.average_logits = average_logits
        self.mining_stat = mining_stat
        self.bg_per_fg = bg_per_fg
        self.bg_weight = bg_weight
        self.mgd_score_thresh = mgd_score_thresh
        self.mgd_weight = mgd_weight
        self.mgd_normalize = mgd_normalize
        self.use_psm = use_psm
        self.use_mgd = use_mgd
        self.sample_mining = sample_mining
        # lambda(t): set every step by UnsupWeightHook; 0 = labeled-only step.
        self.unsup_weight = 0.0

        self.teacher = GeneralizedRCNN(
            backbone=copy.deepcopy(self.backbone),
            proposal_generator=copy.deepcopy(self.proposal_generator),
            roi_heads=copy.deepcopy(self.roi_heads),
            pixel_mean=self.pixel_mean.flatten().tolist(),
            pixel_std=self.pixel_std.flatten().tolist(),
            input_format=self.input_format,
            vis_period=0,
        )
        self.teacher.mgd_adapters = copy.deepcopy(self.mgd_adapters)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # True once the EMA hook has copied the student into the teacher (saved in checkpoints).
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        c = cfg.MODEL.MMT_PSM
        ret.update(
            mgd_in_features=c.MGD_IN_FEATURES,
            eval_model=c.EVAL_MODEL,
            proposals_per_image=c.PROPOSALS_PER_IMAGE,
            sharpen_t=c.SHARPEN_T,
            average_logits=c.AVERAGE_LOGITS,
            mining_stat=c.MINING_STAT,
            bg_per_fg=c.BG_PER_FG,
            bg_weight=c.BG_WEIGHT,
            mgd_score_thresh=c.MGD_SCORE_THRESH,
            mgd_weight=c.MGD_WEIGHT,
            mgd_normalize=c.MGD_NORMALIZE,
            use_psm=c.USE_PSM,
            use_mgd=c.USE_MGD,
            sample_mining=c.SAMPLE_MINING,
        )
        return ret

    # ---------------------------------------------------------------- teacher bookkeeping
    def train(self, mode: bool = True):
        """Student follows ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def ema_pairs(self) -> Iterator[Tuple[nn.Module, nn.Module]]:
        """(student part, teacher part) pairs the EMA averages (parameters and buffers)."""
        for name in EMA_PARTS:
            yield getattr(self, name), getattr(self.teacher, name)

    def evaluated_model(self) -> str:
        """ "teacher" or "student": the network that predicts in eval mode."""
        if self.eval_model == "teacher" and not bool(self.teacher_ready):
            return "student"
        return self.eval_model

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs):
        """Training: ``(labeled, unlabeled)`` or a list of labeled dicts -> dict of losses.
        Eval: list of dicts -> list of ``{"instances": Instances}`` of :meth:`evaluated_model`."""
        if not self.training:
            if self.evaluated_model() == "teacher":
                return self.teacher(batched_inputs)
            if self.eval_model == "teacher":
                log_first_n(
                    logging.WARNING,
                    "[MMTPSMRCNN] teacher not initialised yet: evaluating the student",
                    name=__name__,
                )
            return super().forward(batched_inputs)

        if isinstance(batched_inputs, tuple):
            labeled, unlabeled = batched_inputs
        else:
            labeled, unlabeled = batched_inputs, None
        losses = super().forward(labeled)
        if unlabeled is not None and self.unsup_weight > 0 and (self.use_psm or self.use_mgd):
            for k, v in self.unsupervised_losses(unlabeled).items():
                losses[k] = self.unsup_weight * v
        return losses

    def _views_to_images(self, model: GeneralizedRCNN, views: List[torch.Tensor]) -> ImageList:
        return model.preprocess_image([{"image": v} for v in views])

    @torch.no_grad()
    def teacher_pseudo_labels(
        self, unlabeled: List[Dict]
    ) -> Tuple[List[PseudoLabels], Dict[str, torch.Tensor], ImageList]:
        """Run the teacher on every view of every unlabeled image.

        Returns:
            pseudo-labels per image; the teacher's FPN features of all views, (N * V_t, C, h, w)
            per level, image-major (view v of image i at i * V_t + v); their ImageList.
        """
        t = self.teacher
        num_views = unlabeled[0]["teacher_views"].shape[0]
        views = [v for d in unlabeled for v in d["teacher_views"]]
        images = self._views_to_images(t, views)
        features = t.backbone(images.tensor)

        first = list(range(0, len(views), num_views))
        images0 = ImageList(images.tensor[first], [images.image_sizes[i] for i in first])
        features0 = {k: v[first] for k, v in features.items()}
        proposals, _ = t.proposal_generator(images0, features0, None)
        proposals = [p[: self.proposals_per_image] for p in proposals]

        boxes = []
        for i, d in enumerate(unlabeled):
            w = images0.image_sizes[i][1]
            for flip in d["teacher_flips"]:
                pb = proposals[i].proposal_boxes
                boxes.append(flip_boxes(pb, w) if flip else pb)
        logits, deltas = _box_logits(t.roi_heads, features, boxes)
        counts = [len(p) for p in proposals]

        # teacher detections on view 0 -> foreground mask for MGD
        idx0 = [i * num_views for i in range(len(unlabeled))]
        splits_l = torch.split(logits, [c for c in counts for _ in range(num_views)])
        splits_d = torch.split(deltas, [c for c in counts for _ in range(num_views)])
        detections, _ = t.roi_heads.box_predictor.inference(
            (torch.cat([splits_l[j] for j in idx0]), torch.cat([splits_d[j] for j in idx0])),
            proposals,
        )
        detections = [det[det.scores >= self.mgd_score_thresh] for det in detections]
        detections = t.roi_heads.forward_with_given_boxes(features0, detections)

        out = []
        pad_h, pad_w = images.tensor.shape[-2:]
        for i, d in enumerate(unlabeled):
            view_logits = torch.stack(splits_l[i * num_views : (i + 1) * num_views])
            probs = ensemble_views(view_logits, self.average_logits)
            target = sharpen(probs, self.sharpen_t)
            hard = target.argmax(-1)
            if self.sample_mining:
                mined = mine_proposals(
                    hard,
                    view_sensitivity(view_logits, self.mining_stat),
                    bg_index=target.shape[1] - 1,
                    bg_per_fg=self.bg_per_fg,
                )
            else:
                mined = torch.ones_like(hard, dtype=torch.bool)
            det = detections[i]
            h, w = images0.image_sizes[i]
            fg = torch.zeros((pad_h, pad_w), dtype=torch.bool, device=logits.device)
            if len(det):
                masks = paste_masks_in_image(det.pred_masks[:, 0], det.pred_boxes, (h, w))
                fg[:h, :w] = masks.any(0)
            out.append(
                PseudoLabels(
                    proposals[i].proposal_boxes, view_logits, target, hard, mined, det, fg, (h, w)
                )
            )
        return out, features, images

    def unsupervised_losses(self, unlabeled: List[Dict]) -> Dict[str, torch.Tensor]:
        """``loss_psm`` and ``gamma * loss_mgd`` (unweighted by lambda) of the student views.

        Student view l of image i is compared with the teacher's proposals (flipped with the
        view) for L_psm, and with the teacher's first view of the same flip state for L_mgd.
        """
        for d in unlabeled:
            assert "teacher_views" in d and "student_views" in d, (
                f"unlabeled input {d.get('file_name', '?')} lacks teacher_views/student_views: "
                f"train MMT-PSM with d2ext.mmt_psm.KViewMapper (MMTPSMTrainer does)"
            )
        pseudo, t_features, t_images = self.teacher_pseudo_labels(unlabeled)
        num_t = unlabeled[0]["teacher_views"].shape[0]

        views, flips, owner = [], [], []
        for i, d in enumerate(unlabeled):
            for v, flip in zip(d["student_views"], d["student_flips"]):
                views.append(v)
                flips.append(bool(flip))
                owner.append(i)
        images = self._views_to_images(self, views)
        assert images.tensor.shape[-2:] == t_images.tensor.shape[-2:], (
            f"student views {tuple(images.tensor.shape)} and teacher views "
            f"{tuple(t_images.tensor.shape)} differ in size; they must share one geometry"
        )
        features = self.backbone(images.tensor)
        losses = {}
        if self.use_psm:
            boxes = []
            for i, flip in zip(owner, flips):
                w = pseudo[i].image_size[1]
                boxes.append(flip_boxes(pseudo[i].proposals, w) if flip else pseudo[i].proposals)
            logits, _ = _box_logits(self.roi_heads, features, boxes)
            logits = torch.split(logits, [len(b) for b in boxes])
            keep = [pseudo[i].mined for i in owner]
            losses["loss_psm"] = psm_loss(
                torch.cat([lg[k] for lg, k in zip(logits, keep)]),
                torch.cat([pseudo[i].target[k] for i, k in zip(owner, keep)]),
                self.bg_weight,
            )
        if self.use_mgd:
            t_index, fg = [], []
            for i, flip in zip(owner, flips):
                d = unlabeled[i]
                v = next((j for j, f in enumerate(d["teacher_flips"]) if bool(f) == flip), None)
                assert v is not None, (
                    f"student view of {d.get('file_name', '?')} has flip={flip} but no teacher "
                    f"view does; MGD compares features of the same flip state"
                )
                t_index.append(i * num_t + v)
                m = pseudo[i].fg_mask
                fg.append(_flip_within(m, pseudo[i].image_size[1]) if flip else m)
            fg = torch.stack(fg)
            student = [self.mgd_adapters[f](features[f]) for f in self.mgd_in_features]
            with torch.no_grad():
                teacher = [
                    self.teacher.mgd_adapters[f](t_features[f][t_index])
                    for f in self.mgd_in_features
                ]
            masks = level_masks(fg, [s.shape[-2:] for s in student])
            losses["loss_mgd"] = self.mgd_weight * mgd_loss(
                student, teacher, masks, self.mgd_normalize
            )
        return losses
