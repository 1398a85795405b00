"""MMT-PSM units: pseudo-label and loss functions on hand-made tensors (checked against the
paper's formulas written out independently here), the lambda(t) and EMA schedules and hooks, the
K-view mapper, and the pseudo-labels / unsupervised losses of a tiny ``MMTPSMRCNN`` on CPU.

The model tests use configs/mmt_psm/synthetic_cells_demo.yaml (R-18) shrunk to 112 px inputs
(padded to 128, so the padding of the foreground mask is checked too).
"""

import copy
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from torch import nn

import d2ext  # noqa: F401  (registers the datasets and the meta-architecture)
from d2ext.config import build_cfg
from d2ext.engine.ema import EMATeacherHook, ema_alpha, ema_update_
from d2ext.mmt_psm import MMTPSMRCNN, KViewMapper, UnsupWeightHook, flip_boxes, unsup_weight
from d2ext.mmt_psm.losses import (
    ensemble_views,
    level_masks,
    mgd_loss,
    mine_proposals,
    psm_loss,
    sharpen,
    view_sensitivity,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "mmt_psm" / "synthetic_cells_demo.yaml"
SIZE = 112  # 256 px synthetic images -> 112 px views, padded to 128 by the FPN's divisibility
TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(SIZE),
    "MODEL.MMT_PSM.PROPOSALS_PER_IMAGE", "64",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def _cfg(*extra):
    cfg = build_cfg(CONFIG, TINY + list(extra))
    cfg.freeze()
    return cfg


def _model(cfg=None):
    torch.manual_seed(0)
    model = build_model(cfg if cfg is not None else _cfg())
    assert isinstance(model, MMTPSMRCNN), type(model).__name__
    return model


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- 1. sharpen
def test_sharpen_formula_identity_and_sharpening():
    p = torch.tensor(
        [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05], [1 / 3, 1 / 3, 1 / 3]],
        dtype=torch.float64,
    )
    q = p.numpy() ** 2.0  # t = 0.5: p^(1/t)
    expected = q / q.sum(1, keepdims=True)
    out = sharpen(p, 0.5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(sharpen(p, 1.0), p)
    assert torch.equal(out[:3].argmax(-1), p[:3].argmax(-1)), "sharpening moved the argmax"
    assert (out[:3].max(-1).values > p[:3].max(-1).values).all(), "max prob did not increase"
    torch.testing.assert_close(out[3], p[3])  # uniform stays uniform
    # t = 0.25 by hand: p^4 / sum p^4
    q4 = p.numpy() ** 4.0
    np.testing.assert_allclose(sharpen(p, 0.25).numpy(), q4 / q4.sum(1, keepdims=True), rtol=1e-10)


# ----------------------------------------------------------------------------- 2. ensemble
def test_ensemble_views_mean_of_softmax_vs_softmax_of_mean():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]], [[4.0, 0.0, 0.0], [1.0, 2.0, 0.0]]],
        dtype=torch.float64,
    )  # (V2,R2,3)
    sm = np.exp(logits.numpy())
    sm = sm / sm.sum(-1, keepdims=True)
    paper = sm.mean(0)
    mean_logits = logits.numpy().mean(0)
    code = np.exp(mean_logits) / np.exp(mean_logits).sum(-1, keepdims=True)
    out_paper = ensemble_views(logits, average_logits=False)
    out_code = ensemble_views(logits, average_logits=True)
    np.testing.assert_allclose(out_paper.numpy(), paper, rtol=1e-12)
    np.testing.assert_allclose(out_code.numpy(), code, rtol=1e-12)
    assert (
        abs(out_paper[0, 0].item() - out_code[0, 0].item()) > 0.05
    ), f"the two ensembles should differ on row 0: {out_paper[0]} vs {out_code[0]}"
    # identical views: both ensembles equal that view's softmax
    torch.testing.assert_close(out_paper[1], out_code[1])
    assert out_paper.shape == (2, 3)


# ----------------------------------------------------------------------------- 3. sensitivity
def test_view_sensitivity_var_and_std_sum():
    logits = torch.tensor(
        [
            [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]],
            [[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
        ],
        dtype=torch.float64,
    )  # (3, 2, 3)
    p = np.exp(logits.numpy())
    p = p / p.sum(-1, keepdims=True)
    mean = p.mean(0)
    var = ((p - mean) ** 2).mean(0)  # population variance over the views
    np.testing.assert_allclose(view_sensitivity(logits, "var").numpy(), var.sum(-1), rtol=1e-12)
    np.testing.assert_allclose(
        view_sensitivity(logits, "std_sum").numpy(), np.sqrt(var).sum(-1), rtol=1e-12
    )
    same = logits[:1].expand(4, -1, -1)
    assert torch.allclose(view_sensitivity(same, "var"), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        view_sensitivity(logits, "entropy")


# ----------------------------------------------------------------------------- 4. mining
def test_mine_proposals_keeps_all_fg_and_top_bg():
    bg = 2
    hard = torch.tensor([0, 2, 1, 2, 2, 2, 0, 2])  # fg at 0, 2, 6 (n_fg = 3)
    sens = torch.tensor([0.0, 0.3, 0.0, 0.9, 0.1, 0.5, 0.0, 0.7])  # bg ranks: 3, 7, 5, 1, 4
    keep = mine_proposals(hard, sens, bg_index=bg, bg_per_fg=1.0)
    assert keep.dtype == torch.bool
    assert torch.nonzero(keep).flatten().tolist() == [0, 2, 3, 5, 6, 7], keep
    keep = mine_proposals(hard, sens, bg_index=bg, bg_per_fg=0.5)  # floor(1.5) = 1
    assert torch.nonzero(keep).flatten().tolist() == [0, 2, 3, 6], keep
    # no foreground: nothing kept
    keep = mine_proposals(torch.full((5,), bg), torch.rand(5), bg_index=bg)
    assert not keep.any(), keep
    # fewer background proposals than s: all kept
    keep = mine_proposals(torch.tensor([0, 1, 2, 0]), torch.tensor([0.0, 0.0, 0.01, 0.0]), bg)
    assert keep.all(), keep
    # one fg, bg_per_fg 0.5: floor(0.5) = 0 background proposals
    keep = mine_proposals(torch.tensor([2, 1, 2]), torch.tensor([0.9, 0.0, 0.8]), bg, 0.5)
    assert torch.nonzero(keep).flatten().tolist() == [1], keep
    # fg proposals are kept whatever their sensitivity
    keep = mine_proposals(torch.tensor([2, 0, 2, 2]), torch.tensor([0.2, 0.0, 0.1, 0.3]), bg)
    assert torch.nonzero(keep).flatten().tolist() == [1, 3], keep


# ----------------------------------------------------------------------------- 5. psm loss
def _psm_by_hand(z, q, bg_w):
    """mean_r w_r sum_c -q_rc log softmax(z_r)_c, w_r = bg_w where argmax_c q_rc is the last
    (background) class, else 1."""
    z, q = z.detach().numpy(), q.detach().numpy()
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.where(q.argmax(1) == q.shape[1] - 1, bg_w, 1.0)
    return float((w * -(q * logp).sum(1)).mean())


def test_psm_loss_matches_hand_computation():
    torch.manual_seed(1)
    z = torch.randn(5, 3, dtype=torch.float64)
    q = torch.softmax(torch.randn(5, 3, dtype=torch.float64) * 2, -1)
    hard = q.argmax(-1)
    assert (hard == 2).any() and (hard != 2).any(), f"want fg and bg pseudo-labels: {hard}"
    logp = np.log(np.exp(z.numpy()) / np.exp(z.numpy()).sum(1, keepdims=True))
    ce = -(q.numpy() * logp).sum(1)  # per-proposal soft cross-entropy
    for bg_w in (1.5, 1.0, 3.0):
        w = np.where(hard.numpy() == 2, bg_w, 1.0)  # per proposal, by the pseudo-label
        expected = (w * ce).mean()
        got = psm_loss(z, q, bg_w).item()
        assert got == pytest.approx(expected, rel=1e-10), f"bg_weight {bg_w}: {got} vs {expected}"
        assert got == pytest.approx(_psm_by_hand(z, q, bg_w), rel=1e-10)
    # bg_weight 1: the plain mean soft cross-entropy
    assert psm_loss(z, q, 1.0).item() == pytest.approx(ce.mean(), rel=1e-10)
    # a row with a one-hot background target weighs bg_weight times its plain cross-entropy
    onehot = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    ce0 = -logp[0, 2]
    assert psm_loss(z[:1], onehot, 1.5).item() == pytest.approx(1.5 * ce0, rel=1e-10)
    assert psm_loss(z[:1], onehot, 1.0).item() == pytest.approx(ce0, rel=1e-10)
    # foreground one-hot rows do not depend on the background weight
    fg = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert psm_loss(z[:1], fg, 1.5).item() == pytest.approx(psm_loss(z[:1], fg, 9.0).item())
    # the target gets no gradient
    zz = z.clone().requires_grad_(True)
    qq = q.clone().requires_grad_(True)
    psm_loss(zz, qq).backward()
    assert zz.grad is not None and qq.grad is None


def test_psm_loss_weights_proposals_not_classes():
    """Soft targets: the whole row weighs bg_weight when its argmax is background (fg mass
    included), and 1 when its argmax is foreground (bg mass included); per-class weights
    (torch cross_entropy(weight=...)) weigh only the bg column and give another value."""
    z = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.2, -0.3]], dtype=torch.float64)
    q = torch.tensor(
        [[0.3, 0.1, 0.6], [0.6, 0.1, 0.3]],  # argmax bg, 40 % fg mass  # argmax fg, 30 % bg mass
        dtype=torch.float64,
    )
    logp = torch.log_softmax(z, -1).numpy()
    ce = -(q.numpy() * logp).sum(1)
    bg_w = 1.5
    expected = (bg_w * ce[0] + 1.0 * ce[1]) / 2
    got = psm_loss(z, q, bg_w).item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(_psm_by_hand(z, q, bg_w), rel=1e-12)
    per_class = -(q.numpy() * np.array([1.0, 1.0, bg_w]) * logp).sum(1).mean()
    torch_per_class = torch.nn.functional.cross_entropy(
        z, q, weight=torch.tensor([1.0, 1.0, bg_w], dtype=torch.float64)
    ).item()
    assert torch_per_class == pytest.approx(per_class, rel=1e-12)
    assert abs(got - per_class) > 1e-2, f"the two weightings should differ: {got} {per_class}"
    # row by row: bg-argmax row scales with bg_weight as a whole, fg-argmax row not at all
    assert psm_loss(z[:1], q[:1], 3.0).item() == pytest.approx(3.0 * ce[0], rel=1e-12)
    assert psm_loss(z[1:], q[1:], 3.0).item() == pytest.approx(ce[1], rel=1e-12)
    assert psm_loss(z[1:], q[1:], 3.0).item() == pytest.approx(psm_loss(z[1:], q[1:], 0.5).item())


def test_psm_loss_empty_is_zero_and_connected():
    z = torch.zeros(0, 3, requires_grad=True)
    loss = psm_loss(z, torch.zeros(0, 3))
    assert loss.item() == 0.0 and loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert z.grad is not None and z.grad.shape == (0, 3)


# ----------------------------------------------------------------------------- 6. MGD
def _avg_pool_mask_by_hand(fg, h, w):
    """(N, H, W) bool -> (N, h, w): cell (i, j) covers rows floor(i H / h) .. ceil((i+1) H / h)
    and the same for columns (adaptive pooling bins); fg when > half of its pixels are."""
    n, H, W = fg.shape
    out = torch.zeros(n, h, w)
    for i in range(h):
        r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
        for j in range(w):
            c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
            out[:, i, j] = (fg[:, r0:r1, c0:c1].float().mean((1, 2)) > 0.5).float()
    return out


def test_level_masks_average_pool_more_than_half():
    fg = torch.zeros(3, 8, 8, dtype=torch.bool)
    # image 0, 4x4 level (2x2-pixel cells): full cell, 3/4, exactly 1/2 (not fg: strict), 1/4
    fg[0, 0:2, 0:2] = True
    fg[0, 0:2, 4:6] = True
    fg[0, 1, 5] = False
    fg[0, 4:6, 0] = True
    fg[0, 5, 6] = True
    # image 1: no foreground; image 2: 2x2 level 9/16 (fg) and 8/16 (not), 1x1 level 33/64
    fg[2, 4:8, 4:8] = True
    fg[2, 0:3, 0:3] = True
    fg[2, 0:2, 4:8] = True
    shapes = [torch.Size([4, 4]), torch.Size([2, 2]), torch.Size([1, 1]), torch.Size([3, 3])]
    masks = level_masks(fg, shapes)
    assert [tuple(m.shape) for m in masks] == [
        (3, 1, 4, 4),
        (3, 1, 2, 2),
        (3, 1, 1, 1),
        (3, 1, 3, 3),
    ]
    assert all(m.dtype == torch.float32 for m in masks)
    exp4 = torch.zeros(4, 4)
    exp4[0, 0] = exp4[0, 2] = 1  # 4/4 and 3/4; (2, 0) has 2/4 and (2, 3) 1/4 -> background
    assert torch.equal(masks[0][0, 0], exp4), masks[0][0, 0]
    assert not masks[1][0].any() and not masks[2][0].any(), "image 0: <= 1/4 of each coarse cell"
    assert all(m[1].sum() == 0 for m in masks), "image 1 has no foreground"
    want = torch.tensor(
        [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    )
    assert torch.equal(masks[0][2, 0], want), masks[0][2, 0]
    assert torch.equal(masks[1][2, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]])), masks[1][2, 0]
    assert masks[2][2].item() == 1.0  # 33 of 64 pixels
    fg[2, 7, 7] = False  # 32 of 64: exactly half is background
    assert level_masks(fg, [torch.Size([1, 1])])[0][2].item() == 0.0
    fg[2, 7, 7] = True
    # every level (3x3: overlapping adaptive bins) against the by-hand bins
    for m, s in zip(masks, shapes):
        assert torch.equal(m[:, 0], _avg_pool_mask_by_hand(fg, *s)), s
    # max pooling (any pixel) would differ: image 0's 1x1 cell has foreground pixels
    assert fg[0].any() and masks[2][0].item() == 0.0


def _mgd_by_hand(s, t, m, normalize):
    """'elements': mean over levels of sum M (S-T)^2 / (C sum M) (0 for an empty level);
    'positions': sum over levels of sum M (S-T)^2 / (2 N_p), N_p = foreground cells."""
    sums = [float((((a - b) ** 2) * c).sum()) for a, b, c in zip(s, t, m)]
    cells = [float(c.sum()) for c in m]
    if normalize == "elements":
        per_level = [x / (a.shape[1] * n) if n > 0 else 0.0 for x, n, a in zip(sums, cells, s)]
        return sum(per_level) / len(per_level)
    return sum(sums) / (2.0 * sum(cells)) if sum(cells) > 0 else 0.0


def test_mgd_loss_hand_computed_two_levels():
    s1 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    t1 = torch.zeros(1, 2, 2, 2)
    m1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # cells (0,0), (1,1)
    s2 = torch.tensor([[[[2.0]], [[1.0]]]])  # (1, 2, 1, 1)
    t2 = torch.tensor([[[[1.0]], [[1.0]]]])
    m2 = torch.ones(1, 1, 1, 1)
    # level 1: cell (0,0) -> 1^2 + 0^2 = 1; cell (1,1) -> 4^2 + 0^2 = 16 (sum 17, 2 cells);
    # level 2: 1^2 + 0^2 = 1 (1 cell); C = 2 channels
    # "elements": (17 / (2 * 2) + 1 / (2 * 1)) / 2 levels = (4.25 + 0.5) / 2 = 2.375
    loss = mgd_loss([s1, s2], [t1, t2], [m1, m2])
    assert loss.item() == pytest.approx(2.375), loss
    assert mgd_loss([s1, s2], [t1, t2], [m1, m2], "elements").item() == pytest.approx(2.375)
    # "positions": N_p = 2 + 1 = 3 -> 18 / (2 * 3) = 3
    assert mgd_loss([s1, s2], [t1, t2], [m1, m2], "positions").item() == pytest.approx(3.0)
    # one level only: 17 / (2 channels * 2 cells) and 17 / (2 * 2 cells) (equal as C = 2)
    assert mgd_loss([s1], [t1], [m1]).item() == pytest.approx(17 / 4)
    assert mgd_loss([s1], [t1], [m1], "positions").item() == pytest.approx(17 / 4)
    # a level without foreground contributes 0 but still counts in the mean over levels
    empty = torch.zeros(1, 1, 1, 1)
    assert mgd_loss([s1, s2], [t1, t2], [m1, empty]).item() == pytest.approx(4.25 / 2)
    assert mgd_loss([s1, s2], [t1, t2], [m1, empty], "positions").item() == pytest.approx(17 / 4)
    # three channels: "elements" divides by C, "positions" by 2
    s3, t3 = torch.tensor([[[[3.0]], [[1.0]], [[2.0]]]]), torch.zeros(1, 3, 1, 1)  # 9 + 1 + 4
    assert mgd_loss([s3], [t3], [m2]).item() == pytest.approx(14 / 3)
    assert mgd_loss([s3], [t3], [m2], "positions").item() == pytest.approx(14 / 2)
    for mode in ("elements", "positions"):
        for case in ([s1, s2], [t1, t2], [m1, m2]), ([s1, s2], [t1, t2], [m1, empty]):
            assert mgd_loss(*case, mode).item() == pytest.approx(_mgd_by_hand(*case, mode))
    with pytest.raises(AssertionError):
        mgd_loss([s1], [t1], [m1], "cells")


def test_mgd_loss_ignores_background_cells():
    torch.manual_seed(2)
    s = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    t = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    m = [(torch.rand(2, 1, 6, 6) > 0.5).float(), (torch.rand(2, 1, 3, 3) > 0.5).float()]
    m[1][0, 0, 1, 1] = 0.0
    m[1][1, 0, 2, 0] = 1.0
    for mode in ("elements", "positions"):
        base = mgd_loss(s, t, m, mode).item()
        s_bg = [x.clone() for x in s]
        s_bg[1][0, :, 1, 1] += 100.0  # a background cell
        s_bg[0] = s_bg[0] + 50.0 * (1 - m[0])  # every background cell of level 0
        assert mgd_loss(s_bg, t, m, mode).item() == pytest.approx(base, rel=1e-6), mode
        s_fg = [x.clone() for x in s]
        s_fg[1][1, :, 2, 0] += 1.0  # a foreground cell
        assert mgd_loss(s_fg, t, m, mode).item() != pytest.approx(base, rel=1e-6), mode
        # by hand over both images and all levels
        assert base == pytest.approx(_mgd_by_hand(s, t, m, mode), rel=1e-6), mode
    num = [float((((a - b) ** 2) * c).sum()) for a, b, c in zip(s, t, m)]
    den = [4 * float(c.sum()) for c in m]
    elements = (num[0] / den[0] + num[1] / den[1]) / 2  # C = 4 channels, 2 levels
    assert mgd_loss(s, t, m).item() == pytest.approx(elements, rel=1e-6)
    assert mgd_loss(s, t, m, "positions").item() == pytest.approx(
        sum(num) / (2.0 * sum(float(c.sum()) for c in m)), rel=1e-6
    )


def test_mgd_loss_zero_mask_and_gradients():
    torch.manual_seed(3)
    s = [torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 3, 2, 2, requires_grad=True)]
    t = [torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 3, 2, 2, requires_grad=True)]
    zero = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    for mode in ("elements", "positions"):
        loss = mgd_loss(s, t, zero, mode)
        assert loss.item() == 0.0 and loss.requires_grad and loss.dim() == 0, mode
        loss.backward()
        assert all(x.grad is not None and not x.grad.any() for x in s), mode
        for x in s:
            x.grad = None
    m = [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2)]
    m[0][0, 0, 0, 3] = 1.0
    n_cells, c, n_levels = [1, 4], 3, 2
    mgd_loss(s, t, m, "elements").backward()
    for a, b, mk, n in zip(s, t, m, n_cells):  # d/ds = 2 m (s - t) / (C N_l L)
        torch.testing.assert_close(a.grad, (2 * mk * (a - b) / (c * n * n_levels)).detach())
        a.grad = None
    # an empty level: no gradient there, the other level still divided by L = 2
    mgd_loss(s, t, [zero[0], m[1]], "elements").backward()
    assert not s[0].grad.any()
    torch.testing.assert_close(s[1].grad, (2 * m[1] * (s[1] - t[1]) / (c * 4 * 2)).detach())
    for a in s:
        a.grad = None
    mgd_loss(s, t, m, "positions").backward()
    n_p = 1 + 4
    for a, b, mk in zip(s, t, m):  # d/ds = m (s - t) / N_p
        torch.testing.assert_close(a.grad, (mk * (a - b) / n_p).detach())
    assert all(b.grad is None for b in t), "the teacher features got a gradient"


# ----------------------------------------------------------------------------- 7. lambda(t)
def _paper_lambda(t, T):
    if t < 1000:
        return 0.0
    w = 1.0
    if t < 1250:
        w = math.exp(-125.0 * (1.0 - t / 1250.0) ** 2)
    if t > T - 250:
        w = min(w, math.exp(-12.0 * (1.0 - (T - t) / 250.0) ** 2))
    return w


def test_unsup_weight_paper_values():
    T = 8000
    hand = {
        0: 0.0,
        999: 0.0,
        1000: math.exp(-5.0),
        1125: math.exp(-125 * 0.01),
        1249: math.exp(-125 * (1 / 1250) ** 2),
        1250: 1.0,
        4000: 1.0,
        T - 250: 1.0,
        T - 125: math.exp(-3.0),
        T - 1: math.exp(-12 * (249 / 250) ** 2),
    }
    for t, v in hand.items():
        got = unsup_weight(t, T)
        assert got == pytest.approx(v, rel=1e-12, abs=1e-15), f"lambda({t}) = {got}, want {v}"
        assert got == pytest.approx(_paper_lambda(t, T), rel=1e-12, abs=1e-15)
    ts = list(range(0, T))
    ws = [unsup_weight(t, T) for t in ts]
    assert all(0.0 <= w <= 1.0 for w in ws)
    assert all(a <= b for a, b in zip(ws[:1250], ws[1:1251])), "ramp-up not monotone"
    assert all(a >= b for a, b in zip(ws[T - 251 :], ws[T - 250 :])), "ramp-down not monotone"


def test_unsup_weight_overlapping_ramps_take_the_min():
    T = 1300  # ramp-down starts at 1050, inside the ramp-up
    for t in (1000, 1049, 1051, 1100, 1200, 1240, 1249, 1260, 1299):
        got = unsup_weight(t, T)
        assert got == pytest.approx(_paper_lambda(t, T), rel=1e-12), f"t={t}: {got}"
    up = math.exp(-125 * (1 - 1100 / 1250) ** 2)
    down = math.exp(-12 * (1 - 200 / 250) ** 2)
    assert unsup_weight(1100, T) == pytest.approx(min(up, down)) and up < down
    up = math.exp(-125 * (1 - 1240 / 1250) ** 2)
    down = math.exp(-12 * (1 - 60 / 250) ** 2)
    assert unsup_weight(1240, T) == pytest.approx(min(up, down)) and down < up
    # demo config values (burn-in 20, ramps 5, 40 iterations)
    assert unsup_weight(19, 40, 20, 5, 5) == 0.0
    assert unsup_weight(20, 40, 20, 5, 5) == pytest.approx(math.exp(-5.0))
    assert unsup_weight(25, 40, 20, 5, 5) == 1.0


def test_unsup_weight_hook_sets_model_weight():
    cfg = _cfg()
    model = SimpleNamespace(unsup_weight=-1.0)
    hook = UnsupWeightHook(cfg)
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(iter=22, model=model, storage=storage)
        hook.before_step()
        assert model.unsup_weight == pytest.approx(math.exp(-5.0 * (1 - 2 / 5) ** 2))
        assert storage.history("mmt_psm/lambda").latest() == pytest.approx(model.unsup_weight)
        hook.trainer.iter = 3
        hook.before_step()
        assert model.unsup_weight == 0.0


# ----------------------------------------------------------------------------- 8. EMA
def test_ema_alpha_schedule():
    expected = {
        989: -1.0,
        990: 0.0,
        991: 0.0,
        992: 0.5,
        1090: 0.99,
        5000: 0.99,
        993: 2 / 3,
        1089: 1 - 1 / 99,
        1080: 1 - 1 / 90,
    }
    for t, v in expected.items():
        got = ema_alpha(t, 990, 0.99)
        assert got == pytest.approx(v, rel=1e-12), f"alpha({t}) = {got}, want {v}"
    for k, v in {0: 0.0, 1: 0.5, 99: 0.99, 1000: 0.99, 49: 0.98, 2: 2 / 3}.items():
        assert ema_alpha(k, -1, 0.99) == pytest.approx(min(1 - 1 / (k + 1), 0.99), rel=1e-12)
        assert ema_alpha(k, -1, 0.99) == pytest.approx(v, rel=1e-12)
    assert ema_alpha(1100, 990, 0.999) == pytest.approx(1 - 1 / 110)  # below the cap
    assert ema_alpha(5000, 990, 0.999) == pytest.approx(0.999)


def _bn_net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_update_parameters_and_buffers():
    torch.manual_seed(4)
    teacher, student = _bn_net(), _bn_net()
    for net in (teacher, student):
        net.train()
        net(torch.randn(8, 3))  # running stats and num_batches_tracked move
    student(torch.randn(8, 3))
    student(torch.randn(8, 3))
    t0, s0 = _params(teacher), _params(student)
    assert int(s0["1.num_batches_tracked"]) == 3 and int(t0["1.num_batches_tracked"]) == 1
    alpha = 0.25
    ema_update_(teacher, student, alpha)
    t1 = _params(teacher)
    for k in t0:
        if k.endswith("num_batches_tracked"):
            assert torch.equal(t1[k], s0[k]), f"{k} not copied: {t1[k]} vs {s0[k]}"
            assert t1[k].dtype == torch.int64
        else:
            torch.testing.assert_close(t1[k], alpha * t0[k] + (1 - alpha) * s0[k], msg=k)
    assert torch.equal(_params(student)["0.weight"], s0["0.weight"]), "student changed"
    assert all(p.requires_grad for p in teacher.parameters()), "requires_grad changed"
    # alpha = 0: exact copy
    teacher2 = _bn_net()
    ema_update_(teacher2, student, 0.0)
    for k, v in _params(teacher2).items():
        assert torch.equal(v, s0[k]), k


# ----------------------------------------------------------------------------- 9. EMA hook
def _student_params(model):
    return {
        f"{name}.{k}": v.detach().clone()
        for name, (student, _) in zip(("b", "p", "r", "a"), model.ema_pairs())
        for k, v in student.state_dict().items()
    }


def _teacher_params(model):
    return {
        f"{name}.{k}": v.detach().clone()
        for name, (_, teacher) in zip(("b", "p", "r", "a"), model.ema_pairs())
        for k, v in teacher.state_dict().items()
    }


def test_ema_teacher_hook_on_model():
    model = _model()
    start = 19
    hook = EMATeacherHook(start_iter=start, max_alpha=0.99)
    assert not bool(model.teacher_ready) and model.evaluated_model() == "student"
    assert not model.teacher.training and all(
        not p.requires_grad for p in model.teacher.parameters()
    )
    with torch.no_grad():  # make the student differ from the teacher (deep-copied at init)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    teacher0 = _teacher_params(model)
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(iter=start - 1, model=model, storage=storage)
        hook.after_step()  # before the start: nothing
        after = _teacher_params(model)
        assert all(torch.equal(after[k], teacher0[k]) for k in teacher0), "updated too early"
        assert not bool(model.teacher_ready)

        hook.trainer.iter = start  # copy
        hook.after_step()
        student = _student_params(model)
        teacher = _teacher_params(model)
        assert teacher.keys() == student.keys() and any(k.startswith("a.") for k in teacher)
        assert all(torch.equal(teacher[k], student[k]) for k in student), "not copied"
        assert bool(model.teacher_ready) and model.evaluated_model() == "teacher"
        assert storage.history("mmt_psm/ema_alpha").latest() == 0.0

        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(1.5).add_(0.01)
        new = _student_params(model)
        hook.trainer.iter = start + 3  # alpha = 1 - 1/3
        hook.after_step()
        alpha = 2 / 3
        assert storage.history("mmt_psm/ema_alpha").latest() == pytest.approx(alpha)
        got = _teacher_params(model)
        for k in got:
            torch.testing.assert_close(got[k], alpha * teacher[k] + (1 - alpha) * new[k], msg=k)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    model.train()
    assert model.training and model.backbone.training and model.roi_heads.training
    assert not any(m.training for m in model.teacher.modules()), "teacher left eval mode"
    model.eval()
    assert not model.training and not model.teacher.training
    model.train()
    assert not any(m.training for m in model.teacher.modules())
    # the student state-dict keys are a plain Mask R-CNN's; the teacher's are under "teacher."
    keys = model.state_dict().keys()
    assert "teacher_ready" in keys and any(k.startswith("teacher.mgd_adapters.") for k in keys)


# ----------------------------------------------------------------------------- 10. K views
@pytest.fixture(scope="module")
def unlabeled_dicts():
    dicts = DatasetCatalog.get("synthetic_cells_unlabeled")
    assert len(dicts) >= 2 and all("annotations" not in d for d in dicts[:2])
    return [dict(d, annotations=[{"bbox": [0, 0, 1, 1]}]) for d in dicts[:2]]


def test_kview_mapper_views(unlabeled_dicts):
    torch.manual_seed(5)
    np.random.seed(5)  # the shared random flip is detectron2's (numpy) RandomFlip
    mapper = KViewMapper(_cfg())
    assert mapper.num_views() == 4
    d = mapper(unlabeled_dicts[0])
    assert "annotations" not in d and "annotations" in unlabeled_dicts[0], "input was mutated?"
    img = d["image"]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, SIZE, SIZE), img.shape
    tv, sv = d["teacher_views"], d["student_views"]
    assert tuple(tv.shape) == (4, 3, SIZE, SIZE) and tv.dtype == torch.uint8, tv.shape
    assert tuple(sv.shape) == (1, 3, SIZE, SIZE) and sv.dtype == torch.uint8, sv.shape
    assert d["teacher_flips"] == [False, False, True, True]
    assert d["student_flips"] == [False]
    assert torch.equal(tv[2], tv[0].flip(-1)) and torch.equal(tv[3], tv[1].flip(-1))
    assert not torch.equal(tv[0], tv[1]), "the two colour views should differ"
    assert d["file_name"] == unlabeled_dicts[0]["file_name"]


def _resized_file(cfg, dataset_dict):
    """The unlabeled image read and resized as KViewMapper does, before its random flip."""
    image = read_image(dataset_dict["file_name"], format=cfg.INPUT.FORMAT)
    aug_input = T.AugInput(image)
    T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    )(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))


@pytest.mark.parametrize(
    "no_erase", [("MODEL.MMT_PSM.ERASE_PROB", "0.0"), ("MODEL.MMT_PSM.ERASE_MAX_PATCHES", "0")]
)
def test_kview_mapper_without_noise_is_the_image(unlabeled_dicts, no_erase):
    """No jitter and no erasing: teacher view v is ``image`` (flipped when teacher_flips[v]),
    the student view is ``image``; ``image`` itself is the file, resized, and flipped for about
    half of the draws (one flip shared by every view)."""
    cfg = _cfg(
        *no_erase,
        "MODEL.MMT_PSM.BRIGHTNESS",
        "0.0",
        "MODEL.MMT_PSM.CONTRAST",
        "0.0",
        "MODEL.MMT_PSM.HUE",
        "0.0",
    )
    mapper = KViewMapper(cfg)
    raw = _resized_file(cfg, unlabeled_dicts[1])
    assert tuple(raw.shape) == (3, SIZE, SIZE) and raw.dtype == torch.uint8
    assert not torch.equal(raw, raw.flip(-1)), "symmetric image: flips cannot be told apart"
    image_flips = []
    for seed in range(8):
        torch.manual_seed(seed)
        np.random.seed(seed)  # detectron2's augmentations draw from numpy
        d = mapper(unlabeled_dicts[1])
        img, tv, sv = d["image"], d["teacher_views"], d["student_views"]
        assert img.float().std() > 0, "blank image"
        assert d["teacher_flips"] == [False, False, True, True]
        assert d["student_flips"] == [False], "student views are never flipped"
        for v in range(4):
            want = img.flip(-1) if d["teacher_flips"][v] else img
            assert torch.equal(tv[v], want), f"teacher view {v} is not the (flipped) image"
        assert sv.shape[0] == 1 and torch.equal(sv[0], img), "student view"
        assert torch.equal(img, raw) or torch.equal(img, raw.flip(-1)), "image is not the file"
        image_flips.append(torch.equal(img, raw.flip(-1)))
    assert set(image_flips) == {False, True}, f"image flips over 8 seeds: {image_flips}"
    # no teacher flip: K teacher views, none flipped, and the student is never flipped
    cfg = _cfg("MODEL.MMT_PSM.TEACHER_VIEW_FLIP", "False", "MODEL.MMT_PSM.NUM_TEACHER_VIEWS", "3")
    d = KViewMapper(cfg)(unlabeled_dicts[1])
    assert d["teacher_views"].shape[0] == 3 and d["teacher_flips"] == [False] * 3
    assert d["student_flips"] == [False]


def _components(changed):
    """4-connected components of a (H, W) bool array, as lists of (row, col)."""
    seen = np.zeros_like(changed)
    comps = []
    for y0, x0 in zip(*np.nonzero(changed)):
        if seen[y0, x0]:
            continue
        stack, comp = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if (
                    0 <= yy < changed.shape[0]
                    and 0 <= xx < changed.shape[1]
                    and changed[yy, xx]
                    and not seen[yy, xx]
                ):
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        comps.append(comp)
    return comps


def test_kview_mapper_erase_patches():
    """erase(): ERASE_PROB 1 -> up to ERASE_MAX_PATCHES rectangles of noise, each of an area
    fraction in ERASE_AREA (rounding slack), the input untouched; ERASE_PROB 0 -> no change."""
    h, w, area, ratio, max_patches = 150, 200, (0.002, 0.006), (0.5, 2.0), 4
    kw = dict(
        augmentations=[],
        image_format="BGR",
        erase_max_patches=max_patches,
        erase_area=area,
        erase_ratio=ratio,
    )
    image = torch.full((3, h, w), 7, dtype=torch.uint8)
    mapper = KViewMapper(erase_prob=1.0, **kw)
    counts = []
    for seed in range(6):
        torch.manual_seed(seed)
        out = mapper.erase(image)
        assert torch.equal(image, torch.full((3, h, w), 7, dtype=torch.uint8)), "input modified"
        assert out.dtype == torch.uint8 and out.shape == image.shape
        changed = (out != image).any(0).numpy()
        comps = _components(changed)
        counts.append(len(comps))
        assert len(comps) <= max_patches, f"seed {seed}: {len(comps)} patches"
        for comp in comps:
            ys, xs = np.array(comp).T
            ph, pw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert ph * pw == len(comp), f"seed {seed}: a changed region is not a rectangle"
            frac = ph * pw / (h * w)
            assert area[0] * 0.7 <= frac <= area[1] * 1.3, f"seed {seed}: area fraction {frac}"
            patch = out[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].float()
            assert patch.std() > 40, "patch is not uniform noise"
    assert counts[0] > 0, "seed 0 erased nothing"
    assert len(set(counts)) > 1, f"the number of patches should vary: {counts}"
    # ERASE_PROB 0: nothing changes, however many attempts are drawn
    mapper = KViewMapper(erase_prob=0.0, **kw)
    for seed in range(4):
        torch.manual_seed(seed)
        assert torch.equal(mapper.erase(image), image)


# ----------------------------------------------------------------------------- 11. model
@pytest.fixture(scope="module")
def mapped(unlabeled_dicts):
    torch.manual_seed(6)
    np.random.seed(6)
    mapper = KViewMapper(_cfg())
    return [mapper(d) for d in unlabeled_dicts]


def _force_foreground(teacher):
    with torch.no_grad():
        teacher.roi_heads.box_predictor.cls_score.bias[0] += 8.0
        teacher.roi_heads.mask_head.predictor.bias += 5.0


@pytest.fixture(scope="module")
def fg_model():
    model = _model()
    _force_foreground(model.teacher)
    model.train()
    return model


def test_teacher_pseudo_labels(fg_model, mapped):
    model = fg_model
    with EventStorage(0):
        pseudo, features, images = model.teacher_pseudo_labels(mapped)
    assert len(pseudo) == 2
    assert tuple(images.tensor.shape) == (8, 3, 128, 128), images.tensor.shape
    assert all(v.shape[0] == 8 for v in features.values()), "features of N * V_t views"
    for i, pl in enumerate(pseudo):
        r = len(pl.proposals)
        assert 0 < r <= 64, f"image {i}: {r} proposals"
        assert tuple(pl.view_logits.shape) == (4, r, 3)
        assert tuple(pl.target.shape) == (r, 3)
        torch.testing.assert_close(pl.target.sum(-1), torch.ones(r))
        torch.testing.assert_close(pl.target, sharpen(ensemble_views(pl.view_logits), 0.5))
        assert torch.equal(pl.hard, pl.target.argmax(-1))
        assert (pl.hard != 2).any(), "forced-foreground teacher gave no foreground"
        sens = view_sensitivity(pl.view_logits, "var")
        assert torch.equal(pl.mined, mine_proposals(pl.hard, sens, 2, 1.0))
        assert pl.mined.sum() >= (pl.hard != 2).sum()
        assert pl.image_size == (SIZE, SIZE)
        assert tuple(pl.fg_mask.shape) == (128, 128) and pl.fg_mask.dtype == torch.bool
        assert pl.fg_mask.any(), f"image {i}: empty foreground mask"
        assert not pl.fg_mask[SIZE:].any() and not pl.fg_mask[:, SIZE:].any(), "fg in padding"
        assert len(pl.detections) > 0 and (pl.detections.scores >= 0.5).all()
        assert not pl.target.requires_grad and not pl.view_logits.requires_grad
        # proposals are in view-0 coordinates, inside the unpadded image
        b = pl.proposals.tensor
        assert (b[:, 2] <= SIZE + 1e-3).all() and (b[:, 0] >= 0).all()


def _box_logits_by_hand(model, roi_heads, views, boxes):
    """Class logits of ``roi_heads`` for ``boxes`` (one Boxes per view) on ``views`` alone."""
    images = model.preprocess_image([{"image": v} for v in views])
    backbone = model.backbone if roi_heads is model.roi_heads else model.teacher.backbone
    features = backbone(images.tensor)
    x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
    return roi_heads.box_predictor(roi_heads.box_head(x))[0], features


def test_teacher_view_logits_use_flipped_proposals(fg_model, mapped):
    """view_logits[v] of image 1 = teacher logits of that view alone, on the view-0 proposals
    mirrored (x -> w - x) for the flipped views 2, 3."""
    model = fg_model
    with torch.no_grad(), EventStorage(0):
        pseudo, _, _ = model.teacher_pseudo_labels(mapped)
        pl = pseudo[1]
        b = pl.proposals.tensor
        mirrored = Boxes(torch.stack([SIZE - b[:, 2], b[:, 1], SIZE - b[:, 0], b[:, 3]], 1))
        boxes = [mirrored if f else pl.proposals for f in mapped[1]["teacher_flips"]]
        logits, _ = _box_logits_by_hand(
            model, model.teacher.roi_heads, list(mapped[1]["teacher_views"]), boxes
        )
    want = logits.view(4, len(b), 3)
    torch.testing.assert_close(pl.view_logits, want, atol=1e-4, rtol=1e-4)
    unflipped = _box_logits_by_hand(
        model, model.teacher.roi_heads, list(mapped[1]["teacher_views"][2:3]), [pl.proposals]
    )[0]
    assert (unflipped - pl.view_logits[2]).abs().max() > 1e-3, "flip makes no difference?"


def test_unsupervised_losses_by_hand_for_flipped_students(fg_model, mapped):
    """Flipped student views: L_psm on the mirrored proposals, L_mgd against teacher view 2 of
    each image (indices 2 and 6) under the mirrored foreground mask (a left band here)."""
    model = fg_model
    band = 40
    with EventStorage(0):
        pseudo, t_feats, t_images = model.teacher_pseudo_labels(mapped)
        for pl in pseudo:
            pl.fg_mask = torch.zeros_like(pl.fg_mask)
            pl.fg_mask[:SIZE, :band] = True
        model.teacher_pseudo_labels = lambda unlabeled: (pseudo, t_feats, t_images)
        try:
            unl = [
                dict(d, student_views=d["teacher_views"][3:4], student_flips=[True]) for d in mapped
            ]
            losses = model.unsupervised_losses(unl)
        finally:
            del model.teacher_pseudo_labels  # back to the method
        views = [d["teacher_views"][3] for d in mapped]
        boxes = []
        for pl in pseudo:
            b = pl.proposals.tensor
            boxes.append(Boxes(torch.stack([SIZE - b[:, 2], b[:, 1], SIZE - b[:, 0], b[:, 3]], 1)))
        logits, feats = _box_logits_by_hand(model, model.roi_heads, views, boxes)
        logits = logits.split([len(b) for b in boxes])
        psm = psm_loss(
            torch.cat([lg[pl.mined] for lg, pl in zip(logits, pseudo)]),
            torch.cat([pl.target[pl.mined] for pl in pseudo]),
            1.5,
        )
        assert losses["loss_psm"].item() == pytest.approx(psm.item(), rel=1e-4)

        fg = torch.zeros(2, 128, 128, dtype=torch.bool)
        fg[:, :SIZE, SIZE - band : SIZE] = True  # the band mirrored inside the 112 px image
        student = [model.mgd_adapters[f](feats[f]) for f in model.mgd_in_features]
        teacher = [model.teacher.mgd_adapters[f](t_feats[f][[2, 6]]) for f in model.mgd_in_features]
        shapes = [x.shape[-2:] for x in student]
        mgd = 5.0 * mgd_loss(student, teacher, level_masks(fg, shapes))
        assert losses["loss_mgd"].item() == pytest.approx(mgd.item(), rel=1e-4)
        unmirrored = fg.flip(-1).roll(SIZE - 128, -1)  # the band where it is on view 0
        assert unmirrored[0, 0, :band].all() and unmirrored.sum() == fg.sum()
        wrong = 5.0 * mgd_loss(student, teacher, level_masks(unmirrored, shapes))
        assert wrong.item() != pytest.approx(mgd.item(), rel=1e-3), "test cannot tell the masks"


def test_teacher_pseudo_labels_code_variants(fg_model, mapped):
    model = fg_model
    model.average_logits, model.mining_stat, model.bg_per_fg = True, "std_sum", 0.5
    try:
        with EventStorage(0):
            pseudo, _, _ = model.teacher_pseudo_labels(mapped)
    finally:
        model.average_logits, model.mining_stat, model.bg_per_fg = False, "var", 1.0
    for pl in pseudo:
        want = sharpen(ensemble_views(pl.view_logits, average_logits=True), 0.5)
        torch.testing.assert_close(pl.target, want)
        sens = view_sensitivity(pl.view_logits, "std_sum")
        assert torch.equal(pl.mined, mine_proposals(pl.hard, sens, 2, 0.5))


def test_mining_on_an_untrained_teacher(fg_model, mapped):
    """Without the forced foreground the untrained teacher mixes fg and bg hard labels: mining
    keeps every fg proposal and exactly min(floor(bg_per_fg n_fg), n_bg) bg ones."""
    model = fg_model
    bias = model.teacher.roi_heads.box_predictor.cls_score.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.zero_()
        with EventStorage(0):
            for bg_per_fg in (1.0, 0.5):
                model.bg_per_fg = bg_per_fg
                pseudo, _, _ = model.teacher_pseudo_labels(mapped)
                for pl in pseudo:
                    fg = pl.hard != 2
                    n_fg, n_bg = int(fg.sum()), int((~fg).sum())
                    assert n_fg > 0 and n_bg > 0, f"hard labels not mixed: {n_fg} fg, {n_bg} bg"
                    assert pl.mined[fg].all(), "a foreground proposal was dropped"
                    n_keep = min(math.floor(bg_per_fg * n_fg), n_bg)
                    assert int(pl.mined[~fg].sum()) == n_keep, (bg_per_fg, n_fg, n_bg)
                    sens = view_sensitivity(pl.view_logits, "var")
                    if 0 < n_keep < n_bg:  # the kept bg are the most sensitive ones
                        assert sens[~fg & pl.mined].min() >= sens[~fg & ~pl.mined].max()
    finally:
        with torch.no_grad():
            bias.copy_(saved)
        model.bg_per_fg = 1.0


def test_unsupervised_losses_and_gradients(fg_model, mapped):
    model = fg_model
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        losses = model.unsupervised_losses(mapped)
    assert set(losses) == {"loss_psm", "loss_mgd"}, losses.keys()
    for k, v in losses.items():
        assert v.dim() == 0 and math.isfinite(v.item()) and v.item() > 0, f"{k} = {v}"
    sum(losses.values()).backward()
    for f, conv in model.mgd_adapters.items():
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, f"adapter {f}"
    cls = model.roi_heads.box_predictor.cls_score.weight
    assert cls.grad is not None and cls.grad.abs().sum() > 0, "L_psm gave no gradient"
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads)
    assert all(p.grad is None for p in model.teacher.parameters()), "teacher got gradients"
    # the RPN and mask head of the student are not part of the unsupervised losses
    assert all(p.grad is None for p in model.roi_heads.mask_head.parameters())
    model.zero_grad(set_to_none=True)


def test_ablation_switches(fg_model, mapped):
    model = fg_model
    try:
        with EventStorage(0):
            model.use_psm = False
            assert set(model.unsupervised_losses(mapped)) == {"loss_mgd"}
            model.use_psm, model.use_mgd = True, False
            assert set(model.unsupervised_losses(mapped)) == {"loss_psm"}
            model.sample_mining = False
            pseudo, _, _ = model.teacher_pseudo_labels(mapped)
            assert all(pl.mined.all() for pl in pseudo), "sample_mining=False must keep all"
    finally:
        model.use_psm, model.use_mgd, model.sample_mining = True, True, True


def test_forward_weights_unsupervised_losses(fg_model, mapped):
    """Training forward: lambda multiplies both losses; lambda = 0 or no unlabeled batch skips."""
    model = fg_model
    labeled = [
        DatasetMapper(_cfg(), is_train=True)(d)
        for d in DatasetCatalog.get("synthetic_cells_train")[:1]
    ]
    try:
        with EventStorage(0):
            model.unsup_weight = 0.0
            keys = set(model((labeled, mapped)))
            assert "loss_psm" not in keys and "loss_mgd" not in keys and "loss_cls" in keys
            assert "loss_psm" not in set(model((labeled, None)))
            assert "loss_psm" not in set(model(labeled))
            model.unsup_weight = 0.25
            torch.manual_seed(7)
            losses = model((labeled, mapped))
            unweighted = model.unsupervised_losses(mapped)
    finally:
        model.unsup_weight = 0.0
    assert {"loss_psm", "loss_mgd", "loss_cls", "loss_mask", "loss_rpn_cls"} <= set(losses)
    for k in ("loss_psm", "loss_mgd"):  # the teacher and student views are deterministic
        assert losses[k].item() == pytest.approx(0.25 * unweighted[k].item(), rel=1e-4), k


@pytest.fixture(scope="module")
def twin_model(fg_model):
    """fg_model with the student set to the (forced-foreground) teacher."""
    model = copy.deepcopy(fg_model)
    for student, teacher in model.ema_pairs():
        ema_update_(student, teacher, 0.0)
    model.train()
    return model


def test_student_equal_to_teacher_on_teacher_view_gives_zero_mgd(twin_model, mapped):
    """Student == teacher, student view == a teacher view: L_mgd = 0 and L_psm equals the soft
    cross-entropy of that teacher view's logits, for an unflipped and a flipped student view."""
    model = twin_model
    with EventStorage(0):
        pseudo, _, _ = model.teacher_pseudo_labels(mapped)
        for v in (0, 2):
            flip = mapped[0]["teacher_flips"][v]
            unl = [
                dict(d, student_views=d["teacher_views"][v : v + 1], student_flips=[flip])
                for d in mapped
            ]
            losses = model.unsupervised_losses(unl)
            assert losses["loss_mgd"].item() < 1e-6, f"view {v}: loss_mgd {losses['loss_mgd']}"
            k = [pl.mined for pl in pseudo]
            want = psm_loss(
                torch.cat([pl.view_logits[v][m] for pl, m in zip(pseudo, k)]),
                torch.cat([pl.target[m] for pl, m in zip(pseudo, k)]),
                1.5,
            )
            assert losses["loss_psm"].item() == pytest.approx(want.item(), rel=1e-4), f"view {v}"
        # control: a flipped view declared unflipped is compared with the wrong teacher view
        unl = [
            dict(d, student_views=d["teacher_views"][2:3], student_flips=[False]) for d in mapped
        ]
        assert model.unsupervised_losses(unl)["loss_mgd"].item() > 1e-3


# ----------------------------------------------------------------------------- 12. flip boxes
def test_flip_boxes():
    b = Boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]]))
    f = flip_boxes(b, 100)
    assert torch.equal(f.tensor, torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.0]]))
    assert torch.equal(flip_boxes(f, 100).tensor, b.tensor)
    assert torch.equal(b.tensor[0], torch.tensor([10.0, 20.0, 30.0, 40.0])), "input modified"
    assert (f.tensor[:, 2] >= f.tensor[:, 0]).all()
    assert len(flip_boxes(Boxes(torch.zeros(0, 4)), 50)) == 0
