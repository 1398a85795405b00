"""CKS (LACSS) LPN: label assignment, decoding, greedy distance NMS, train-location replacement
(:mod:`d2ext.cks.locations`) and the LPN proposal generator (:mod:`d2ext.cks.lpn`)."""

import math
import time

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import ImageList

from d2ext.cks.locations import (
    decode_locations,
    distance_nms,
    locations_to_labels,
    match_train_locations,
    train_locations,
    valid_locations,
)
from d2ext.cks.lpn import LPN

# ---------------------------------------------------------------------------- references


def _np_locations_to_labels(points, hw, stride, roi):
    """numpy transcription of lacss 0.4.4 ``locations_to_labels`` (scaled inputs)."""
    h, w = hw
    flat = np.asarray(points, np.float64) / stride  # = (p / (h s, w s)) * (h, w)
    mesh = np.mgrid[:h, :w] + 0.5  # (2, h, w)
    dist = flat[:, :, None, None] - mesh  # (N, 2, h, w)
    d2 = (dist * dist).sum(1)
    idx = np.argmin(d2, axis=0)  # (h, w)
    best = np.take_along_axis(d2, idx[None], 0)[0]
    thr = roi / stride
    score = (best < thr * thr).astype(np.float64).reshape(-1)
    reg = np.take_along_axis(dist, idx[None, None].repeat(2, 1), 0)[0]  # (2, h, w)
    return score, reg.transpose(1, 2, 0).reshape(-1, 2)


def _brute_nms(locs, scores, min_score, dist, max_out):
    """Greedy O(M^2) NMS in python floats (stable descending order)."""
    locs = [tuple(map(float, p)) for p in locs.tolist()]
    scores = scores.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable
    keep = []
    for i in order:
        if scores[i] < min_score:
            continue
        if max_out > 0 and len(keep) >= max_out:
            break
        if dist > 0 and any(
            math.hypot(locs[i][0] - locs[k][0], locs[i][1] - locs[k][1]) <= dist for k in keep
        ):
            continue
        keep.append(i)
    return keep


def _brute_match(pred, scores, gt, max_offset):
    """lacss ``_gen_train_locations`` rule, loop form: -1 or the replacing prediction."""
    out = [-1] * len(gt)
    if max_offset <= 0:
        return out
    best = [None] * len(gt)
    for m, p in enumerate(pred.tolist()):
        d = [math.hypot(p[0] - g[0], p[1] - g[1]) for g in gt.tolist()]
        n = min(range(len(d)), key=lambda k: d[k])
        if d[n] >= max_offset:
            continue
        if best[n] is None or scores[m] > best[n][0]:
            best[n] = (float(scores[m]), m)
    return [-1 if b is None else b[1] for b in best]


# ---------------------------------------------------------------------------- labels


POINTS = torch.tensor([[10.0, 6.0], [22.0, 26.0]])  # 32 x 32 px image


def test_labels_stride4_two_cell_radius():
    score, off = locations_to_labels(POINTS, (8, 8), 4, 8.0)
    assert score.shape == (64,) and off.shape == (64, 2)
    pos = {(int(k) // 8, int(k) % 8) for k in torch.nonzero(score).flatten()}
    # p1 / 4 = (2.5, 1.5) = centre of cell (2, 1); p2 / 4 = (5.5, 6.5) = centre of cell (5, 6):
    # distance < 2 cells -> the 3 x 3 blocks ((2, 0) is at distance 2: negative)
    exp = {(2 + a, 1 + b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    exp |= {(5 + a, 6 + b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert pos == exp, f"positives {sorted(pos)} != {sorted(exp)}"
    assert set(score.unique().tolist()) == {0.0, 1.0}
    # target = p / s - centre
    assert torch.allclose(off[1 * 8 + 0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(off[2 * 8 + 1], torch.tensor([0.0, 0.0]))
    assert torch.allclose(off[6 * 8 + 7], torch.tensor([-1.0, -1.0]))


def test_labels_stride8_and_16():
    score, off = locations_to_labels(POINTS, (4, 4), 8, 8.0)
    pos = {(int(k) // 4, int(k) % 4) for k in torch.nonzero(score).flatten()}
    # p1 / 8 = (1.25, 0.75), p2 / 8 = (2.75, 3.25), radius 1 cell
    assert pos == {(0, 0), (1, 0), (1, 1), (2, 3), (3, 3), (2, 2)}, f"{sorted(pos)}"
    assert torch.allclose(off[0], torch.tensor([0.75, 0.25]))
    assert torch.allclose(off[3 * 4 + 3], torch.tensor([-0.75, -0.25]))
    score, off = locations_to_labels(POINTS, (2, 2), 16, 8.0)
    # radius 0.5 cell: only the containing cells
    assert score.tolist() == [1.0, 0.0, 0.0, 1.0], f"{score.tolist()}"
    assert torch.allclose(off[0], torch.tensor([0.125, -0.125]))
    assert torch.allclose(off[3], torch.tensor([-0.125, 0.125]))


@pytest.mark.parametrize("stride,hw", [(4, (16, 12)), (8, (8, 6)), (16, (4, 3))])
def test_labels_match_reference_transcription(stride, hw):
    g = torch.Generator().manual_seed(stride)
    pts = torch.rand(7, 2, generator=g) * torch.tensor([64.0, 48.0])
    score, off = locations_to_labels(pts, hw, stride, 8.0)
    ref_s, ref_o = _np_locations_to_labels(pts.numpy(), hw, stride, 8.0)
    assert np.array_equal(score.numpy(), ref_s), "score targets differ from the transcription"
    assert np.allclose(off.numpy(), ref_o, atol=1e-5), "offset targets differ"


def test_labels_chunked_equals_single_block(monkeypatch):
    import d2ext.cks.locations as L

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(13, 2, generator=g) * 64
    s1, o1 = locations_to_labels(pts, (16, 16), 4, 8.0)
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", 20)  # blocks of 1 cell
    s2, o2 = locations_to_labels(pts, (16, 16), 4, 8.0)
    assert torch.equal(s1, s2) and torch.equal(o1, o2), "chunking changed the labels"


def test_labels_no_points():
    score, off = locations_to_labels(torch.zeros(0, 2), (4, 5), 8, 8.0)
    assert score.shape == (20,) and off.shape == (20, 2)
    assert not score.any() and not off.any()


# ---------------------------------------------------------------------------- decode


def test_decode_and_validity():
    off = torch.zeros(6, 2)
    off[0] = torch.tensor([-0.75, 0.0])  # y = (0.5 - 0.75) * 4 = -1 -> invalid
    off[4] = torch.tensor([0.25, -0.5])  # cell (1, 1): ((1.75) * 4, (1.0) * 4)
    off[5] = torch.tensor([0.0, 0.5])  # cell (1, 2): x = 3.0 * 4 = 12 = w * s -> invalid (strict)
    loc = decode_locations(off, (2, 3), 4)
    assert torch.allclose(loc[0], torch.tensor([-1.0, 2.0]))
    assert torch.allclose(loc[1], torch.tensor([2.0, 6.0]))
    assert torch.allclose(loc[4], torch.tensor([7.0, 4.0]))
    valid = valid_locations(loc, (2, 3), 4)
    assert valid.tolist() == [False, True, True, True, True, False], f"{valid.tolist()}"


# ---------------------------------------------------------------------------- NMS


@pytest.mark.parametrize("seed", range(6))
def test_distance_nms_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    m = 400
    locs = torch.rand(m, 2, generator=g) * 80
    if seed % 2:  # integer grid: exact distance-8 pairs (d <= 8 suppresses)
        locs = torch.randint(0, 40, (m, 2), generator=g).float()
    scores = torch.randint(0, 10, (m,), generator=g).float() / 10  # many ties
    for min_score, max_out in [(0.0, -1), (0.25, -1), (0.2, 15), (0.5, 3)]:
        keep = distance_nms(locs, scores, min_score, 8.0, max_out)
        ref = _brute_nms(locs, scores, min_score, 8.0, max_out)
        assert keep.tolist() == ref, f"seed {seed} min {min_score} max {max_out}"
        assert keep.dtype == torch.long


def test_distance_nms_exact_boundary_and_edge_cases():
    locs = torch.tensor([[0.0, 0.0], [8.0, 0.0], [16.0, 0.0], [0.0, 8.001]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # (8, 0) is at distance 8 of (0, 0): dropped; (16, 0) then survives; (0, 8.001) survives
    assert distance_nms(locs, scores, 0.0, 8.0, -1).tolist() == [0, 2, 3]
    assert distance_nms(locs, scores, 0.0, 0.0, -1).tolist() == [0, 1, 2, 3]  # NMS off
    assert distance_nms(locs, scores, 0.65, 8.0, -1).tolist() == [0, 2]
    assert distance_nms(locs, scores, 0.95, 8.0, -1).numel() == 0
    assert distance_nms(torch.zeros(0, 2), torch.zeros(0), 0.0, 8.0, 5).numel() == 0


def test_distance_nms_many_points_fast():
    g = torch.Generator().manual_seed(0)
    locs = torch.rand(25000, 2, generator=g) * 544  # an untrained LPN on 544 x 544: all pass
    scores = torch.rand(25000, generator=g)
    t = time.perf_counter()
    keep = distance_nms(locs, scores, 0.2, 8.0, 3072)
    dt = time.perf_counter() - t
    assert dt < 5.0, f"NMS of 25k points took {dt:.2f} s"
    assert 0 < keep.numel() <= 3072
    kept = locs[keep].double()
    d = torch.cdist(kept, kept, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(1e9)
    assert d.min() > 8.0, "two kept points within the NMS distance"
    assert (scores[keep][:-1] >= scores[keep][1:]).all(), "not sorted by score"


# ---------------------------------------------------------------------------- train locations


def test_train_locations_hand_made():
    gt = torch.tensor([[20.0, 20.0], [40.0, 20.0], [100.0, 100.0], [200.0, 200.0]])
    pred = torch.tensor(
        [
            [22.0, 20.0],  # 0: -> gt 0 (d 2)
            [21.0, 21.0],  # 1: -> gt 0 (d 1.41), higher score: wins
            [31.0, 20.0],  # 2: d 11 to gt 0 but nearest is gt 1 (d 9): -> gt 1
            [100.0, 113.0],  # 3: d 13 to gt 2: beyond 12 px
            [100.0, 111.9],  # 4: d 11.9 to gt 2, low score: replaces
            [60.0, 60.0],  # 5: far from everything
        ]
    )
    scores = torch.tensor([0.9, 0.95, 0.99, 0.99, 0.3, 0.8])
    locs, replaced = train_locations(pred, scores, gt, 12.0)
    assert replaced.tolist() == [True, True, True, False]
    assert torch.equal(locs, torch.stack([pred[1], pred[2], pred[4], gt[3]]))
    assert match_train_locations(pred, scores, gt, 12.0).tolist() == [1, 2, 4, -1]
    # max_offset <= 0: no replacement
    locs0, rep0 = train_locations(pred, scores, gt, 0.0)
    assert not rep0.any() and torch.equal(locs0, gt)
    # no predictions / no points
    locs1, rep1 = train_locations(torch.zeros(0, 2), torch.zeros(0), gt, 12.0)
    assert not rep1.any() and torch.equal(locs1, gt)
    locs2, rep2 = train_locations(pred, scores, torch.zeros(0, 2), 12.0)
    assert locs2.shape == (0, 2) and rep2.shape == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_train_locations_equal_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(30, 2, generator=g) * 100
    pred = torch.rand(80, 2, generator=g) * 100
    scores = torch.randint(1, 6, (80,), generator=g).float() / 5  # ties: the lower index wins
    got = match_train_locations(pred, scores, gt, 12.0).tolist()
    assert got == _brute_match(pred, scores, gt, 12.0), f"seed {seed}"
    locs, replaced = train_locations(pred, scores, gt, 12.0)
    for n, m in enumerate(got):
        assert torch.equal(locs[n], pred[m] if m >= 0 else gt[n]) and bool(replaced[n]) == (m >= 0)


# ---------------------------------------------------------------------------- LPN module


def _cfg():
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.CKS = CN()
    cfg.MODEL.CKS.LPN = CN(
        dict(
            IN_FEATURES=["p2", "p3", "p4"],
            CONV_DIMS=[8, 8],
            DETECTION_ROI=8.0,
            FOCAL_GAMMA=2.0,
            LOC_LOSS="huber",
            HUBER_DELTA=1.0,
            LOC_NORM="cells",
        )
    )
    cfg.MODEL.CKS.DETECTOR = CN(
        dict(
            NMS_DIST=8.0,
            MIN_SCORE_TRAIN=0.2,
            MIN_SCORE_TEST=0.2,
            MAX_OUTPUT_TRAIN=3072,
            MAX_OUTPUT_TEST=3072,
            MAX_PROPOSAL_OFFSET=12.0,
        )
    )
    return cfg


SHAPES = {f"p{k}": ShapeSpec(channels=8, stride=2**k) for k in (2, 3, 4, 5)}


def _inputs(batch=2):
    torch.manual_seed(0)
    feats = {f"p{k}": torch.randn(batch, 8, 64 >> k, 64 >> k) for k in (2, 3, 4, 5)}
    images = ImageList(torch.zeros(batch, 3, 64, 64), [(60, 50), (64, 64)][:batch])
    gts = [torch.tensor([[10.0, 6.0], [22.0, 26.0], [50.0, 40.0]]), torch.zeros(0, 2)][:batch]
    return images, feats, gts


def _build():
    torch.manual_seed(0)
    lpn = PROPOSAL_GENERATOR_REGISTRY.get("LPN")(_cfg(), SHAPES)
    assert isinstance(lpn, LPN)
    return lpn


def test_lpn_from_config():
    lpn = _build()
    assert lpn.in_features == ["p2", "p3", "p4"] and lpn.strides == [4, 8, 16]
    assert lpn.min_score == {True: 0.2, False: 0.2} and lpn.max_output[False] == 3072
    assert lpn.max_proposal_offset == 12.0 and lpn.loss_kwargs["gamma"] == 2.0
    kw = LPN(in_features=["p2"], in_channels=8, strides=[4], conv_dims=[8])
    assert len(kw.head.convs) == 3


def test_lpn_groupnorm_per_channel_eps():
    lpn = _build()
    gns = [m for m in lpn.modules() if isinstance(m, torch.nn.GroupNorm)]
    convs = [m for m in lpn.head.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(gns) == 2 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    for gn in gns:
        assert gn.num_groups == gn.num_channels and gn.eps == 1e-6 and gn.affine
    x = torch.randn(2, 8, 5, 7)
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(gns[0](x), (x - mu) / torch.sqrt(var + 1e-6), atol=1e-5)
    assert lpn.head.score.out_channels == 1 and lpn.head.offset.out_channels == 2
    assert lpn.head.score.bias is not None and lpn.head.offset.bias is not None


def test_lpn_train_forward_losses_and_proposals():
    lpn = _build().train()
    images, feats, gts = _inputs()
    proposals, losses = lpn(images, feats, gts)
    assert set(losses) == {"loss_lpn_score", "loss_lpn_loc"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), f"{losses}"
    sum(losses.values()).backward()
    for name, p in lpn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no grad for {name}"
    assert lpn.head.offset.weight.grad.abs().sum() > 0, "loc loss does not reach the offset conv"
    assert len(proposals) == 2
    for inst, gt, size in zip(proposals, gts, images.image_sizes):
        assert inst.image_size == tuple(size)
        assert inst.locations.shape == gt.shape and inst.scores.shape == (len(gt),)
        assert inst.replaced.dtype == torch.bool and inst.replaced.shape == (len(gt),)
        assert not inst.locations.requires_grad and not inst.scores.requires_grad
        r = inst.replaced
        assert torch.equal(inst.locations[~r], gt[~r]) and (inst.scores[~r] == 1).all()
        assert ((inst.locations[r] - gt[r]).norm(dim=1) < 12).all()
        assert (inst.scores[r] >= 0.2).all()
    assert proposals[0].replaced.any(), "an untrained LPN (scores ~0.5) should replace points"


def test_lpn_train_no_replacement_and_loss_matches_single_image():
    lpn = _build().train()
    lpn.max_proposal_offset = 0.0
    images, feats, gts = _inputs()
    proposals, losses = lpn(images, feats, gts)
    assert not proposals[0].replaced.any() and torch.equal(proposals[0].locations, gts[0])
    # mean over images
    parts = []
    for b in range(2):
        one = ImageList(images.tensor[b : b + 1], [images.image_sizes[b]])
        _, lb = lpn(one, {k: v[b : b + 1] for k, v in feats.items()}, [gts[b]])
        parts.append(lb["loss_lpn_score"])
    assert torch.allclose(losses["loss_lpn_score"], sum(parts) / 2)


def test_lpn_eval_forward():
    lpn = _build().eval()
    images, feats, _ = _inputs()
    with torch.no_grad():
        proposals, losses = lpn(images, feats)
    assert losses == {}
    for inst, size in zip(proposals, images.image_sizes):
        assert inst.image_size == tuple(size)
        k = len(inst)
        assert inst.locations.shape == (k, 2) and inst.scores.shape == (k,) and k > 0
        assert (inst.scores >= 0.2).all() and (inst.scores <= 1).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert (inst.locations > 0).all() and (inst.locations < 64).all()  # padded grid
        assert not inst.has("replaced")


def test_lpn_detect_invalid_cells_and_brute_force():
    lpn = LPN(in_features=["p2", "p3"], in_channels=8, strides=[4, 8], min_score_test=0.0).eval()
    g = torch.Generator().manual_seed(3)
    grids = [(6, 5), (3, 3)]
    logits = [torch.randn(h * w, generator=g) for h, w in grids]
    offsets = [torch.randn(h * w, 2, generator=g) * 1.5 for h, w in grids]  # some leave the grid
    locs, scores = lpn.detect(logits, offsets, grids, training=False)
    all_l, all_s = [], []
    for lg, off, hw, s in zip(logits, offsets, grids, [4, 8]):
        loc = decode_locations(off, hw, s)
        valid = valid_locations(loc, hw, s)
        assert (~valid).any(), "test needs invalid cells"
        all_l.append(loc)
        all_s.append(torch.where(valid, torch.sigmoid(lg), torch.zeros(())))
    all_l, all_s = torch.cat(all_l), torch.cat(all_s)
    ref = _brute_nms(all_l, all_s, 0.0, 8.0, 3072)
    assert torch.equal(locs, all_l[ref]) and torch.equal(scores, all_s[ref])
    # min score > 0 drops every invalid cell
    lpn.min_score[False] = 0.2
    locs2, scores2 = lpn.detect(logits, offsets, grids, training=False)
    ref2 = _brute_nms(all_l, all_s, 0.2, 8.0, 3072)
    assert torch.equal(locs2, all_l[ref2]) and (scores2 > 0).all()
