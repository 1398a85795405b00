"""Drawing predictions of any shipped model, and MMT-PSM's teacher / student predictions and the
teacher's pseudo-labels, as PNG.

Used by ``tools/visualize.py`` (the command line: config, datasets, output folder).

- :func:`render_predictions`: ground truth | predictions (MMT-PSM: teacher predictions | student
  predictions), at the original image size (detections with score >= ``score_thresh``);
- :func:`render_pseudo_labels`: on one :class:`~d2ext.mmt_psm.KViewMapper` output (training size).
  Top row: teacher view 0 with the teacher's detections (the pseudo masks, score >=
  ``MODEL.MMT_PSM.MGD_SCORE_THRESH``) | the mined proposals (used by L_psm) on the clean image,
  coloured by hard pseudo-label (one colour per foreground class, red = background; text: class
  and max soft probability when there are few) | the MGD foreground mask (union of the pseudo
  masks) on the clean image. Bottom row: every teacher view, then every student view, as the
  networks see them (colour jitter, erasing, flips).

Figures are BGR uint8 arrays (H, W, 3); every panel has a title bar of ``TITLE_H`` pixels and
panels are ``GAP`` pixels apart. :func:`write_png` writes them atomically. LACSS (CKS) has its own
figure, :mod:`d2ext.cks.visualize`, built from the same panels; :func:`load_weights` also warns
when a LACSS checkpoint lacks the collaborator.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.layers import paste_masks_in_image
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from d2ext.cks.meta_arch import LACSS
from d2ext.data.image_io import read_image
from sslseg.io import write_png_atomic

from .meta_arch import MMTPSMRCNN, PseudoLabels

__all__ = ["load_weights", "out_name", "render_predictions", "render_pseudo_labels", "write_png"]

TITLE_H = 22  # height of the title bar above each panel (pixels)
GAP = 4  # space between panels
BG_GREY = (40, 40, 40)  # canvas colour (BGR)
# Mined proposals: one colour per foreground class (RGB, 0-1), background in red.
FG_COLORS = [(0.1, 0.9, 0.1), (0.2, 0.55, 1.0), (1.0, 0.85, 0.0), (0.9, 0.3, 0.9), (0.0, 0.9, 0.9)]
BG_COLOR = (1.0, 0.15, 0.15)
MGD_COLOR = (1.0, 0.85, 0.0)
MAX_BOX_LABELS = 40  # mined proposals get text labels only when there are at most this many


class _KeyReportingCheckpointer(DetectionCheckpointer):
    """Remembers the incompatible keys of the last load (fvcore only logs them)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model: GeneralizedRCNN, weights: str) -> List[str]:
    """Load ``weights`` into ``model``; return warnings about an MMT-PSM teacher or a LACSS
    collaborator missing from the checkpoint (empty when fine or another model)."""
    checkpointer = _KeyReportingCheckpointer(model)
    checkpointer.load(weights)
    warnings = []
    inc = checkpointer.incompatible
    missing = list(inc.missing_keys) if inc is not None else []

    def missing_part(prefix: str, what: str) -> None:
        keys = [k for k in missing if k.startswith(prefix)]
        if keys:
            warnings.append(
                f"{weights}: {len(keys)} {prefix[:-1]} parameters missing (e.g. {keys[0]}): "
                f"{what} The {prefix[:-1]} panels show a randomly initialised network."
            )

    if isinstance(model, LACSS) and model.collaborator is not None:
        missing_part("collaborator.", "a MODEL.CKS.MODE supervised checkpoint?")
    if not isinstance(model, MMTPSMRCNN):
        return warnings
    missing_part("teacher.", "not an MMT-PSM checkpoint?")
    if "teacher_ready" in missing:
        warnings.append(f"{weights}: no 'teacher_ready' flag in the checkpoint")
    elif not bool(model.teacher_ready):
        warnings.append(
            f"{weights}: teacher_ready is False (saved before the EMA teacher was initialised, "
            f"MODEL.MMT_PSM.EMA_START_ITER): teacher predictions and pseudo-labels come from an "
            f"uninitialised teacher"
        )
    return warnings


# ---------------------------------------------------------------- drawing helpers
def _to_rgb(image_chw: torch.Tensor, fmt: str) -> np.ndarray:
    """uint8 (C, H, W) tensor in ``fmt`` (e.g. BGR, the model input) -> (H, W, 3) RGB array."""
    return np.ascontiguousarray(utils.convert_image_to_rgb(image_chw.permute(1, 2, 0).cpu(), fmt))


def _vis_image(vis_output, shape: Tuple[int, int]) -> np.ndarray:
    """Visualizer output as RGB uint8 of exactly ``shape`` (h, w)."""
    img = vis_output.get_image()
    if img.shape[:2] != tuple(shape):
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return img


def _title(panel_rgb: np.ndarray, text: str) -> np.ndarray:
    """RGB panel -> BGR panel with a title bar of ``text`` above it (font shrunk / text cut to
    fit)."""
    h, w = panel_rgb.shape[:2]
    bar = np.full((TITLE_H, w, 3), 0, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    while scale > 0.3 and cv2.getTextSize(text, font, scale, 1)[0][0] > w - 6:
        scale -= 0.05
    while len(text) > 1 and cv2.getTextSize(text, font, scale, 1)[0][0] > w - 6:
        text = text[:-2] + "~"
    cv2.putText(bar, text, (3, TITLE_H - 7), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel_rgb[:, :, ::-1]], axis=0)


def _concat(arrays: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """BGR images joined along ``axis`` (1: side by side, top-aligned; 0: stacked, left-aligned),
    GAP grey pixels apart, each padded with grey to the largest size across ``axis``."""
    other = 1 - axis
    size = max(a.shape[other] for a in arrays)
    parts = []
    for i, a in enumerate(arrays):
        if i:
            gap = [GAP, GAP]
            gap[other] = size
            parts.append(np.full((*gap, 3), BG_GREY, np.uint8))
        pad = list(a.shape[:2])
        pad[other] = size - a.shape[other]
        parts.append(np.concatenate([a, np.full((*pad, 3), BG_GREY, np.uint8)], axis=other))
    return np.concatenate(parts, axis=axis)


def _row(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels (BGR, titled) side by side, top-aligned."""
    return _concat(panels, axis=1)


def _stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows stacked vertically, left-aligned, padded to the widest."""
    return _concat(rows, axis=0)


def write_png(path: Path, image_bgr: np.ndarray) -> Path:
    """Encode ``image_bgr`` as PNG and write it atomically to ``path``
    (``sslseg.io.write_png_atomic``)."""
    return write_png_atomic(image_bgr, path)


def _draw_predictions(rgb: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    vis = Visualizer(rgb, metadata)
    return _vis_image(vis.draw_instance_predictions(instances), rgb.shape[:2])


def _above(instances: Instances, thresh: float) -> Instances:
    return instances[instances.scores >= thresh].to("cpu")


def out_name(out_dir: Path, dataset: str, k: int, file_name: str, kind: str) -> Path:
    """``out_dir/<dataset>/<k>_<stem of file_name>_<kind>.png``."""
    return out_dir / dataset / f"{k:03d}_{Path(file_name).stem}_{kind}.png"


# ---------------------------------------------------------------- the two figures
def _predictions(model: GeneralizedRCNN, inputs: List[Dict], teacher_note: str):
    """``[(name, Instances)]`` of each network of ``model`` on ``inputs`` (eval mode)."""
    if not isinstance(model, MMTPSMRCNN):
        return [("predictions", model(inputs)[0]["instances"])]
    # the student: GeneralizedRCNN's own eval forward on the MMTPSMRCNN (= the student)
    return [
        (f"teacher{teacher_note}", model.teacher(inputs)[0]["instances"]),
        ("student", GeneralizedRCNN.forward(model, inputs)[0]["instances"]),
    ]


@torch.no_grad()
def render_predictions(
    cfg,
    model: GeneralizedRCNN,
    mapper: DatasetMapper,
    d: Dict,
    metadata,
    score_thresh: float,
    teacher_note: str = "",
) -> np.ndarray:
    """BGR figure: ground truth | predictions, or for MMT-PSM ground truth | teacher predictions
    | student predictions (original size).

    ``mapper``: the test-time ``DatasetMapper`` (resizes as evaluation does); predictions are
    drawn at the original size (the models rescale them to the dict's height/width)."""
    rgb = utils.convert_image_to_rgb(
        read_image(d["file_name"], format=cfg.INPUT.FORMAT), cfg.INPUT.FORMAT
    )
    rgb = np.ascontiguousarray(rgb)
    shape = rgb.shape[:2]
    gt = _vis_image(Visualizer(rgb, metadata).draw_dataset_dict(d), shape)
    panels = [_title(gt, f"ground truth: {len(d.get('annotations', []))} instances")]
    for name, instances in _predictions(model, [mapper(d)], teacher_note):
        instances = _above(instances, score_thresh)
        panels.append(
            _title(
                _draw_predictions(rgb, instances, metadata),
                f"{name}: {len(instances)} >= {score_thresh:g}",
            )
        )
    return _row(panels)


def _pseudo_mask_instances(pl: PseudoLabels) -> Instances:
    """The teacher's detections of ``pl`` with masks pasted into the view (for Visualizer)."""
    det = pl.detections.to("cpu")
    h, w = pl.image_size
    out = Instances(
        (h, w), pred_boxes=det.pred_boxes, scores=det.scores, pred_classes=det.pred_classes
    )
    if len(det):
        out.pred_masks = paste_masks_in_image(det.pred_masks[:, 0], det.pred_boxes, (h, w))
    else:
        out.pred_masks = torch.zeros((0, h, w), dtype=torch.bool)
    return out


def _mined_panel(rgb: np.ndarray, pl: PseudoLabels, metadata) -> Tuple[np.ndarray, str]:
    names = metadata.get("thing_classes", None)
    mined = pl.mined.cpu()
    boxes = pl.proposals.tensor.cpu()[mined].numpy()
    hard = pl.hard.cpu()[mined].tolist()
    prob = pl.target.cpu()[mined].max(-1).values.tolist()
    bg = pl.target.shape[1] - 1
    colors, labels = [], []
    for c, p in zip(hard, prob):
        if c == bg:
            colors.append(BG_COLOR)
            labels.append(f"bg {p:.2f}")
        else:
            colors.append(FG_COLORS[c % len(FG_COLORS)])
            labels.append(f"{names[c] if names and c < len(names) else c} {p:.2f}")
    vis = Visualizer(rgb, metadata)
    if len(boxes):
        vis.overlay_instances(
            boxes=boxes,
            labels=labels if len(boxes) <= MAX_BOX_LABELS else None,
            assigned_colors=colors,
        )
    n_bg = sum(c == bg for c in hard)
    title = f"mined: {len(hard) - n_bg} fg / {n_bg} bg (red) of {len(mined)}"
    return _vis_image(vis.get_output(), rgb.shape[:2]), title


def _mgd_panel(rgb: np.ndarray, pl: PseudoLabels, metadata) -> Tuple[np.ndarray, str]:
    h, w = pl.image_size
    fg = pl.fg_mask[:h, :w].cpu().numpy()
    vis = Visualizer(rgb, metadata)
    if fg.any():
        vis.draw_binary_mask(fg.astype(np.uint8), color=MGD_COLOR, alpha=0.5, area_threshold=0)
    title = f"MGD foreground mask: {100.0 * fg.mean():.1f}% of pixels"
    return _vis_image(vis.get_output(), (h, w)), title


@torch.no_grad()
def render_pseudo_labels(
    cfg, model: MMTPSMRCNN, mapped: Dict, metadata, teacher_note: str = ""
) -> np.ndarray:
    """BGR figure of the teacher's pseudo-labels on one KViewMapper output (see module doc)."""
    fmt = cfg.INPUT.FORMAT
    pl = model.teacher_pseudo_labels([mapped])[0][0]
    view0 = _to_rgb(mapped["teacher_views"][0], fmt)
    clean = _to_rgb(mapped["image"], fmt)
    assert view0.shape[:2] == tuple(pl.image_size), (view0.shape, pl.image_size)
    det = _pseudo_mask_instances(pl)
    thresh = cfg.MODEL.MMT_PSM.MGD_SCORE_THRESH
    top = [
        _title(
            _draw_predictions(view0, det, metadata),
            f"teacher{teacher_note} view 0: {len(det)} pseudo masks >= {thresh:g}",
        ),
        _title(*_mined_panel(clean, pl, metadata)),
        _title(*_mgd_panel(clean, pl, metadata)),
    ]
    strip = []
    for kind in ("teacher", "student"):
        for v, (view, flip) in enumerate(zip(mapped[f"{kind}_views"], mapped[f"{kind}_flips"])):
            name = f"{kind} view {v}" + (" (flipped)" if flip else "")
            strip.append(_title(_to_rgb(view, fmt), name))
    return _stack([_row(top), _row(strip)])
