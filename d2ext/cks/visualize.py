"""Drawing of one image through LACSS (CKS): its ground-truth points, the principal's instances and
the collaborator's maps, as one PNG figure.

Used by ``tools/visualize.py`` when ``MODEL.META_ARCHITECTURE`` is ``LACSS`` (one figure per
image of ``--dataset``, e.g. ``synthetic_cks_train``). :func:`render_cks` draws one row of four
panels, all at the original image size:

1. the image with its ground-truth points (each annotation's ``point_coords[0]``, else its mask's
   centroid, as :class:`~d2ext.cks.CKSDatasetMapper` takes them);
2. the principal (eval-mode prediction, detections with score >= ``score_thresh``): each instance
   mask's outline in its own colour and its predicted location (``pred_locations``) as a cross of
   the same colour;
3. the collaborator's foreground probability ``sigmoid(fg)`` and 4. its border probability
   ``sigmoid(border)``, computed as in training on the per-image standardised image at model
   scale (``INPUT.CKS.SCALE``), for the image's cell type (the dict's ``cell_type``, else
   ``INPUT.CKS.CELL_TYPE``), cut to the valid (unpadded) size and resized to the original size
   for display; fixed colour scale (viridis: 0 dark blue .. 1 yellow), mean and max in the title.

A ``MODE: supervised`` model has no collaborator: panels 3 and 4 show the dimmed image titled
"no collaborator (supervised mode)".

The model input is the test mapper's (detectron2's ``DatasetMapper(cfg, is_train=False)``; the
LACSS configs set ``INPUT.MIN_SIZE_TEST: 0``, no resize), exactly as in evaluation: the model
itself resizes by ``INPUT.CKS.SCALE`` and returns its predictions at the dict's size. Panels,
title bars and :func:`~d2ext.mmt_psm.visualize.write_png` are those of
:mod:`d2ext.mmt_psm.visualize` (figures are BGR uint8 arrays).
"""

from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.utils.colormap import colormap

from d2ext.data.image_io import read_image
from d2ext.mmt_psm.visualize import _row, _title

from .mapper import annotation_point
from .meta_arch import LACSS

__all__ = ["NO_COLLABORATOR", "cks_panels", "collaborator_maps", "gt_points", "render_cks"]

NO_COLLABORATOR = "no collaborator (supervised mode)"
POINT_COLOR = (255, 220, 0)  # ground-truth points (RGB)
DIM = 0.35  # brightness of the image in the panels of a missing collaborator
_PALETTE = colormap(rgb=True, maximum=255).astype(int)


def gt_points(d: Dict) -> np.ndarray:
    """(N, 2) xy pixels of the non-crowd annotations of dataset dict ``d``: ``point_coords[0]``,
    else the mask's centroid (as the CKS mapper)."""
    anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
    pts = [annotation_point(a, d) for a in anns]
    return np.asarray(pts, np.float64).reshape(-1, 2)


@torch.no_grad()
def collaborator_maps(
    model: LACSS, mapped: Dict, cell_type: int
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(sigmoid(fg), sigmoid(border))`` float32 (h, w) of the collaborator on one test-mapped
    dict, at model scale (the image resized by ``INPUT.CKS.SCALE``), cut to the valid size;
    None without a collaborator (``MODE: supervised``)."""
    if model.collaborator is None:
        return None
    images = model.preprocess_image([mapped], rescale=True)
    cell_types = torch.tensor([int(cell_type)], device=model.device)
    fg, border = model.collaborator(images.tensor, cell_types)
    h, w = images.image_sizes[0]
    return tuple(torch.sigmoid(x[0, :h, :w]).float().cpu().numpy() for x in (fg, border))


def _points_panel(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    for x, y in np.round(points).astype(int):
        cv2.circle(out, (int(x), int(y)), 3, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), 2, POINT_COLOR, -1, cv2.LINE_AA)
    return out


def _instances_panel(rgb: np.ndarray, masks: np.ndarray, locations: np.ndarray) -> np.ndarray:
    """Outline of each (H, W) bool mask and a cross at its location, one colour per instance."""
    out = rgb.copy()
    for k, (mask, (x, y)) in enumerate(zip(masks, locations)):
        color = tuple(int(c) for c in _PALETTE[k % len(_PALETTE)])
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(out, contours, -1, color, 1)
        cv2.drawMarker(out, (int(round(x)), int(round(y))), color, cv2.MARKER_CROSS, 7, 1)
    return out


def _prob_panel(prob: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """(h, w) probabilities -> RGB uint8 viridis image of ``shape`` (fixed 0..1 scale)."""
    if prob.shape != tuple(shape):
        prob = cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    u8 = np.round(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS)[:, :, ::-1])


def cks_panels(
    cfg, model: LACSS, mapper: DatasetMapper, d: Dict, score_thresh: float, note: str = ""
) -> List[Tuple[str, np.ndarray]]:
    """The four ``(title, RGB panel)`` of :func:`render_cks` (module docstring); ``note`` is
    appended to the collaborator titles (e.g. " (NOT initialised)")."""
    fmt = cfg.INPUT.FORMAT
    rgb = np.ascontiguousarray(
        utils.convert_image_to_rgb(read_image(d["file_name"], format=fmt), fmt)
    )
    shape = rgb.shape[:2]
    points = gt_points(d)
    panels = [(f"ground truth: {len(points)} points", _points_panel(rgb, points))]

    mapped = mapper(d)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inst = model([mapped])[0]["instances"].to("cpu")
        cell_type = d.get("cell_type", cfg.INPUT.CKS.CELL_TYPE)
        maps = collaborator_maps(model, mapped, cell_type)
    finally:
        model.train(was_training)
    inst = inst[inst.scores >= score_thresh]
    assert tuple(inst.image_size) == shape, (
        f"{d['file_name']}: predictions of size {tuple(inst.image_size)}, image {shape}; the "
        f"dict's height/width must be the image's"
    )
    panels.append(
        (
            f"principal: {len(inst)} instances >= {score_thresh:g}",
            _instances_panel(rgb, inst.pred_masks.numpy(), inst.pred_locations.numpy()),
        )
    )
    if maps is None:
        dimmed = (rgb * DIM).astype(np.uint8)
        return panels + [(NO_COLLABORATOR, dimmed), (NO_COLLABORATOR, dimmed.copy())]
    for name, prob in zip(("fg", "border"), maps):
        title = f"collaborator{note} P({name}): mean {prob.mean():.2f} max {prob.max():.2f}"
        panels.append((title, _prob_panel(prob, shape)))
    return panels


def render_cks(
    cfg, model: LACSS, mapper: DatasetMapper, d: Dict, score_thresh: float, note: str = ""
) -> np.ndarray:
    """BGR figure of dataset dict ``d``: ground-truth points | principal's instances |
    collaborator's P(fg) | P(border) (module docstring). ``mapper``: the test-time
    ``DatasetMapper``. The model's train/eval mode is restored afterwards."""
    panels = cks_panels(cfg, model, mapper, d, score_thresh, note)
    return _row([_title(panel, title) for title, panel in panels])
