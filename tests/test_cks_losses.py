"""CKS (LACSS) losses and canvas ops on toy tensors.

Each loss is checked against a numpy transcription of the JAX reference (jiyuuchc/lacss tag 0.4.4,
``lacss/losses/{detection,instance,auxiliary}.py``), written here line by line with LACSS's own
padded canvases and (y, x) meshgrids; the canvas ops against brute-force loops (windows far
outside the image included); then point forcing, the hard warm-up form of L_S, the 1/2 of L_B,
the sqrt form of L_MC, empty inputs and the gradient routing between principal and collaborator.
Image 22 x 26, crop S = 8 (LACSS geometry: stride 4, so origins = 4 floor(y / 4) - 4).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import expit

from d2ext.cks.crops import (
    crop_from_image,
    crop_origins,
    inside_mask,
    paste_max,
    paste_sum,
    window_sum,
)
from d2ext.cks.losses import (
    border_loss,
    collaborator_segmentation_loss,
    collapse_loss,
    detection_loss,
    gaussian_prior,
    principal_consistency_ce,
    self_supervised_instance_loss,
    supervised_instance_loss,
)

H, W, S = 22, 26, 8  # not multiples of 4: bottom/right windows leave the image
EPS32 = float(np.finfo(np.float32).eps)
DT = torch.float64


# ----------------------------------------------------------------------------------------------
# numpy transcriptions of the JAX reference (names as in lacss 0.4.4)
# ----------------------------------------------------------------------------------------------
def np_sigmoid(x):
    return expit(x)


def np_softplus(x):
    return np.logaddexp(0.0, x)


def ref_binary_focal_crossentropy(pred, gt, gamma=2.0):
    p_t = gt * pred + (1 - gt) * (1.0 - pred)
    focal_factor = (1.0 - p_t) ** gamma
    bce = -np.log(np.clip(p_t, EPS32, 1.0))
    return focal_factor * bce


def ref_huber(pred, target, delta):  # optax.huber_loss
    abs_x = np.abs(pred - target)
    quadratic = np.minimum(abs_x, delta)
    linear = abs_x - quadratic
    return 0.5 * quadratic**2 + delta * linear


def ref_detection_loss(scores, gt_scores, gamma=2.0):  # scores are probabilities
    score_loss, cnt = 0.0, EPS32
    for k in range(len(scores)):
        score_loss += ref_binary_focal_crossentropy(scores[k], gt_scores[k], gamma).sum()
        cnt += scores[k].size
    return score_loss / cnt


def ref_localization_loss(regrs, gt_regrs, gt_scores, delta=1.0, by_positives=False, l2=False):
    regr_loss, cnt = 0.0, 1e-8
    for k in range(len(regrs)):
        if l2:
            h = (0.5 * (regrs[k] - gt_regrs[k]) ** 2).mean(axis=-1)
        else:
            h = ref_huber(regrs[k], gt_regrs[k], delta).mean(axis=-1)
        mask = gt_scores[k] > 0
        regr_loss += h[mask].sum()
        cnt += np.count_nonzero(mask) if by_positives else gt_scores[k].size
    return regr_loss / (cnt + EPS32)


def meshgrid_yc_xc(origins, ps):
    yc, xc = np.mgrid[:ps, :ps]
    return yc[None] + origins[:, 0, None, None], xc[None] + origins[:, 1, None, None]


def ref_mean_over_instances(loss):  # _mean_over_boolean_mask, all instances valid
    n = loss.shape[0] + EPS32
    return loss.reshape(loss.shape[0], -1).mean(axis=1).sum() / n


def ref_supervised_instance_loss(logit, origins, gt_labels):
    n_patches, ps = logit.shape[0], logit.shape[-1]
    yc, xc = meshgrid_yc_xc(origins, ps)
    gt_labels = np.pad(gt_labels, ps // 2)
    gt_patches = gt_labels[yc + ps // 2, xc + ps // 2] == (np.arange(n_patches)[:, None, None] + 1)
    t = gt_patches.astype("float64")
    loss = np.maximum(logit, 0) - logit * t + np.log1p(np.exp(-np.abs(logit)))
    return ref_mean_over_instances(loss)


def ref_self_supervised_instance_loss(logit, origins, fg_pred, soft_label=True):
    instances = np_sigmoid(logit)
    ps = instances.shape[-1]
    padding_size = ps // 2 + 2
    yc, xc = meshgrid_yc_xc(origins, ps)
    yc, xc = yc + padding_size, xc + padding_size
    binary_mask = np_sigmoid(fg_pred)
    seg = np.pad(binary_mask, padding_size)
    if soft_label:
        seg_patch = seg[yc, xc]
        loss = (1.0 - seg_patch) * instances + seg_patch * (1.0 - instances)
        instance_sum = np.zeros_like(seg)
        np.add.at(instance_sum, (yc, xc), instances)
        loss = loss + instances * (instance_sum[yc, xc] - instances)
    else:
        seg = (seg > 0.5).astype(instances.dtype)
        seg_patch = seg[yc, xc]
        loss = (1.0 - seg_patch) * instances + seg_patch * (1.0 - instances)
        log_yi_sum = np.zeros_like(seg)
        log_yi = np_softplus(logit)  # -log_sigmoid(-logit)
        np.add.at(log_yi_sum, (yc, xc), log_yi)
        loss = loss + instances * (log_yi_sum[yc, xc] - log_yi)
    return ref_mean_over_instances(loss)


def ref_self_supervised_segmentation_loss(fg_pred, logit, origins, gt_locations, sigma, scale):
    height, width = fg_pred.shape
    ps = logit.shape[-1]
    yc, xc = meshgrid_yc_xc(origins, ps)
    label = np.zeros([height + ps, width + ps]) - 1.0e6
    offset = (np.mgrid[:ps, :ps] - (ps - 1) / 2) ** 2 / (2 * sigma * sigma)
    offset = np.exp(-offset.sum(axis=0)) * scale
    np.maximum.at(label, (yc + ps // 2, xc + ps // 2), logit + offset)
    label = label[ps // 2 : -ps // 2, ps // 2 : -ps // 2]
    fg = np_sigmoid(fg_pred)
    fg_label = np_sigmoid(label)
    locs = np.floor(gt_locations + 0.5).astype(int)
    fg_label[locs[:, 0], locs[:, 1]] = 1.0
    return ((1.0 - fg_label) * fg + fg_label * (1.0 - fg)).mean()


def ref_sorbel_edges(image):  # [n, h, w] -> [2, n, h, w]; true convolution, mode "valid"
    kernels = np.array(
        [[[-1, -2, -1], [0, 0, 0], [1, 2, 1]], [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]], float
    )
    image = np.pad(image, [[0, 0], [1, 1], [1, 1]])
    n, hp, wp = image.shape
    out = np.zeros([2, n, hp - 2, wp - 2])
    for k in range(2):
        for a in range(3):
            for b in range(3):
                out[k] += image[:, a : a + hp - 2, b : b + wp - 2] * kernels[k, 2 - a, 2 - b]
    return out


def ref_compute_edge(instance_output, origins, height, width):
    ps = instance_output.shape[-1]
    padding = ps // 2 + 1
    yc, xc = meshgrid_yc_xc(origins, ps)
    patch_edges = np.square(ref_sorbel_edges(instance_output))
    patch_edges = (patch_edges[0] + patch_edges[1]) / 8.0
    patch_edges = np.sqrt(np.clip(patch_edges, 1e-8, 1.0))
    combined = np.zeros([height + padding * 2, width + padding * 2])
    np.add.at(combined, (yc + padding, xc + padding), patch_edges)
    return np.tanh(combined[padding : padding + height, padding : padding + width])


def ref_self_supervised_edge_loss(edge_pred, logit, origins):
    height, width = edge_pred.shape
    edge = ref_compute_edge(np_sigmoid(logit), origins, height, width)
    return (0.5 * (np_sigmoid(edge_pred) - edge) ** 2).mean()  # optax.l2_loss


def ref_aux_size_loss(logit, origins, height, width, weight=0.01):
    out = np_sigmoid(logit)
    yc, xc = meshgrid_yc_xc(origins, out.shape[-1])
    valid = (yc >= 0) & (yc < height) & (xc >= 0) & (xc < width)
    areas = np.clip((out * valid).sum(axis=(-1, -2)), EPS32, 1e6)
    loss = out.shape[-1] / np.sqrt(areas)
    return loss.sum() / (out.shape[0] + EPS32) * weight


# ----------------------------------------------------------------------------------------------
# toy data
# ----------------------------------------------------------------------------------------------
def toy(seed=0, n=6):
    """Points near the borders and in the middle (windows partly outside), overlapping windows."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.tensor(
        [[0.5, 0.5], [21.7, 25.2], [10.2, 12.9], [11.0, 14.5], [2.3, 21.0], [17.6, 3.1]], dtype=DT
    )[:n]
    origins = crop_origins(pts, crop_size=S, stride=4)
    logits = (torch.randn(n, S, S, generator=g, dtype=DT) * 2.0).requires_grad_()
    fg = (torch.randn(H, W, generator=g, dtype=DT) * 2.0).requires_grad_()
    border = (torch.randn(H, W, generator=g, dtype=DT) * 2.0).requires_grad_()
    return pts, origins, logits, fg, border


def npy(t):
    return t.detach().cpu().numpy()


def test_toy_windows_leave_the_image():
    _, origins, _, _, _ = toy()
    assert (origins < 0).any() and (origins[:, 0] + S > H).any() and (origins[:, 1] + S > W).any()
    assert (origins >= -S // 2).all(), "reference canvases need origins >= -S/2"


# ----------------------------------------------------------------------------------------------
# canvas ops vs brute force
# ----------------------------------------------------------------------------------------------
ODD_ORIGINS = torch.tensor(
    [[-3, -5], [-8, 2], [15, 20], [19, 23], [-30, 4], [4, 40], [5, 6], [6, 7]]
)


def brute_paste(values, origins, height, width, op, fill):
    out = np.full((height, width), np.nan)
    for i in range(values.shape[0]):
        for r in range(S):
            for c in range(S):
                y, x = origins[i, 0] + r, origins[i, 1] + c
                if 0 <= y < height and 0 <= x < width:
                    v = values[i, r, c]
                    out[y, x] = v if np.isnan(out[y, x]) else op(out[y, x], v)
    return np.where(np.isnan(out), fill, out)


def test_paste_sum_brute_force():
    torch.manual_seed(0)
    v = torch.randn(len(ODD_ORIGINS), S, S, dtype=DT, requires_grad=True)
    out = paste_sum(v, ODD_ORIGINS, H, W)
    assert out.shape == (H, W)
    ref = brute_paste(npy(v), ODD_ORIGINS.numpy(), H, W, lambda a, b: a + b, 0.0)
    np.testing.assert_allclose(npy(out), ref, rtol=0, atol=1e-12)
    out.sum().backward()
    np.testing.assert_array_equal(npy(v.grad), inside_mask(ODD_ORIGINS, S, H, W).double().numpy())


def test_paste_max_brute_force():
    torch.manual_seed(1)
    v = torch.randn(len(ODD_ORIGINS), S, S, dtype=DT, requires_grad=True)
    out = paste_max(v, ODD_ORIGINS, H, W, fill=-7.0)
    ref = brute_paste(npy(v), ODD_ORIGINS.numpy(), H, W, max, -7.0)
    np.testing.assert_array_equal(npy(out), ref)
    assert (out == -7.0).any(), "some pixels are uncovered"
    out.sum().backward()  # the gradient goes to the argmax window of each covered pixel
    assert v.grad.sum().item() == pytest.approx(float((ref != -7.0).sum()))
    # values below the fill still win where a window covers the pixel (include_self=False)
    out2 = paste_max(-(v.detach().abs()) - 100.0, ODD_ORIGINS, H, W, fill=0.0)
    assert int((out2 < -99).sum()) == int((ref != -7.0).sum())


def test_crop_from_image_and_inside_mask_brute_force():
    torch.manual_seed(2)
    img = torch.randn(H, W, dtype=DT)
    crops = crop_from_image(img, ODD_ORIGINS, S, fill=-3.0)
    inside = inside_mask(ODD_ORIGINS, S, H, W)
    planes = torch.randn(len(ODD_ORIGINS), H, W, dtype=DT)
    crops3 = crop_from_image(planes, ODD_ORIGINS, S, fill=0.5)
    for i, (y0, x0) in enumerate(ODD_ORIGINS.tolist()):
        for r in range(S):
            for c in range(S):
                y, x = y0 + r, x0 + c
                ok = 0 <= y < H and 0 <= x < W
                assert bool(inside[i, r, c]) == ok
                assert crops[i, r, c].item() == (img[y, x].item() if ok else -3.0)
                assert crops3[i, r, c].item() == (planes[i, y, x].item() if ok else 0.5)
    masks = planes > 0
    assert crop_from_image(masks, ODD_ORIGINS, S, 0).dtype == torch.bool


def test_window_sum_brute_force():
    torch.manual_seed(3)
    v = torch.randn(len(ODD_ORIGINS), S, S, dtype=DT)
    out = window_sum(v, ODD_ORIGINS)
    o = ODD_ORIGINS.numpy()
    for i in range(len(o)):
        for r in range(S):
            for c in range(S):
                y, x = o[i, 0] + r, o[i, 1] + c
                tot = 0.0
                for j in range(len(o)):
                    rr, cc = y - o[j, 0], x - o[j, 1]
                    if 0 <= rr < S and 0 <= cc < S:
                        tot += v[j, rr, cc].item()
                assert out[i, r, c].item() == pytest.approx(tot, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# losses vs the reference transcriptions
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loc_norm", ["cells", "positives"])
@pytest.mark.parametrize("loc_loss", ["huber", "l2"])
def test_detection_loss_vs_reference(loc_norm, loc_loss):
    g = torch.Generator().manual_seed(4)
    sizes = [30, 12, 4]
    logits = [torch.randn(k, generator=g, dtype=DT) * 3 for k in sizes]
    offs = [torch.randn(k, 2, generator=g, dtype=DT) * 2 for k in sizes]
    tgts = [(torch.rand(k, generator=g) > 0.6).to(DT) for k in sizes]
    otgts = [torch.randn(k, 2, generator=g, dtype=DT) for k in sizes]
    ls, ll = detection_loss(logits, offs, tgts, otgts, 2.0, loc_loss, 1.0, loc_norm)
    assert ls.dim() == 0 and ll.dim() == 0
    ref_s = ref_detection_loss([np_sigmoid(npy(x)) for x in logits], [npy(t) for t in tgts])
    ref_l = ref_localization_loss(
        [npy(o) for o in offs],
        [npy(o) for o in otgts],
        [npy(t) for t in tgts],
        by_positives=loc_norm == "positives",
        l2=loc_loss == "l2",
    )
    np.testing.assert_allclose(ls.item(), ref_s, rtol=1e-6)
    np.testing.assert_allclose(ll.item(), ref_l, rtol=1e-6)


def test_detection_loss_huber_branches_and_no_positives():
    score = [torch.zeros(4, dtype=DT, requires_grad=True)]
    off = [torch.tensor([[0.5, 3.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)]
    tgt = [torch.tensor([1.0, 0.0, 0.0, 0.0])]
    otgt = [torch.zeros(4, 2)]
    _, ll = detection_loss(score, off, tgt, otgt, loc_norm="positives")
    assert ll.item() == pytest.approx((0.125 + 2.5) / 2)  # 0.5 * 0.5^2 ; 1 * (3 - 0.5)
    _, ll = detection_loss(score, off, tgt, otgt, loc_loss="l2", loc_norm="cells")
    assert ll.item() == pytest.approx((0.125 + 4.5) / 2 / 4)
    _, ll = detection_loss(score, off, [torch.zeros(4)], otgt, loc_norm="positives")
    assert ll.item() == 0.0 and ll.requires_grad


def test_supervised_instance_loss_vs_reference():
    pts, origins, logits, _, _ = toy()
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, len(pts) + 1, (H, W), generator=g)
    masks = torch.stack([labels == i + 1 for i in range(len(pts))])
    loss = supervised_instance_loss(logits, origins, masks)
    ref = ref_supervised_instance_loss(npy(logits), origins.numpy(), labels.numpy())
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("soft", [True, False])
def test_self_supervised_instance_loss_vs_reference(soft):
    _, origins, logits, fg, _ = toy(6)
    loss = self_supervised_instance_loss(logits, origins, torch.sigmoid(fg), soft=soft)
    ref = ref_self_supervised_instance_loss(npy(logits), origins.numpy(), npy(fg), soft)
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)


def test_hard_and_soft_self_supervised_differ_as_expected():
    _, origins, logits, fg, _ = toy(7)
    prob = torch.sigmoid(fg)
    soft = self_supervised_instance_loss(logits, origins, prob, soft=True)
    hard = self_supervised_instance_loss(logits, origins, prob, soft=False)
    assert soft.item() != pytest.approx(hard.item())
    # a single instance with a binary M_c: no overlap, the two forms agree
    one = logits[2:3]
    binary = (prob > 0.5).to(DT)
    a = self_supervised_instance_loss(one, origins[2:3], binary, soft=True)
    b = self_supervised_instance_loss(one, origins[2:3], binary, soft=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    # pixels outside the image count (M_c = 0 there): an all-ones M_c and m = 1 still pays
    big = torch.full((1, S, S), 30.0, dtype=DT)
    corner = torch.tensor([[-4, -4]])
    outside = 1.0 - inside_mask(corner, S, H, W).double().mean().item()
    val = self_supervised_instance_loss(big, corner, torch.ones(H, W, dtype=DT)).item()
    assert val == pytest.approx(outside, rel=1e-6)


@pytest.mark.parametrize("sigma,pi", [(3.0, 2.0), (100.0, 1.0)])
def test_collaborator_segmentation_loss_vs_reference(sigma, pi):
    pts, origins, logits, fg, _ = toy(8)
    loss = collaborator_segmentation_loss(fg, logits, origins, pts, sigma, pi)
    # the reference forces floor(y + 0.5); we force floor(y): the same pixels for pts - 0.5
    ref = ref_self_supervised_segmentation_loss(
        npy(fg), npy(logits), origins.numpy(), npy(pts) - 0.5, sigma, pi
    )
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)


def test_point_forcing_and_uncovered_pixels():
    pts = torch.tensor([[10.9, 12.2], [3.0, 4.99]], dtype=DT)
    origins = crop_origins(pts, S, 4)
    logits = torch.full((2, S, S), -50.0, dtype=DT)  # M_p ~ 0 everywhere
    fg = torch.zeros(H, W, dtype=DT, requires_grad=True)  # M_c = 0.5
    for force in (True, False):
        loss = collaborator_segmentation_loss(
            fg, logits, origins, pts, 3.0, 0.0, force_points=force
        )
        # linear form with M_c = 1/2 is 1/2 anywhere: check the target via the gradient
        (grad,) = torch.autograd.grad(loss, fg)
        sign = torch.sign(grad)  # d/dMc [(1-Mp) Mc + Mp (1-Mc)] = 1 - 2 Mp
        expect = torch.ones(H, W)
        if force:
            expect[10, 12] = -1.0
            expect[3, 4] = -1.0
        np.testing.assert_array_equal(sign.numpy(), expect.numpy())
    # a point outside the image is ignored (no wraparound), the ce form thresholds M_p at 0.5
    out = torch.tensor([[-0.5, -0.5], [25.0, 3.0]], dtype=DT)
    loss = collaborator_segmentation_loss(fg, logits, origins, out, 3.0, 0.0, form="ce")
    (grad,) = torch.autograd.grad(loss, fg)
    assert (grad > 0).all()
    assert loss.item() == pytest.approx(np.log(2.0))


def test_collaborator_ce_and_principal_ce_formulas():
    pts, origins, logits, fg, _ = toy(9)
    loss = collaborator_segmentation_loss(fg, logits, origins, pts, 3.0, 2.0, form="ce")
    merged = np.full((H, W), -1e6)
    prior = np.exp(-((np.mgrid[:S, :S] - 3.5) ** 2).sum(0) / 18.0) * 2.0
    lg, o = npy(logits), origins.numpy()
    for i in range(len(o)):
        for r in range(S):
            for c in range(S):
                y, x = o[i, 0] + r, o[i, 1] + c
                if 0 <= y < H and 0 <= x < W:
                    merged[y, x] = max(merged[y, x], lg[i, r, c] + prior[r, c])
    mp = np_sigmoid(merged)
    for y, x in np.floor(npy(pts)).astype(int):
        mp[y, x] = 1.0
    t = (mp >= 0.5).astype(float)
    f = npy(fg)
    ref = (np.maximum(f, 0) - f * t + np.log1p(np.exp(-np.abs(f)))).mean()
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)

    prob = torch.sigmoid(fg)
    pce = principal_consistency_ce(logits, origins, prob)
    mc = crop_from_image(prob.detach(), origins, S, 0.0)
    m = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, (mc >= 0.5).to(DT), reduction="none")
    sig = window_sum(m, origins)
    ref = (bce + m * (sig - m)).mean()
    np.testing.assert_allclose(pce.item(), ref.item(), rtol=1e-12)


def test_gaussian_prior_centres():
    origins = torch.tensor([[-4, 8], [12, 0]])
    g = gaussian_prior(origins, 96, 20.0)
    assert g.shape == (1, 96, 96)
    assert g[0, 47, 47].item() == g[0, 48, 48].item() == pytest.approx(np.exp(-0.5 / 800.0))
    pts = torch.tensor([[1.3, 10.5], [15.0, 3.7]], dtype=DT)
    gp = gaussian_prior(origins, S, 2.0, pts, center="point")
    for i in range(2):
        for r in range(S):
            for c in range(S):
                d2 = (origins[i, 0] + r + 0.5 - pts[i, 0]) ** 2 + (
                    origins[i, 1] + c + 0.5 - pts[i, 1]
                ) ** 2
                assert gp[i, r, c].item() == pytest.approx(np.exp(-d2.item() / 8.0), rel=1e-6)


def test_border_loss_vs_reference_and_half():
    _, origins, logits, _, border = toy(10)
    loss = border_loss(border, logits, origins)
    ref = ref_self_supervised_edge_loss(npy(border), npy(logits), origins.numpy())
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)
    # the 1/2 of optax.l2_loss: no instance -> B_p = 0 -> 0.5 mean(sigmoid(border)^2)
    empty = border_loss(border, logits[:0], origins[:0])
    expect = 0.5 * (torch.sigmoid(border) ** 2).mean()
    assert empty.item() == pytest.approx(expect.item(), rel=1e-12)
    # the 1e-8 clip: a flat instance (m = 1, zero Sobel inside the window) adds 1e-4 to the
    # interior pixels: B_p = tanh(1e-4) there; sigmoid(border) = 0 elsewhere in the window
    flat = torch.full((1, S, S), 40.0, dtype=DT, requires_grad=True)
    win = torch.tensor([[6, 8]])
    dark = torch.full((H, W), -60.0, dtype=DT)
    val = border_loss(dark, flat, win)
    assert np.isclose(ref_compute_edge(np.ones((1, S, S)), win.numpy(), H, W)[9, 11], np.tanh(1e-4))
    np.testing.assert_allclose(
        val.item(), ref_self_supervised_edge_loss(npy(dark), npy(flat), win.numpy()), rtol=1e-9
    )
    assert val.item() > 0.5 * 36 * np.tanh(1e-4) ** 2 / (H * W)


@pytest.mark.parametrize("delta", [0.01, 0.02])
def test_collapse_loss_vs_reference_and_forms(delta):
    _, origins, logits, _, _ = toy(11)
    loss = collapse_loss(logits, origins, H, W, delta=delta)
    ref = ref_aux_size_loss(npy(logits), origins.numpy(), H, W, weight=delta)
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)
    # sqrt form: m = 1/4 on a window fully inside -> a = S^2 / 4 -> S / sqrt(a) = 2
    quarter = torch.full((1, S, S), float(np.log(1 / 3)), dtype=DT)
    inside = torch.tensor([[4, 4]])
    assert collapse_loss(quarter, inside, H, W, 1.0).item() == pytest.approx(2.0)
    assert collapse_loss(quarter, inside, H, W, 1.0, form="paper").item() == pytest.approx(4.0)
    # only pixels inside the image count: a window with a quarter inside has a = S^2 / 16
    corner = torch.tensor([[-4, -4]])
    assert collapse_loss(quarter, corner, H, W, 1.0).item() == pytest.approx(4.0)


# ----------------------------------------------------------------------------------------------
# gradient routing and empty inputs
# ----------------------------------------------------------------------------------------------
def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def test_gradient_routing():
    pts, origins, logits, fg, border = toy(12)
    # L_M: collaborator only
    g_logit, g_fg = grads(
        collaborator_segmentation_loss(fg, logits, origins, pts, 3.0, 2.0), logits, fg
    )
    assert g_logit is None and g_fg.abs().sum() > 0
    # L_S (both forms) and the ce principal: principal only, M_c detached
    prob = torch.sigmoid(fg)
    for loss in (
        self_supervised_instance_loss(logits, origins, prob, soft=True),
        self_supervised_instance_loss(logits, origins, prob, soft=False),
        principal_consistency_ce(logits, origins, prob),
    ):
        g_logit, g_fg = grads(loss, logits, fg)
        assert g_fg is None and g_logit.abs().sum() > 0
    # L_B: both
    g_logit, g_border = grads(border_loss(border, logits, origins), logits, border)
    assert g_logit.abs().sum() > 0 and g_border.abs().sum() > 0
    # the overlap term reaches both overlapping instances (windows 2 and 3 overlap)
    only_overlap = self_supervised_instance_loss(logits, origins, torch.full((H, W), 0.5, dtype=DT))
    (g,) = grads(only_overlap, logits)
    assert g[2].abs().sum() > 0 and g[3].abs().sum() > 0


def test_empty_instances_give_connected_zero():
    pts, origins, logits, fg, border = toy(13)
    e_l, e_o, e_p = logits[:0], origins[:0], pts[:0]
    outs = [
        supervised_instance_loss(e_l, e_o, torch.zeros(0, H, W, dtype=torch.bool)),
        self_supervised_instance_loss(e_l, e_o, torch.sigmoid(fg)),
        self_supervised_instance_loss(e_l, e_o, torch.sigmoid(fg), soft=False),
        principal_consistency_ce(e_l, e_o, torch.sigmoid(fg)),
        collapse_loss(e_l, e_o, H, W),
    ]
    for out in outs:
        assert out.dim() == 0 and out.item() == 0.0 and out.requires_grad
    lm = collaborator_segmentation_loss(fg, e_l, e_o, e_p, 3.0, 2.0)
    lb = border_loss(border, e_l, e_o)
    for out in (lm, lb):
        assert out.dim() == 0 and out.requires_grad
    # no crop: M_p = 0 everywhere -> L_M = mean M_c
    assert lm.item() == pytest.approx(torch.sigmoid(fg).mean().item())
    (g,) = torch.autograd.grad(lb, e_l, allow_unused=True)
    assert g is not None and g.shape == (0, S, S)


def test_float32_smoke():
    pts, origins, logits, fg, border = toy(14)
    lg, f, b = logits.float(), fg.float(), border.float()
    vals = [
        self_supervised_instance_loss(lg, origins, torch.sigmoid(f)),
        collaborator_segmentation_loss(f, lg, origins, pts.float(), 20.0, 2.0),
        border_loss(b, lg, origins),
        collapse_loss(lg, origins, H, W),
    ]
    for v in vals:
        assert v.dtype == torch.float32 and torch.isfinite(v)
