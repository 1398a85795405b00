"""CKS (LACSS) losses as pure tensor functions on ONE image (the caller averages over the batch).

Reference: github jiyuuchc/lacss tag 0.4.4, ``lacss/losses/{detection,instance,auxiliary}.py``;
spec section 4. Coordinates are LACSS's (y, x) pixels, edge-indexed (pixel (r, c) covers
[r, r+1) x [c, c+1)); crop windows are S x S with integer pixel origins (y0, x0) that may lie
outside the image (``d2ext.cks.crops``).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss

from .crops import crop_from_image, inside_mask, paste_max, paste_sum, window_sum

__all__ = [
    "detection_loss",
    "supervised_instance_loss",
    "self_supervised_instance_loss",
    "principal_consistency_ce",
    "collaborator_segmentation_loss",
    "border_loss",
    "collapse_loss",
    "gaussian_prior",
    "sobel_edges",
]

EPS = torch.finfo(torch.float32).eps


def detection_loss(
    score_logits: List[torch.Tensor],
    offsets: List[torch.Tensor],
    score_targets: List[torch.Tensor],
    offset_targets: List[torch.Tensor],
    gamma: float = 2.0,
    loc_loss: str = "huber",
    huber_delta: float = 1.0,
    loc_norm: str = "cells",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LPN score and localisation losses of one image (``detection_loss`` and
    ``localization_loss`` of ``lacss/losses/detection.py``).

    Args:
        score_logits: per level l, (K_l,) score logits of the K_l grid cells.
        offsets: per level, (K_l, 2) predicted (dy, dx) in grid units of that level.
        score_targets: per level, (K_l,) in {0, 1} (1 = positive cell).
        offset_targets: per level, (K_l, 2) target (dy, dx); only positive cells count.
        gamma: focal exponent (no alpha weighting: fvcore ``alpha=-1``).
        loc_loss: "huber" (``optax.huber_loss``, = ``F.huber_loss``: 0.5 x^2 for |x| <= delta,
            else delta (|x| - delta / 2)) or "l2" (``optax.l2_loss`` = 0.5 x^2, i.e. with the 1/2;
            the paper's "L2 loss").
        huber_delta: Huber threshold (1.0 in the code).
        loc_norm: "cells" (0.4.4: divide by the number of cells of all levels) or "positives"
            (April-2023 code: divide by max(#positive cells, 1)).

    Returns:
        (loss_score, loss_loc), 0-dim: ``sum_{levels, cells} FL / #cells`` and
        ``sum_{positive cells} mean_{dy, dx} h(pred - target) / norm``. The reference clips p_t at
        float32 eps and adds eps to the counts; we use logits (fvcore) and max(count, 1).
    """
    assert loc_loss in ("huber", "l2"), f"unknown loc_loss {loc_loss!r}"
    assert loc_norm in ("cells", "positives"), f"unknown loc_norm {loc_norm!r}"
    n = len(score_logits)
    assert n > 0 and len(offsets) == n, f"{n} score levels vs {len(offsets)} offset levels"
    assert len(score_targets) == n and len(offset_targets) == n, "one target per level needed"

    score_sum = score_logits[0].sum() * 0.0
    loc_sum = offsets[0].sum() * 0.0
    n_cells = 0
    n_pos = 0
    for logit, off, tgt, off_tgt in zip(score_logits, offsets, score_targets, offset_targets):
        assert logit.shape == tgt.shape, f"score shape {tuple(logit.shape)} vs {tuple(tgt.shape)}"
        assert off.shape == off_tgt.shape, f"offset shape {tuple(off.shape)} vs {off_tgt.shape}"
        tgt = tgt.to(logit.dtype)
        score_sum = score_sum + sigmoid_focal_loss(
            logit, tgt, alpha=-1, gamma=gamma, reduction="sum"
        )
        n_cells += logit.numel()
        pos = tgt > 0
        n_pos += int(pos.sum())
        diff_pred, diff_tgt = off[pos], off_tgt[pos].to(off.dtype)
        if loc_loss == "huber":
            h = F.huber_loss(diff_pred, diff_tgt, reduction="none", delta=huber_delta)
        else:
            h = 0.5 * (diff_pred - diff_tgt) ** 2
        loc_sum = loc_sum + h.mean(dim=-1).sum()
    loss_score = score_sum / max(n_cells, 1)
    loss_loc = loc_sum / max(n_cells if loc_norm == "cells" else n_pos, 1)
    return loss_score, loss_loc


def _mean_over_instances(loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N, S, S) -> mean over the S^2 window pixels, then over the N instances
    (``_mean_over_boolean_mask``); 0 connected to ``logits``' graph when N == 0."""
    if loss.shape[0] == 0:
        return logits.sum() * 0.0
    return loss.mean(dim=(1, 2)).mean()


def supervised_instance_loss(
    logits: torch.Tensor, origins: torch.Tensor, gt_masks: torch.Tensor
) -> torch.Tensor:
    """L_seg of ``MODE: supervised`` (``supervised_instance_loss``, ``gt_labels`` branch).

    ``mean_i mean_{R_i} BCEWithLogits(l_i, t_i)``, t_i = GT mask i read on window R_i, 0 outside
    the image (the reference pads the label image with 0).

    Args:
        logits: (N, S, S) instance logits l_i.
        origins: (N, 2) long, window origins (y0, x0) px.
        gt_masks: (N, H, W) bool/float GT mask of the instance of each window.

    Returns:
        0-dim loss.
    """
    assert (
        gt_masks.shape[0] == logits.shape[0]
    ), f"{gt_masks.shape[0]} masks for {logits.shape[0]} instances"
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    target = crop_from_image(gt_masks, origins, logits.shape[-1], 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _mean_over_instances(loss, logits)


def self_supervised_instance_loss(
    logits: torch.Tensor, origins: torch.Tensor, fg_prob: torch.Tensor, soft: bool = True
) -> torch.Tensor:
    """L_S, principal <- collaborator (``self_supervised_instance_loss``).

    With m_i = sigmoid(l_i), M_c = ``fg_prob`` detached and read as 0 outside the image, and
    Sigma = sum_j m_j on an unbounded canvas (not detached: the overlap gradient reaches both
    instances)::

        soft: (1/N) sum_i (1/S^2) sum_{p in R_i} (1-M_c) m_i + M_c (1-m_i) + m_i (Sigma - m_i)
        hard: M_c -> 1[M_c > 0.5]; overlap m_i * sum_{j != i} softplus(l_j)  (= -log(1 - m_j))

    Every pixel of the S x S window counts, also outside the image (there M_c = 0 pushes m_i to
    0), as in the reference (pad by S/2 + 2, gather, mean over the patch).

    Args:
        logits: (N, S, S) instance logits.
        origins: (N, 2) long window origins (y0, x0) px.
        fg_prob: (H, W) collaborator foreground probability M_c (detached here).
        soft: True = soft label (after warm-up); False = hard warm-up form.

    Returns:
        0-dim loss.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    m = torch.sigmoid(logits)
    mc = crop_from_image(fg_prob.detach(), origins, logits.shape[-1], 0.0).to(m.dtype)
    if not soft:
        mc = (mc > 0.5).to(m.dtype)
    loss = (1.0 - mc) * m + mc * (1.0 - m)
    if soft:
        loss = loss + m * (window_sum(m, origins) - m)
    else:
        sp = F.softplus(logits)
        loss = loss + m * (window_sum(sp, origins) - sp)
    return _mean_over_instances(loss, logits)


def principal_consistency_ce(
    logits: torch.Tensor, origins: torch.Tensor, fg_prob: torch.Tensor
) -> torch.Tensor:
    """Ablation ``PRINCIPAL_CONSISTENCY: ce`` (Table V); **our reading** (the paper writes the CE
    form only for the collaborator, eq. 5; no reference code):
    ``(1/N) sum_i (1/S^2) sum_{R_i} BCE(l_i, 1[M_c >= 0.5]) + m_i (Sigma - m_i)``, M_c detached,
    0 outside the image, Sigma as in the soft L_S.

    Args:
        logits: (N, S, S); origins: (N, 2) long; fg_prob: (H, W) M_c.

    Returns:
        0-dim loss.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    m = torch.sigmoid(logits)
    mc = crop_from_image(fg_prob.detach(), origins, logits.shape[-1], 0.0)
    target = (mc >= 0.5).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = loss + m * (window_sum(m, origins) - m)
    return _mean_over_instances(loss, logits)


def gaussian_prior(
    origins: torch.Tensor,
    crop_size: int,
    sigma: float,
    points: Optional[torch.Tensor] = None,
    center: str = "crop",
) -> torch.Tensor:
    """Un-normalised Gaussian G_i (peak 1) on each window.

    Args:
        origins: (N, 2) long window origins (y0, x0) px.
        crop_size: S.
        sigma: standard deviation in pixels.
        points: (N, 2) float (y, x) px; needed for ``center="point"``.
        center: "crop" (code: centre at window index (S-1)/2, e.g. 47.5 for S = 96, up to ~4 px
            off the point) or "point" (paper: at the point, pixel-centre distance r + 0.5 - y).

    Returns:
        (1, S, S) for "crop" (the same for every window), (N, S, S) for "point"; float32.
    """
    assert sigma > 0, f"prior sigma must be > 0, got {sigma}"
    ar = torch.arange(crop_size, device=origins.device, dtype=torch.float32)
    if center == "crop":
        dy = (ar - (crop_size - 1) / 2.0)[None, :, None]
        dx = (ar - (crop_size - 1) / 2.0)[None, None, :]
    else:
        assert center == "point", f"unknown prior center {center!r}"
        assert points is not None, "center='point' needs the points"
        pts = points.to(torch.float32)
        dy = (origins[:, 0:1].float() + ar + 0.5 - pts[:, 0:1])[:, :, None]
        dx = (origins[:, 1:2].float() + ar + 0.5 - pts[:, 1:2])[:, None, :]
    return torch.exp(-(dy**2 + dx**2) / (2.0 * sigma * sigma))


def collaborator_segmentation_loss(
    fg_logits: torch.Tensor,
    logits: torch.Tensor,
    origins: torch.Tensor,
    points: torch.Tensor,
    sigma: float,
    pi: float,
    prior_center: str = "crop",
    force_points: bool = True,
    form: str = "linear",
) -> torch.Tensor:
    """L_M, collaborator <- principal (``self_supervised_segmentation_loss``).

    ``M_p = sigmoid(max_i [l_i + pi G_i])`` (max-merge over the windows covering a pixel; logit
    -1e6, i.e. M_p = 0, where none does), then ``M_p := 1`` at pixel (floor(y), floor(x)) of every
    GT point inside the image (the reference uses floor(y + 0.5), spec section 12), detached.
    "linear": ``mean_{H x W} (1 - M_p) M_c + M_p (1 - M_c)``, M_c = sigmoid(fg_logits);
    "ce" (Table V, eq. 5): ``mean BCEWithLogits(fg_logits, 1[M_p >= 0.5])``.
    The instance logits get no gradient (only ``fg_logits`` is in the graph).

    Args:
        fg_logits: (H, W) collaborator foreground logits.
        logits: (N, S, S) instance logits (detached here).
        origins: (N, 2) long window origins (y0, x0) px.
        points: (N', 2) float GT points (y, x) px (N' = N normally).
        sigma, pi: prior width (px) and scale (pi = 0: no prior).
        prior_center: "crop" | "point" (``gaussian_prior``; "point" needs N' = N, aligned).
        force_points: set M_p = 1 at the GT points (code; not in the paper).
        form: "linear" | "ce".

    Returns:
        0-dim loss.
    """
    assert form in ("linear", "ce"), f"unknown L_M form {form!r}"
    height, width = fg_logits.shape
    lg = logits.detach()
    if pi != 0:
        prior = gaussian_prior(origins, lg.shape[-1], sigma, points, prior_center)
        lg = lg + pi * prior.to(lg.dtype)
    merged = paste_max(lg, origins, height, width, fill=-1.0e6)
    mp = torch.sigmoid(merged).detach()
    if force_points and points.shape[0] > 0:
        yx = torch.floor(points.detach()).long()
        ok = (yx[:, 0] >= 0) & (yx[:, 0] < height) & (yx[:, 1] >= 0) & (yx[:, 1] < width)
        yx = yx[ok]
        mp = mp.index_put((yx[:, 0], yx[:, 1]), mp.new_ones(()))
    if form == "ce":
        target = (mp >= 0.5).to(fg_logits.dtype)
        return F.binary_cross_entropy_with_logits(fg_logits, target)
    mc = torch.sigmoid(fg_logits)
    return ((1.0 - mp) * mc + mp * (1.0 - mc)).mean()


def sobel_edges(m: torch.Tensor) -> torch.Tensor:
    """(N, S, S) -> (2, N, S, S) Sobel responses (y, x) with 1-pixel zero padding
    (``lacss.ops.sorbel_edges``; it convolves, we correlate: only the sign differs)."""
    k = m.new_tensor(
        [
            [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
            [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
        ]
    )
    out = F.conv2d(m[:, None], k[:, None], padding=1)
    return out.transpose(0, 1)


def border_loss(
    border_logits: torch.Tensor, logits: torch.Tensor, origins: torch.Tensor
) -> torch.Tensor:
    """L_B, both ways, nothing detached (``self_supervised_edge_loss`` / ``_compute_edge``).

    ``E_i = sqrt(clip((Gy^2 + Gx^2) / 8, 1e-8, 1))`` of m_i = sigmoid(l_i) (so every window pixel
    adds at least 1e-4); ``B_p = tanh(sum_i paste(E_i))`` on the image;
    ``L_B = mean_{H x W} 0.5 (sigmoid(border_logits) - B_p)^2`` (``optax.l2_loss`` has the 1/2).

    Args:
        border_logits: (H, W) collaborator border logits.
        logits: (N, S, S) instance logits.
        origins: (N, 2) long window origins (y0, x0) px.

    Returns:
        0-dim loss.
    """
    height, width = border_logits.shape
    g = sobel_edges(torch.sigmoid(logits))
    edges = torch.sqrt(torch.clamp((g[0] ** 2 + g[1] ** 2) / 8.0, 1e-8, 1.0))
    bp = torch.tanh(paste_sum(edges, origins, height, width))
    loss = 0.5 * (torch.sigmoid(border_logits) - bp) ** 2
    return loss.mean() + logits.sum() * 0.0


def collapse_loss(
    logits: torch.Tensor,
    origins: torch.Tensor,
    height: int,
    width: int,
    delta: float = 0.01,
    form: str = "code",
) -> torch.Tensor:
    """L_MC, anti-collapse term of the principal (``aux_size_loss``).

    a_i = sum of m_i over the window pixels inside the image, clipped to [eps, 1e6] (float32 eps).
    "code": ``delta / N sum_i S / sqrt(a_i)`` (= delta mean_i mean(m_i)^-1/2 with
    mean(m_i) = a_i / S^2); "paper": ``delta / N sum_i 1 / mean(m_i)``, i.e.
    ``delta / N sum_i S^2 / a_i`` (same a_i and clip: our reading of the paper's mean).

    Args:
        logits: (N, S, S) instance logits.
        origins: (N, 2) long window origins (y0, x0) px.
        height, width: image size.
        delta: weight (0.01 in 0.4.4; the April code used 0.02 in warm-up).
        form: "code" | "paper".

    Returns:
        0-dim loss (already multiplied by ``delta``).
    """
    assert form in ("code", "paper"), f"unknown collapse form {form!r}"
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    S = logits.shape[-1]
    inside = inside_mask(origins, S, height, width)
    area = (torch.sigmoid(logits) * inside).sum(dim=(1, 2)).clamp(EPS, 1.0e6)
    per = S / torch.sqrt(area) if form == "code" else S * S / area
    return delta * per.mean()
