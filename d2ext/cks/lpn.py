"""LACSS location proposal network (LPN) + its weightless detector, as a d2 proposal generator.

One head, shared over the FPN levels ``IN_FEATURES`` (``lacss/modules/lpn.py``, tag 0.4.4):
``len(CONV_DIMS)`` x [conv3x3 (no bias) -> GroupNorm(C groups = per channel, eps 1e-6) -> ReLU],
then a 1x1 conv to a score logit and a 1x1 conv to an offset (dy, dx) in grid units of the level.
The detector (``lacss/modules/detector.py``) decodes every level, zeroes the score of locations
decoded outside the level's padded grid, concatenates the levels and runs greedy distance NMS
(:mod:`d2ext.cks.locations`). In training the segmentor's locations are the GT points, each
replaced by the best nearby detection (``_gen_train_locations``).

All locations are (y, x) pixels of the resized input (``images.image_sizes`` coordinates); the
meta-architecture converts to detectron2's (x, y) at its boundary.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import nn

from d2ext.cks.locations import (
    decode_locations,
    distance_nms,
    locations_to_labels,
    match_train_locations,
    valid_locations,
)
from d2ext.cks.losses import detection_loss

__all__ = ["LPN", "LPNHead"]


class LPNHead(nn.Module):
    """The shared per-level head: conv stack -> (score logit, offset)."""

    def __init__(self, in_channels: int, conv_dims: Sequence[int]):
        """
        Args:
            in_channels: channels of every input level.
            conv_dims: output channels of each conv3x3 + GroupNorm + ReLU layer.
        """
        super().__init__()
        layers = []
        c = in_channels
        for d in conv_dims:
            layers += [
                nn.Conv2d(c, d, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(d, d, eps=1e-6),
                nn.ReLU(inplace=True),
            ]
            c = d
        self.convs = nn.Sequential(*layers)
        self.score = nn.Conv2d(c, 1, kernel_size=1)
        self.offset = nn.Conv2d(c, 2, kernel_size=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (B, C, h, w) one FPN level.

        Returns:
            score logits (B, 1, h, w) and offsets (B, 2, h, w) (dy, dx grid units).
        """
        x = self.convs(x)
        return self.score(x), self.offset(x)


@PROPOSAL_GENERATOR_REGISTRY.register()
class LPN(nn.Module):
    """LPN head, label assignment and L_det, detector (decode + distance NMS), train locations.

    ``forward`` returns per-image :class:`Instances` with ``locations`` (K, 2) (y, x) pixels and
    ``scores`` (K,) (sigmoid), plus ``replaced`` (N,) bool in training (then K = N, the GT points
    in their order), and the losses ``loss_lpn_score`` / ``loss_lpn_loc`` in training.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: int,
        strides: Sequence[int],
        conv_dims: Sequence[int] = (384, 384, 384, 384),
        detection_roi: float = 8.0,
        focal_gamma: float = 2.0,
        loc_loss: str = "huber",
        huber_delta: float = 1.0,
        loc_norm: str = "cells",
        nms_dist: float = 8.0,
        min_score_train: float = 0.2,
        min_score_test: float = 0.2,
        max_output_train: int = 3072,
        max_output_test: int = 3072,
        max_proposal_offset: float = 12.0,
    ):
        """
        Args:
            in_features: FPN level names, e.g. ("p2", "p3", "p4").
            in_channels: channels of those levels (all equal).
            strides: stride of each level, same order.
            conv_dims: head conv widths (``MODEL.CKS.LPN.CONV_DIMS``).
            detection_roi: positive-cell radius in pixels (``DETECTION_ROI``).
            focal_gamma, loc_loss, huber_delta, loc_norm: L_det settings
                (:func:`d2ext.cks.losses.detection_loss`).
            nms_dist: NMS radius in pixels (``MODEL.CKS.DETECTOR.NMS_DIST``).
            min_score_train, min_score_test: minimum detection score.
            max_output_train, max_output_test: maximum detections per image (<= 0: no limit).
            max_proposal_offset: train-location replacement radius in pixels (<= 0: off).
        """
        super().__init__()
        assert len(in_features) == len(
            strides
        ), f"{len(in_features)} features, {len(strides)} strides"
        self.in_features = list(in_features)
        self.strides = [int(s) for s in strides]
        self.head = LPNHead(in_channels, conv_dims)
        self.detection_roi = float(detection_roi)
        self.loss_kwargs = dict(
            gamma=float(focal_gamma),
            loc_loss=loc_loss,
            huber_delta=float(huber_delta),
            loc_norm=loc_norm,
        )
        self.nms_dist = float(nms_dist)
        self.min_score = {True: float(min_score_train), False: float(min_score_test)}
        self.max_output = {True: int(max_output_train), False: int(max_output_test)}
        self.max_proposal_offset = float(max_proposal_offset)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        lpn, det = cfg.MODEL.CKS.LPN, cfg.MODEL.CKS.DETECTOR
        for key, value, allowed in (
            ("LOC_LOSS", lpn.LOC_LOSS, ("huber", "l2")),
            ("LOC_NORM", lpn.LOC_NORM, ("cells", "positives")),
        ):
            if value not in allowed:
                raise ValueError(f"MODEL.CKS.LPN.{key} is {value!r}: use one of {allowed}")
        in_features = list(lpn.IN_FEATURES)
        channels = {input_shape[f].channels for f in in_features}
        assert len(channels) == 1, f"LPN levels {in_features} have different channels {channels}"
        return {
            "in_features": in_features,
            "in_channels": channels.pop(),
            "strides": [input_shape[f].stride for f in in_features],
            "conv_dims": list(lpn.CONV_DIMS),
            "detection_roi": lpn.DETECTION_ROI,
            "focal_gamma": lpn.FOCAL_GAMMA,
            "loc_loss": lpn.LOC_LOSS,
            "huber_delta": lpn.HUBER_DELTA,
            "loc_norm": lpn.LOC_NORM,
            "nms_dist": det.NMS_DIST,
            "min_score_train": det.MIN_SCORE_TRAIN,
            "min_score_test": det.MIN_SCORE_TEST,
            "max_output_train": det.MAX_OUTPUT_TRAIN,
            "max_output_test": det.MAX_OUTPUT_TEST,
            "max_proposal_offset": det.MAX_PROPOSAL_OFFSET,
        }

    def predict(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[Tuple[int, int]]]:
        """Head outputs of every level.

        Returns:
            score logits per level (B, h_l * w_l), offsets per level (B, h_l * w_l, 2)
            (dy, dx grid units, row-major cells), grid sizes (h_l, w_l).
        """
        logits, offsets, grids = [], [], []
        for f in self.in_features:
            x = features[f]
            s, o = self.head(x)
            b, _, h, w = s.shape
            logits.append(s.reshape(b, h * w))
            offsets.append(o.permute(0, 2, 3, 1).reshape(b, h * w, 2))
            grids.append((h, w))
        return logits, offsets, grids

    @torch.no_grad()
    def detect(
        self,
        logits: Sequence[torch.Tensor],
        offsets: Sequence[torch.Tensor],
        grids: Sequence[Tuple[int, int]],
        training: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The detector on one image (inputs detached).

        Args:
            logits: per level (K_l,) score logits of this image.
            offsets: per level (K_l, 2).
            grids: per level the padded grid (h_l, w_l).
            training: use the train (True) or test (False) min score / max output.

        Returns:
            locations (K, 2) (y, x) pixels and scores (K,) sigmoid, by descending score.
        """
        locs, scores = [], []
        for lg, off, hw, s in zip(logits, offsets, grids, self.strides):
            loc = decode_locations(off.detach().float(), hw, s)
            sc = torch.sigmoid(lg.detach().float())
            sc = torch.where(valid_locations(loc, hw, s), sc, torch.zeros_like(sc))
            locs.append(loc)
            scores.append(sc)
        locs, scores = torch.cat(locs), torch.cat(scores)
        keep = distance_nms(
            locs, scores, self.min_score[training], self.nms_dist, self.max_output[training]
        )
        return locs[keep], scores[keep]

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_points: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: the padded batch (only ``image_sizes`` and the batch size are read).
            features: FPN levels, (B, C, h_l, w_l) each.
            gt_points: training only, per image (N_i, 2) float (y, x) pixels.

        Returns:
            proposals: per image ``Instances(image_size)``. With ``gt_points`` (training):
            ``locations`` (N_i, 2) = the GT points, each replaced by the best detection within
            ``max_proposal_offset`` (train min score / max output), ``scores`` (N_i,) (the
            replacing detection's score, 1.0 where the GT point is kept), ``replaced`` (N_i,)
            bool. Otherwise: the detections, ``locations`` (K, 2), ``scores`` (K,) (train
            settings if ``self.training``, test settings in eval).
            losses: ``{"loss_lpn_score", "loss_lpn_loc"}`` (mean over images) with
            ``gt_points`` in training, else ``{}``.
        """
        logits, offsets, grids = self.predict(features)
        n_img = len(images.image_sizes)
        assert logits[0].shape[0] == n_img, f"{logits[0].shape[0]} feature maps, {n_img} images"
        training = self.training and gt_points is not None
        if training:
            assert len(gt_points) == n_img, f"{len(gt_points)} gt point sets for {n_img} images"

        proposals: List[Instances] = []
        loss_score, loss_loc = [], []
        for b in range(n_img):
            lg = [x[b] for x in logits]
            off = [x[b] for x in offsets]
            inst = Instances(tuple(images.image_sizes[b]))
            if not training:
                locs, scores = self.detect(lg, off, grids, training=self.training)
                inst.locations, inst.scores = locs, scores
                proposals.append(inst)
                continue

            gt = gt_points[b].to(device=lg[0].device, dtype=torch.float32).reshape(-1, 2)
            targets = [
                locations_to_labels(gt, hw, s, self.detection_roi)
                for hw, s in zip(grids, self.strides)
            ]
            ls, ll = detection_loss(
                lg, off, [t[0] for t in targets], [t[1] for t in targets], **self.loss_kwargs
            )
            loss_score.append(ls)
            loss_loc.append(ll)

            locations = gt.clone()
            scores = torch.ones(gt.shape[0], device=gt.device)
            replaced = torch.zeros(gt.shape[0], dtype=torch.bool, device=gt.device)
            if self.max_proposal_offset > 0 and gt.shape[0] > 0:
                pred_locs, pred_scores = self.detect(lg, off, grids, training=True)
                matched = match_train_locations(
                    pred_locs, pred_scores, gt, self.max_proposal_offset
                )
                replaced = matched >= 0
                locations[replaced] = pred_locs[matched[replaced]]
                scores[replaced] = pred_scores[matched[replaced]]
            inst.locations, inst.scores, inst.replaced = locations, scores, replaced
            proposals.append(inst)

        losses = {}
        if training:
            losses = {
                "loss_lpn_score": torch.stack(loss_score).mean(),
                "loss_lpn_loc": torch.stack(loss_loc).mean(),
            }
        return proposals, losses
