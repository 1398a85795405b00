"""MMT-PSM pseudo-labels and losses as pure tensor functions (tested on hand-made tensors).

Notation: V views, R proposals, C foreground classes; class index C (the last) is background,
as in detectron2's box predictor.
"""

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "sharpen",
    "ensemble_views",
    "view_sensitivity",
    "mine_proposals",
    "psm_loss",
    "level_masks",
    "mgd_loss",
]


def sharpen(p: torch.Tensor, t: float) -> torch.Tensor:
    """S(p) = p^(1/t) / sum_c p^(1/t) over the last dim; t < 1 sharpens, t = 1 is the identity.

    Computed as softmax(log(p) / t), which is the same and stable for tiny probabilities.
    """
    assert t > 0, f"sharpening temperature must be > 0, got {t}"
    return torch.softmax(torch.log(p.clamp_min(1e-12)) / t, dim=-1)


def ensemble_views(logits: torch.Tensor, average_logits: bool = False) -> torch.Tensor:
    """Self-ensemble of the teacher's classifier over views.

    Args:
        logits: (V, R, C+1) box-classifier logits of the same R proposals on V views.
        average_logits: False (paper): mean of the V softmax outputs; True (reference code):
            softmax of the mean logits.
    Returns:
        (R, C+1) probabilities.
    """
    assert logits.dim() == 3, f"expected (V, R, C+1) logits, got shape {tuple(logits.shape)}"
    if average_logits:
        return torch.softmax(logits.mean(0), dim=-1)
    return torch.softmax(logits, dim=-1).mean(0)


def view_sensitivity(logits: torch.Tensor, stat: str = "var") -> torch.Tensor:
    """Perturbation sensitivity of each proposal: spread of the softmax outputs across views.

    Args:
        logits: (V, R, C+1).
        stat: "var" (paper): sum over classes of the variance over views (population variance);
            "std_sum" (reference code): sum over classes of the standard deviation over views.
    Returns:
        (R,) sensitivity, larger = more sensitive.
    """
    probs = torch.softmax(logits, dim=-1)
    if stat == "var":
        return probs.var(dim=0, unbiased=False).sum(-1)
    if stat == "std_sum":
        return probs.std(dim=0, unbiased=False).sum(-1)
    raise ValueError(f"MODEL.MMT_PSM.MINING_STAT must be 'var' or 'std_sum', got {stat!r}")


def mine_proposals(
    hard_labels: torch.Tensor, sensitivity: torch.Tensor, bg_index: int, bg_per_fg: float = 1.0
) -> torch.Tensor:
    """Perturbation-sensitive sample mining.

    Keeps every proposal whose hard pseudo-label is foreground (n_fg of them) and the
    ``floor(bg_per_fg * n_fg)`` background proposals with the largest ``sensitivity``.

    Args:
        hard_labels: (R,) int64 argmax of the pseudo-label, ``bg_index`` = background.
        sensitivity: (R,) see :func:`view_sensitivity`.
    Returns:
        (R,) bool mask of the kept proposals.
    """
    assert (
        hard_labels.shape == sensitivity.shape
    ), f"hard_labels {tuple(hard_labels.shape)} and sensitivity {tuple(sensitivity.shape)} differ"
    fg = hard_labels != bg_index
    keep = fg.clone()
    num_bg = min(int(math.floor(bg_per_fg * int(fg.sum()))), int((~fg).sum()))
    if num_bg > 0:
        bg_idx = torch.nonzero(~fg, as_tuple=True)[0]
        top = torch.topk(sensitivity[bg_idx], num_bg).indices
        keep[bg_idx[top]] = True
    return keep


def psm_loss(
    student_logits: torch.Tensor, target: torch.Tensor, bg_weight: float = 1.5
) -> torch.Tensor:
    """Class-balanced soft cross-entropy: mean over proposals of w_r * sum_c -q_rc log p_rc,
    w_r = ``bg_weight`` for proposals whose pseudo-label (argmax of q) is background, else 1
    (the reference code's weighting of the kept negatives).

    Args:
        student_logits: (R, C+1) student classifier logits.
        target: (R, C+1) sharpened teacher probabilities (rows sum to 1), no gradient.
        bg_weight: weight of background proposals; foreground ones weigh 1.
    Returns:
        scalar; 0 (connected to the graph) when R == 0.
    """
    assert (
        student_logits.shape == target.shape
    ), f"student logits {tuple(student_logits.shape)} vs target {tuple(target.shape)}"
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    target = target.detach()
    bg = target.argmax(-1) == target.shape[1] - 1
    weight = torch.where(
        bg,
        torch.full_like(bg, bg_weight, dtype=target.dtype),
        torch.ones_like(bg, dtype=target.dtype),
    )
    ce = -(target * F.log_softmax(student_logits, dim=-1)).sum(-1)
    return (weight * ce).mean()


def level_masks(fg_mask: torch.Tensor, shapes: Sequence[torch.Size]) -> List[torch.Tensor]:
    """Foreground mask of each feature level: a cell is foreground when more than half of the
    input pixels under it are (adaptive average pooling, threshold 0.5, as the reference code).

    Args:
        fg_mask: (N, H, W) bool, at the (padded) input resolution.
        shapes: per level, the (h_l, w_l) of its feature map.
    Returns:
        list of (N, 1, h_l, w_l) float masks in {0, 1}.
    """
    m = fg_mask[:, None].float()
    return [(F.adaptive_avg_pool2d(m, tuple(s)) > 0.5).float() for s in shapes]


MGD_NORMALIZATIONS = ("elements", "positions")


def mgd_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    normalize: str = "elements",
) -> torch.Tensor:
    """Mask-guided feature distillation: squared differences on foreground cells only.

    ``normalize``:
    - "elements" (default; the reference code): per level, the mean over foreground cells and
      channels, sum_{n,i,j} M sum_c (S - T)^2 / (C * sum M), then the mean over levels (a level
      without foreground contributes 0);
    - "positions" (the imitation loss of Wang et al., CVPR 2019, that Eq. 4 follows):
      sum over levels, cells and channels / (2 N_p), N_p = foreground cells of all levels.

    Args:
        student, teacher: per level, (N, C', h_l, w_l) adapted features (teacher: no gradient).
        masks: per level, (N, 1, h_l, w_l) in {0, 1}.
    Returns:
        scalar; 0 (connected to the graph) when no cell is foreground.
    """
    assert len(student) == len(teacher) == len(masks), "one student/teacher/mask per level"
    assert (
        normalize in MGD_NORMALIZATIONS
    ), f"MODEL.MMT_PSM.MGD_NORMALIZE must be one of {MGD_NORMALIZATIONS}, got {normalize!r}"
    sums, counts = [], []
    for s, t, m in zip(student, teacher, masks):
        assert s.shape == t.shape and m.shape[-2:] == s.shape[-2:], (
            f"level shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}, "
            f"mask {tuple(m.shape)}"
        )
        sums.append((((s - t.detach()) ** 2) * m).sum())
        counts.append(float(m.sum()))
    if normalize == "elements":
        per_level = [x / (n * s.shape[1]) if n > 0 else x for x, n, s in zip(sums, counts, student)]
        return torch.stack(per_level).mean()
    total = torch.stack(sums).sum()
    return total / (2.0 * sum(counts)) if sum(counts) > 0 else total
