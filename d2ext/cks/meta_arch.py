"""``LACSS``: the principal detector-segmenter of CKS (Ji Yu, "Point-supervised single-cell
segmentation via collaborative knowledge sharing"), plus its training-only collaborator.

Parts (each its own module, README.md in this folder): a backbone with the LACSS FPN
(:mod:`d2ext.cks.backbone`), the LPN point head registered as a proposal generator
(:class:`d2ext.cks.lpn.LPN`), the crop segmentor with its learned position encoding
(:class:`d2ext.cks.segmentor.InstanceSegmentor`) and, in ``MODEL.CKS.MODE: points``, the
collaborator (:class:`d2ext.cks.collaborator.Collaborator`); the losses are pure functions
(:mod:`d2ext.cks.losses`).

Input: detectron2 dataset dicts with ``image`` (C, H, W) (any intensity range: each image is
standardised inside the model) and, in training, ``instances`` with ``gt_point_coords``
(N, 1, 2) xy pixels and (``MODE: supervised``) ``gt_masks``; optional ``cell_type`` (int).
Training images come at model scale (the CKS mapper resizes them by ``INPUT.CKS.SCALE``); in
inference the model itself resizes by ``INPUT.CKS.SCALE`` and returns predictions at the dict's
``height`` x ``width`` (default: the input size), so detectron2's test loader, ``DefaultPredictor``
and ``tools/predict.py`` work on original images.

Output (inference): ``[{"instances": Instances}]`` with ``pred_masks`` (R, H, W) bool,
``scores`` (R,) the LPN score, ``pred_classes`` (R,) 0, ``pred_boxes`` the masks' tight boxes
(the crop window for an empty mask) and ``pred_locations`` (R, 2) xy pixels.

Everything inside the model is LACSS's (y, x); the swap from/to detectron2's (x, y) happens only
in :meth:`LACSS._gt_points` and :meth:`LACSS._postprocess`.
"""

import logging
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from . import losses as L
from .collaborator import Collaborator
from .init import init_lacss_
from .segmentor import InstanceSegmentor, paste_masks

logger = logging.getLogger(__name__)

__all__ = ["LACSS", "standardize_image"]

MODES = ("points", "supervised")


def standardize_image(image: torch.Tensor) -> torch.Tensor:
    """``tf.image.per_image_standardization``: (C, H, W) -> ``(x - mean) / max(std, 1/sqrt(n))``
    over all pixels and channels."""
    x = image.float()
    n = x.numel()
    mean = x.mean()
    std = x.std(unbiased=False).clamp(min=1.0 / math.sqrt(n))
    return (x - mean) / std


@META_ARCH_REGISTRY.register()
class LACSS(nn.Module):
    """LACSS principal model (+ collaborator in ``points`` mode); see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        lpn: nn.Module,
        segmentor: InstanceSegmentor,
        collaborator: Optional[Collaborator],
        mode: str = "points",
        standardize: bool = True,
        scale: float = 1.0,
        size_divisibility: int = 32,
        max_train_instances: int = -1,
        prior_sigma: Sequence[float] = (20.0,),
        prior_scale: float = 2.0,
        prior_center: str = "crop",
        force_point_fg: bool = True,
        warmup_iters: int = 9000,
        warmup_sigma: float = 100.0,
        warmup_scale: float = 1.0,
        warmup_hard_label: bool = True,
        collapse_weight: float = 0.01,
        collapse_form: str = "code",
        principal_consistency: str = "linear",
        collaborator_consistency: str = "linear",
        border_weight: float = 1.0,
        min_area: int = 0,
        remove_out_of_bound: bool = False,
        paste_chunk: int = 256,
    ):
        """
        Args:
            backbone: returns the FPN levels the LPN and the segmentor read (p2 at stride 4).
            lpn: :class:`d2ext.cks.lpn.LPN` (``MODEL.PROPOSAL_GENERATOR.NAME``).
            segmentor: crop segmentor on the stride-4 level.
            collaborator: the training-only collaborator (``points`` mode), else None.
            mode: "points" (CKS) or "supervised" (instance masks).
            Other arguments: the ``MODEL.CKS`` / ``INPUT.CKS`` keys of the same names
            (:func:`d2ext.cks.add_cks_config` documents each).
        """
        super().__init__()
        assert mode in MODES, f"MODEL.CKS.MODE must be one of {MODES}, got {mode!r}"
        assert (collaborator is not None) == (
            mode == "points"
        ), f"MODEL.CKS.MODE {mode!r}: a collaborator is needed in points mode only"
        for name, value, allowed in (
            ("LOSS.PRIOR_CENTER", prior_center, ("crop", "point")),
            ("LOSS.COLLAPSE_FORM", collapse_form, ("code", "paper")),
            ("LOSS.PRINCIPAL_CONSISTENCY", principal_consistency, ("linear", "ce")),
            ("LOSS.COLLABORATOR_CONSISTENCY", collaborator_consistency, ("linear", "ce")),
        ):
            assert value in allowed, f"MODEL.CKS.{name} must be one of {allowed}, got {value!r}"
        assert len(prior_sigma) > 0, "MODEL.CKS.LOSS.PRIOR_SIGMA needs one sigma per cell type"
        self.backbone = backbone
        self.lpn = lpn
        self.segmentor = segmentor
        self.collaborator = collaborator
        self.mode = mode
        self.standardize = standardize
        self.scale = float(scale)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.max_train_instances = max_train_instances
        self.prior_sigma = [float(s) for s in prior_sigma]
        self.prior_scale = prior_scale
        self.prior_center = prior_center
        self.force_point_fg = force_point_fg
        self.warmup_iters = warmup_iters
        self.warmup_sigma = warmup_sigma
        self.warmup_scale = warmup_scale
        self.warmup_hard_label = warmup_hard_label
        self.collapse_weight = collapse_weight
        self.collapse_form = collapse_form
        self.principal_consistency = principal_consistency
        self.collaborator_consistency = collaborator_consistency
        self.border_weight = border_weight
        self.min_area = min_area
        self.remove_out_of_bound = remove_out_of_bound
        self.paste_chunk = paste_chunk
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CKS
        assert c.MODE in MODES, f"MODEL.CKS.MODE must be one of {MODES}, got {c.MODE!r}"
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        need = set(c.LPN.IN_FEATURES) | {c.SEGMENTOR.IN_FEATURE}
        assert need <= set(shapes), (
            f"MODEL.CKS.LPN.IN_FEATURES {list(c.LPN.IN_FEATURES)} / MODEL.CKS.SEGMENTOR.IN_FEATURE "
            f"{c.SEGMENTOR.IN_FEATURE!r} name {sorted(need - set(shapes))}, which the backbone "
            f"{cfg.MODEL.BACKBONE.NAME} does not output ({sorted(shapes)})"
        )
        assert shapes[c.SEGMENTOR.IN_FEATURE].stride == 4, (
            f"MODEL.CKS.SEGMENTOR.IN_FEATURE {c.SEGMENTOR.IN_FEATURE!r} has stride "
            f"{shapes[c.SEGMENTOR.IN_FEATURE].stride}; the segmentor needs the stride-4 level"
        )
        lpn = build_proposal_generator(cfg, shapes)
        segmentor = InstanceSegmentor(cfg, shapes)
        collaborator = Collaborator(cfg) if c.MODE == "points" else None
        for module in (backbone, lpn, segmentor, collaborator):
            if module is not None:
                init_lacss_(module, c.INIT)
        L_ = c.LOSS
        return {
            "backbone": backbone,
            "lpn": lpn,
            "segmentor": segmentor,
            "collaborator": collaborator,
            "mode": c.MODE,
            "standardize": cfg.INPUT.CKS.PER_IMAGE_STANDARDIZE,
            "scale": cfg.INPUT.CKS.SCALE,
            "max_train_instances": c.SEGMENTOR.MAX_TRAIN_INSTANCES,
            "prior_sigma": list(L_.PRIOR_SIGMA),
            "prior_scale": L_.PRIOR_SCALE,
            "prior_center": L_.PRIOR_CENTER,
            "force_point_fg": L_.FORCE_POINT_FG,
            "warmup_iters": L_.WARMUP_ITERS,
            "warmup_sigma": L_.WARMUP_SIGMA,
            "warmup_scale": L_.WARMUP_SCALE,
            "warmup_hard_label": L_.WARMUP_HARD_LABEL,
            "collapse_weight": L_.COLLAPSE_WEIGHT,
            "collapse_form": L_.COLLAPSE_FORM,
            "principal_consistency": L_.PRINCIPAL_CONSISTENCY,
            "collaborator_consistency": L_.COLLABORATOR_CONSISTENCY,
            "border_weight": L_.BORDER_WEIGHT,
            "min_area": c.TEST.MIN_AREA,
            "remove_out_of_bound": c.TEST.REMOVE_OUT_OF_BOUND,
            "paste_chunk": c.TEST.PASTE_CHUNK,
        }

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    # ---- input ------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict], rescale: bool) -> ImageList:
        """Images (C, H, W) -> 3 channels, optionally resized by ``scale``, standardised per
        image, zero-padded (= the mean) to a multiple of 32: ImageList (B, 3, H', W')."""
        images = []
        for x in batched_inputs:
            img = x["image"].to(self.device).float()
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            elif img.shape[0] == 2:
                img = torch.cat([img, torch.zeros_like(img[:1])])
            if rescale and self.scale != 1.0:
                h, w = img.shape[-2:]
                size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
                img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
            images.append(standardize_image(img) if self.standardize else img)
        return ImageList.from_tensors(images, self.size_divisibility, pad_value=0.0)

    def _gt_points(self, instances: Instances) -> torch.Tensor:
        """``gt_point_coords`` (N, 1, 2) xy -> (N, 2) yx pixels."""
        pts = instances.gt_point_coords.to(self.device).float()
        assert pts.ndim == 3 and pts.shape[1:] == (1, 2), (
            f"gt_point_coords must be (N, 1, 2) xy (one point per instance), got "
            f"{tuple(pts.shape)}"
        )
        return pts[:, 0].flip(-1)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs, rescale=False)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        gt_points = [self._gt_points(g) for g in gt]
        features = self.backbone(images.tensor)
        proposals, losses = self.lpn(images, features, gt_points)
        keep = [self._train_subset(len(p)) for p in gt_points]
        locations = [p.locations[k] for p, k in zip(proposals, keep)]
        crops = self.segmentor(features, locations)
        self._log_train_stats(proposals, crops, images)
        if self.mode == "supervised":
            losses["loss_seg"] = self._mean(
                [
                    L.supervised_instance_loss(logits, origins, g.gt_masks.tensor[k])
                    for (logits, origins), g, k in zip(crops, gt, keep)
                ]
            )
            return losses
        losses.update(self._cks_losses(images, batched_inputs, crops, gt_points, keep))
        return losses

    def _train_subset(self, n: int) -> torch.Tensor:
        """Indices of the instances that get a crop: all, or a random subset of
        ``max_train_instances`` (memory cap for dense images)."""
        if 0 <= self.max_train_instances < n:
            idx = torch.randperm(n, device=self.device)[: self.max_train_instances]
            return idx.sort().values
        return torch.arange(n, device=self.device)

    @staticmethod
    def _mean(values: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values).mean()

    def in_warmup(self) -> bool:
        """Whether the current iteration (event storage, so resume-safe) is in the warm-up."""
        try:
            it = get_event_storage().iter
        except AssertionError:  # no storage: outside a trainer (tests), after the warm-up
            return False
        return it < self.warmup_iters

    def _cks_losses(
        self, images, batched_inputs, crops, gt_points, keep
    ) -> Dict[str, torch.Tensor]:
        """L_S (principal), L_M (collaborator), L_B (both), L_MC (principal); see losses.py."""
        cell_types = torch.tensor(
            [int(x.get("cell_type", 0)) for x in batched_inputs], device=self.device
        )
        assert int(cell_types.max()) < len(self.prior_sigma) or len(self.prior_sigma) == 1, (
            f"cell_type {int(cell_types.max())} but MODEL.CKS.LOSS.PRIOR_SIGMA has "
            f"{len(self.prior_sigma)} values"
        )
        fg_all, border_all = self.collaborator(images.tensor, cell_types)
        warm = self.in_warmup()
        out = {k: [] for k in ("loss_seg", "loss_collab_fg", "loss_border", "loss_collapse")}
        mean_fg = []
        for i, ((logits, origins), pts, k) in enumerate(zip(crops, gt_points, keep)):
            h, w = images.image_sizes[i]
            fg, border = fg_all[i, :h, :w], border_all[i, :h, :w]
            fg_prob = torch.sigmoid(fg).detach()
            mean_fg.append(fg_prob.mean())
            if self.principal_consistency == "ce":
                l_s = L.principal_consistency_ce(logits, origins, fg_prob)
            else:
                soft = not (warm and self.warmup_hard_label)
                l_s = L.self_supervised_instance_loss(logits, origins, fg_prob, soft=soft)
            t = int(cell_types[i])
            sigma = (
                self.warmup_sigma if warm else self.prior_sigma[min(t, len(self.prior_sigma) - 1)]
            )
            pi = self.warmup_scale if warm else self.prior_scale
            l_m = L.collaborator_segmentation_loss(
                fg,
                logits.detach(),
                origins,
                pts[k],
                sigma=sigma,
                pi=pi,
                prior_center=self.prior_center,
                force_points=self.force_point_fg,
                form=self.collaborator_consistency,
            )
            out["loss_seg"].append(l_s)
            out["loss_collab_fg"].append(l_m)
            out["loss_border"].append(self.border_weight * L.border_loss(border, logits, origins))
            out["loss_collapse"].append(
                L.collapse_loss(
                    logits, origins, h, w, delta=self.collapse_weight, form=self.collapse_form
                )
            )
        self._put_scalar("cks/mean_collab_fg", torch.stack(mean_fg).mean())
        return {k: self._mean(v) for k, v in out.items()}

    def _put_scalar(self, name: str, value) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        storage.put_scalar(name, float(value), smoothing_hint=True)

    def _log_train_stats(self, proposals, crops, images) -> None:
        """Early signs of collapse (lacss#14) and of bad points (lacss#4): the fraction of points
        replaced by a detection, the mean instance area (pixels inside the image)."""
        n = sum(len(p) for p in proposals)
        if n == 0:
            return
        replaced = sum(int(p.replaced.sum()) for p in proposals)
        self._put_scalar("cks/replaced_fraction", replaced / n)
        with torch.no_grad():
            areas = [
                (torch.sigmoid(logits) >= 0.5).flatten(1).sum(1).float()
                for logits, _ in crops
                if len(logits)
            ]
        if areas:
            self._put_scalar("cks/mean_instance_area", torch.cat(areas).mean())

    # ---- inference --------------------------------------------------------------------------
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Detect points, segment their crops and paste the masks at the output size."""
        assert not self.training
        images = self.preprocess_image(batched_inputs, rescale=True)
        features = self.backbone(images.tensor)
        proposals, _ = self.lpn(images, features)
        crops = self.segmentor(features, [p.locations for p in proposals])
        results = []
        for x, p, (logits, origins), size in zip(
            batched_inputs, proposals, crops, images.image_sizes
        ):
            in_h, in_w = x["image"].shape[-2:]
            out_hw = (int(x.get("height", in_h)), int(x.get("width", in_w)))
            results.append({"instances": self._postprocess(p, logits, origins, size, out_hw)})
        return results

    def _postprocess(self, proposals, logits, origins, size, out_hw) -> Instances:
        """Crops at model scale -> Instances at ``out_hw`` (module docstring)."""
        h, w = size
        sy, sx = out_hw[0] / h, out_hw[1] / w
        # the LPN decodes on the padded grid: a point in the padding is not in the image
        loc = proposals.locations
        keep = (loc >= 0).all(1) & (loc[:, 0] < h) & (loc[:, 1] < w)
        if self.remove_out_of_bound:
            s = logits.shape[-1]
            keep &= (origins >= 0).all(1) & (origins[:, 0] + s <= h) & (origins[:, 1] + s <= w)
        logits, origins = logits[keep], origins[keep]
        locations, scores = proposals.locations[keep], proposals.scores[keep]
        masks = paste_masks(logits, origins, (sy, sx), out_hw, chunk_size=self.paste_chunk)
        if self.min_area > 0:
            big = masks.flatten(1).sum(1) >= self.min_area
            masks, logits, origins = masks[big], logits[big], origins[big]
            locations, scores = locations[big], scores[big]
        s = logits.shape[-1]
        window = torch.stack(
            [
                origins[:, 1] * sx,
                origins[:, 0] * sy,
                (origins[:, 1] + s) * sx,
                (origins[:, 0] + s) * sy,
            ],
            dim=1,
        ).float()
        inst = Instances(out_hw)
        inst.pred_masks = masks
        inst.scores = scores
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64, device=scores.device)
        inst.pred_boxes = Boxes(_mask_boxes(masks, window))
        inst.pred_locations = locations.flip(-1) * torch.tensor([sx, sy], device=locations.device)
        return inst


def _mask_boxes(masks: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """(R, H, W) bool -> (R, 4) XYXY tight boxes (detectron2 ``BitMasks``); ``fallback`` (R, 4)
    rows for empty masks."""
    boxes = BitMasks(masks).get_bounding_boxes().tensor.to(fallback)
    empty = ~masks.flatten(1).any(1)
    boxes[empty] = fallback[empty]
    return boxes
