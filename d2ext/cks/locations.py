"""Point-location ops of the LACSS detector, one image at a time, as pure tensor functions.

Coordinates are LACSS's (y, x) pixels, edge-indexed (pixel (r, c) covers [r, r+1) x [c, c+1)).
Grid cell (i, j) of a level with stride s has its centre at ((i + 0.5) s, (j + 0.5) s) pixels;
the LPN's offsets are (dy, dx) in grid units of that level. Cells are flattened row-major
(index ``i * w + j``).

Reference: ``jiyuuchc/lacss`` tag 0.4.4, ``lacss/ops/locations.py`` (label assignment, matching),
``lacss/ops/nms.py`` (tiled NMS, here an exact greedy one) and ``lacss/modules/detector.py``
(decoding, ``_gen_train_locations``).
"""

from typing import Sequence, Tuple

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = [
    "grid_centers",
    "locations_to_labels",
    "decode_locations",
    "valid_locations",
    "distance_nms",
    "match_train_locations",
    "train_locations",
]

# elements of one (cells x points) distance block in locations_to_labels
_CHUNK_ELEMENTS = 1 << 22


def grid_centers(
    grid_hw: Sequence[int], device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Centres of the cells of an h x w grid, in grid units.

    Returns:
        (h * w, 2): ``(i + 0.5, j + 0.5)`` for cell (i, j), row-major.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    ii = torch.arange(h, device=device, dtype=dtype) + 0.5
    jj = torch.arange(w, device=device, dtype=dtype) + 0.5
    return torch.stack(torch.meshgrid(ii, jj, indexing="ij"), dim=-1).reshape(-1, 2)


def locations_to_labels(
    points: torch.Tensor, grid_hw: Sequence[int], stride: float, roi: float = 8.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LPN targets of one level (``locations_to_labels`` with ``threshold = roi / stride``).

    Every cell takes its nearest point (grid units; ties: the lower point index); it is positive
    iff that distance is < ``roi / stride`` (8 px: 2 cells at stride 4, 1 at 8, 0.5 at 16).

    Args:
        points: (N, 2) float, GT points, (y, x) pixels.
        grid_hw: (h, w) of the level's (padded) grid.
        stride: the level's stride s (pixels per cell).
        roi: ``DETECTION_ROI`` in pixels.

    Returns:
        score_target: (h * w,) float, 1 for positive cells, 0 otherwise.
        offset_target: (h * w, 2) float, ``p / s - c`` (dy, dx grid units) of the nearest point
        (meaningful only on positive cells; all zeros if N == 0).
    """
    assert points.dim() == 2 and points.shape[1] == 2, f"points must be (N, 2), got {points.shape}"
    h, w = int(grid_hw[0]), int(grid_hw[1])
    dtype = points.dtype if points.is_floating_point() else torch.float32
    centers = grid_centers((h, w), device=points.device, dtype=dtype)  # (K, 2)
    if points.shape[0] == 0:
        return centers.new_zeros(h * w), centers.new_zeros(h * w, 2)
    p = points.to(dtype) / stride  # (N, 2)
    thr = roi / stride
    score_target = centers.new_empty(h * w)
    offset_target = centers.new_empty(h * w, 2)
    chunk = max(1, _CHUNK_ELEMENTS // p.shape[0])  # cells per block: bounded (block, N) memory
    for start in range(0, h * w, chunk):
        c = centers[start : start + chunk]
        dist = torch.cdist(c, p, compute_mode="donot_use_mm_for_euclid_dist")  # (B, N), exact
        idx = dist.argmin(dim=1)  # nearest point (first on ties)
        diff = p[idx] - c  # (B, 2)
        best_d2 = (diff * diff).sum(-1)
        score_target[start : start + chunk] = (best_d2 < thr * thr).to(dtype)
        offset_target[start : start + chunk] = diff
    return score_target, offset_target


def decode_locations(offsets: torch.Tensor, grid_hw: Sequence[int], stride: float) -> torch.Tensor:
    """Pixel locations of the LPN's offsets: ``((i + 0.5 + dy) s, (j + 0.5 + dx) s)``.

    Args:
        offsets: (h * w, 2) float, (dy, dx) in grid units, row-major cells.
        grid_hw: (h, w).
        stride: s.

    Returns:
        (h * w, 2) float, (y, x) pixels.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    assert offsets.shape == (h * w, 2), f"offsets {tuple(offsets.shape)} != ({h * w}, 2)"
    centers = grid_centers((h, w), device=offsets.device, dtype=offsets.dtype)
    return (centers + offsets) * stride


def valid_locations(locations: torch.Tensor, grid_hw: Sequence[int], stride: float) -> torch.Tensor:
    """Whether decoded locations lie strictly inside (0, h s) x (0, w s) (the detector's test).

    Args:
        locations: (K, 2) float, (y, x) pixels.
        grid_hw: (h, w) of the (padded) grid the locations were decoded from.
        stride: s.

    Returns:
        (K,) bool.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    y, x = locations[:, 0], locations[:, 1]
    return (y > 0) & (x > 0) & (y < h * stride) & (x < w * stride)


def distance_nms(
    locations: torch.Tensor,
    scores: torch.Tensor,
    min_score: float = 0.0,
    nms_dist: float = 8.0,
    max_output: int = -1,
) -> torch.Tensor:
    """Exact greedy distance NMS.

    Keeps the points with ``score >= min_score``; in descending score order (ties: the lower
    index first) a point is dropped if it lies within ``nms_dist`` (distance <= nms_dist) of an
    already kept point; stops after ``max_output`` kept points. Neighbour pairs come from a
    KD-tree (float64, CPU), so thousands of points cost milliseconds.

    Args:
        locations: (M, 2) float, (y, x) pixels.
        scores: (M,) float.
        min_score: minimum score of a kept point.
        nms_dist: suppression radius in pixels; <= 0 disables the suppression (LACSS then only
            filters by score).
        max_output: at most this many points; <= 0 = no limit.

    Returns:
        (K,) long indices into ``locations``, sorted by descending score, on ``scores``' device.
    """
    assert locations.dim() == 2 and locations.shape[1] == 2, f"locations {locations.shape}"
    assert scores.shape == locations.shape[:1], f"scores {scores.shape} vs {locations.shape}"
    device = scores.device
    cand = torch.nonzero(scores >= min_score, as_tuple=False).squeeze(1)
    if cand.numel() == 0:
        return cand
    order = torch.sort(scores[cand], descending=True, stable=True).indices
    cand = cand[order]  # candidate indices, by descending score
    limit = cand.numel() if max_output <= 0 else min(int(max_output), cand.numel())
    if nms_dist <= 0:
        return cand[:limit]

    pts = locations[cand].detach().to("cpu", torch.float64).numpy()
    m = pts.shape[0]
    pairs = cKDTree(pts).query_pairs(r=float(nms_dist), output_type="ndarray")  # (P, 2), i < j
    # CSR adjacency: for each candidate rank i, the lower-ranked neighbours j > i
    first, second = pairs[:, 0], pairs[:, 1]
    perm = np.argsort(first, kind="stable")
    nbrs = second[perm]
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(first, minlength=m), out=indptr[1:])

    suppressed = np.zeros(m, dtype=bool)
    keep = []
    for i in range(m):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        suppressed[nbrs[indptr[i] : indptr[i + 1]]] = True
    return cand[torch.as_tensor(keep, dtype=torch.long, device=device)]


def match_train_locations(
    pred_locations: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_points: torch.Tensor,
    max_offset: float = 12.0,
) -> torch.Tensor:
    """The prediction that replaces each GT point in ``_gen_train_locations``, or -1.

    Each prediction is matched to its nearest GT point (ties: the lower GT index) if that
    distance is < ``max_offset``; each GT point takes the highest-scoring prediction matched to
    it (ties: the lower prediction index, i.e. the first in a score-sorted list).

    Args:
        pred_locations: (M, 2) float, (y, x) pixels (the detector's kept points).
        pred_scores: (M,) float.
        gt_points: (N, 2) float, (y, x) pixels.
        max_offset: ``MAX_PROPOSAL_OFFSET`` pixels; <= 0: no replacement.

    Returns:
        (N,) long, index into the predictions, -1 where the GT point is kept.
    """
    n, m = gt_points.shape[0], pred_locations.shape[0]
    device = gt_points.device
    matched = torch.full((n,), -1, dtype=torch.long, device=device)
    if max_offset <= 0 or n == 0 or m == 0:
        return matched
    pred = pred_locations.detach().to(device=device, dtype=torch.float32)
    gt = gt_points.detach().to(torch.float32)
    dist = torch.cdist(pred, gt, compute_mode="donot_use_mm_for_euclid_dist")  # (M, N)
    best, nearest = dist.min(dim=1)  # (M,)
    ok = best < max_offset
    if not bool(ok.any()):
        return matched
    # rank of each prediction by descending score (ties: lower index first)
    order = torch.sort(pred_scores.detach().to(device), descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=device)
    best_rank = torch.full((n,), m, dtype=torch.long, device=device)
    best_rank.scatter_reduce_(0, nearest[ok], rank[ok], reduce="amin", include_self=True)
    has = best_rank < m
    matched[has] = order[best_rank[has]]
    return matched


def train_locations(
    pred_locations: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_points: torch.Tensor,
    max_offset: float = 12.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The segmentor's training locations: GT points, some replaced by nearby detections.

    See :func:`match_train_locations` for the matching rule.

    Args:
        pred_locations: (M, 2) float, (y, x) pixels.
        pred_scores: (M,) float.
        gt_points: (N, 2) float, (y, x) pixels.
        max_offset: ``MAX_PROPOSAL_OFFSET`` pixels; <= 0: no replacement.

    Returns:
        locations: (N, 2) float (gt_points' dtype), the replacing prediction or the GT point.
        replaced: (N,) bool.
    """
    matched = match_train_locations(pred_locations, pred_scores, gt_points, max_offset)
    replaced = matched >= 0
    locations = gt_points.clone()
    if bool(replaced.any()):
        locations[replaced] = pred_locations.detach()[matched[replaced]].to(locations)
    return locations, replaced
