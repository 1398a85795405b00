"""CDMA losses: CDKD vs the reference KDLoss, gradient routing, entropy, Dice + CE, switches."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_bundles.cdma import losses
from monai_bundles.cdma.losses import CDMALoss, entropy_loss, kd_loss

torch.set_num_threads(1)


def _logits(seed, shape=(4, 2, 6, 5), scale=3.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).requires_grad_(grad)


def _branches(seed, k=3, shape=(4, 2, 6, 5), grad=False):
    return [_logits(seed + i, shape, grad=grad) for i in range(k)]


def _label(seed, n, channels=2, spatial=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, channels, (n, 1, *spatial), generator=g)


def _np_softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_entropy(p, normalize=True, eps=1e-6):
    """Reference ``entropy_loss``: mean over pixels of -sum_c p log(p + eps), / log C."""
    h = -(p * np.log(p + eps)).sum(axis=1).mean()
    return h / math.log(p.shape[1]) if normalize else h


def _reference_kd(z_s, z_t, temperature):
    """Reference ``KDLoss``: kl_div batchmean on (B*H*W, C) logits, times T*T."""
    channels = z_s.shape[1]
    flat = lambda z: z.permute(0, 2, 3, 1).reshape(-1, channels)  # noqa: E731
    return (
        F.kl_div(
            F.log_softmax(flat(z_s) / temperature, dim=1),
            F.softmax(flat(z_t.detach()) / temperature, dim=1),
            reduction="batchmean",
        )
        * temperature
        * temperature
    )


def _reference_dice_ce(z, y):
    """Reference ``0.5 * DiceLoss(softmax(z), y) + 0.5 * F.cross_entropy(z, y)`` in float64.

    DiceLoss (``utils/losses.py``): one-hot target, per class ``1 - (2 sum(p y) + 1e-5) /
    (sum(p^2) + sum(y^2) + 1e-5)`` over the whole batch and space, mean over classes.
    """
    z, y = z.detach().double(), y[:, 0].long()
    p = torch.softmax(z, dim=1)
    onehot = F.one_hot(y, z.shape[1]).permute(0, 3, 1, 2).double()
    dice = torch.stack(
        [
            1
            - (2 * (p[:, c] * onehot[:, c]).sum() + 1e-5)
            / ((p[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + 1e-5)
            for c in range(z.shape[1])
        ]
    ).mean()
    return 0.5 * dice + 0.5 * F.cross_entropy(z, y)


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_kd_soft_matches_hand_computation_and_reference_kdloss(temperature):
    z_s, z_t = _logits(0, (2, 3, 5, 4)), _logits(1, (2, 3, 5, 4))
    p_s = _np_softmax(z_s.double().numpy() / temperature)
    p_t = _np_softmax(z_t.double().numpy() / temperature)
    by_hand = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * temperature**2
    ours = kd_loss(z_s, z_t, temperature=temperature)
    assert ours.dtype == torch.float32, f"kd_loss must be float32, got {ours.dtype}"
    assert abs(ours.item() - by_hand) < 1e-5 * max(1.0, abs(by_hand)), f"{ours} vs {by_hand}"
    reference = _reference_kd(z_s, z_t, temperature)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6), f"{ours} vs {reference}"


def test_kd_computes_in_float32():
    z_s, z_t = _logits(2).bfloat16(), _logits(3).bfloat16()
    ours = kd_loss(z_s, z_t)
    expected = kd_loss(z_s.float(), z_t.float())
    assert ours.dtype == torch.float32, f"kd_loss on bfloat16 gave {ours.dtype}"
    assert torch.equal(ours, expected), f"{ours} vs {expected}"


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_kd_teacher_gets_no_gradient(target):
    z_s, z_t = _logits(4, grad=True), _logits(5, grad=True)
    kd_loss(z_s, z_t, target=target).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0, f"{target}: no student gradient"
    assert z_t.grad is None or z_t.grad.abs().sum() == 0, f"{target}: the teacher got a gradient"


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_cdkd_gradient_is_each_branch_as_student(target):
    k = 3
    z = _branches(6, k=k, grad=True)
    cdkd = CDMALoss(kd_target=target)(z, _label(0, 2), n_labeled=2)["cdkd"]
    pairs = [kd_loss(z[s], z[t], target=target) for s in range(k) for t in range(k) if t != s]
    expected = torch.stack(pairs).sum() / k
    assert torch.allclose(cdkd, expected, rtol=1e-6, atol=1e-7), f"{cdkd} vs {expected}"
    grads = torch.autograd.grad(cdkd, z)
    for b in range(k):
        leaf = z[b].detach().clone().requires_grad_(True)
        own = sum(kd_loss(leaf, z[t].detach(), target=target) for t in range(k) if t != b) / k
        (manual,) = torch.autograd.grad(own, leaf)
        assert torch.allclose(
            grads[b], manual, rtol=1e-5, atol=1e-8
        ), f"{target}: branch {b} gradient differs by {(grads[b] - manual).abs().max():.3g}"


def test_kd_switches():
    z_s, z_t = _logits(9), _logits(10)
    scaled, unscaled = kd_loss(z_s, z_t, 10.0), kd_loss(z_s, z_t, 10.0, t2_scale=False)
    assert torch.allclose(unscaled, scaled / 100, rtol=1e-6), f"{unscaled} vs {scaled} / 100"
    t1 = kd_loss(z_s, z_t, 1.0)
    assert abs(t1.item() - scaled.item()) > 1e-3, f"T=1 {t1} equals T=10 {scaled}"
    hard = kd_loss(z_s, z_t, temperature=10.0, target="hard")
    expected = F.cross_entropy(z_s, z_t.argmax(dim=1))
    assert torch.allclose(hard, expected, rtol=1e-6), f"hard {hard} vs CE(argmax) {expected}"
    assert torch.equal(hard, kd_loss(z_s, z_t, 1.0, t2_scale=False, target="hard"))
    # the switches reach CDMALoss
    z, y = _branches(11), _label(1, 2)
    plain = CDMALoss(temperature=10.0, kd_t2_scale=False)(z, y, 2)["cdkd"]
    default = CDMALoss()(z, y, 2)["cdkd"]
    assert torch.allclose(default, 100 * plain, rtol=1e-6), f"{default} vs 100 x {plain}"
    t1 = CDMALoss(temperature=1.0)(z, y, 2)["cdkd"]
    expected = sum(kd_loss(z[s], z[t], 1.0) for s in range(3) for t in range(3) if t != s) / 3
    assert torch.allclose(t1, expected, rtol=1e-6), f"T=1 cdkd {t1} vs {expected}"


def test_entropy_extremes():
    uniform = torch.full((2, 4, 3, 3), 0.25)
    value = entropy_loss(uniform)
    assert abs(value.item() - 1.0) < 1e-5, f"uniform normalised entropy {value}, expected 1"
    onehot = F.one_hot(torch.randint(0, 4, (2, 3, 3)), 4).permute(0, 3, 1, 2).float()
    value = entropy_loss(onehot)
    assert abs(value.item()) < 1e-5, f"one-hot entropy {value}, expected ~0"
    half = torch.full((2, 2, 3, 3), 0.5)
    value = entropy_loss(half, normalize=False)
    assert abs(value.item() - math.log(2)) < 1e-5, f"2-class uniform {value}, expected log 2"


@pytest.mark.parametrize("normalize", [True, False])
def test_um_modes_match_hand_computation(normalize):
    z, y = _branches(12, shape=(3, 3, 5, 4)), _label(2, 1, channels=3, spatial=(5, 4))
    probs = [_np_softmax(b.double().numpy()) for b in z]
    mean_mode = CDMALoss(entropy_normalize=normalize)(z, y, 1)["um"]
    per_branch = CDMALoss(entropy_normalize=normalize, um_mode="per_branch")(z, y, 1)["um"]
    expected_mean = _np_entropy(np.mean(probs, axis=0), normalize)
    expected_per_branch = np.mean([_np_entropy(p, normalize) for p in probs])
    assert abs(mean_mode.item() - expected_mean) < 1e-5, f"{mean_mode} vs {expected_mean}"
    assert (
        abs(per_branch.item() - expected_per_branch) < 1e-5
    ), f"{per_branch} vs {expected_per_branch}"
    # entropy is concave: the entropy of the mean prediction >= the mean of the entropies
    assert mean_mode >= per_branch, f"mean-mode {mean_mode} < per-branch {per_branch}"


@pytest.mark.parametrize("channels", [2, 3])
def test_sup_matches_reference_dice_ce(channels):
    n_labeled, shape = 2, (4, channels, 6, 5)
    z, y = _branches(13, shape=shape), _label(3, n_labeled, channels)
    sup = CDMALoss()(z, y, n_labeled)["sup"]
    expected = torch.stack([_reference_dice_ce(b[:n_labeled], y) for b in z]).mean()
    assert abs(sup.item() - expected.item()) < 1e-6, f"sup {sup} vs reference {expected}"
    # a float label (as MONAI loaders give) is the same
    sup_float = CDMALoss()(z, y.float(), n_labeled)["sup"]
    assert torch.allclose(sup, sup_float), f"long label {sup} vs float label {sup_float}"
    # only the labeled part matters
    changed = [torch.cat([b[:n_labeled], _logits(99, (2, channels, 6, 5))]) for b in z]
    sup_changed = CDMALoss()(changed, y, n_labeled)["sup"]
    assert torch.equal(sup, sup_changed), f"unlabeled logits changed sup: {sup} -> {sup_changed}"


def test_unsupervised_terms_use_the_whole_batch():
    n_labeled = 2
    z, y = _branches(14), _label(4, n_labeled)
    loss = CDMALoss()
    before = loss(z, y, n_labeled)
    changed = [torch.cat([b[:n_labeled], 3 * b[n_labeled:].flip(-1)]) for b in z]
    after = loss(changed, y, n_labeled)
    for key in ("cdkd", "um"):
        assert (
            abs(after[key].item() - before[key].item()) > 1e-4
        ), f"{key} ignores the unlabeled images: {before[key]} -> {after[key]}"
    # and equals the formula on the whole batch, not only the labeled part
    whole = sum(kd_loss(z[s], z[t]) for s in range(3) for t in range(3) if t != s) / 3
    assert torch.allclose(before["cdkd"], whole, rtol=1e-6), f"{before['cdkd']} vs {whole}"


def test_supervised_only_skips_unsupervised_terms(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("unsupervised term computed although unsupervised=False")

    monkeypatch.setattr(CDMALoss, "_cdkd", boom)
    monkeypatch.setattr(CDMALoss, "_um", boom)
    monkeypatch.setattr(losses, "kd_loss", boom)
    monkeypatch.setattr(losses, "entropy_loss", boom)
    z, y = _branches(15, shape=(2, 2, 6, 5), grad=True), _label(5, 2)
    out = CDMALoss()(z, y, n_labeled=2, unsupervised=False)  # labeled-only batch
    assert set(out) == {"sup", "cdkd", "um"}, f"keys {sorted(out)}"
    for key in ("cdkd", "um"):
        term = out[key]
        assert term.ndim == 0 and term.item() == 0.0, f"{key} = {term}, expected scalar 0"
        assert not term.requires_grad, f"{key} is part of the graph"
        assert term.device == z[0].device, f"{key} on {term.device}, logits on {z[0].device}"
    assert out["sup"].requires_grad, "sup must carry the gradient"


def test_single_branch_has_no_cdkd_but_um():
    z, y = _branches(16, k=1), _label(6, 2)
    out = CDMALoss()(z, y, 2)
    assert out["cdkd"].item() == 0.0, f"one branch gave cdkd {out['cdkd']}"
    expected = entropy_loss(torch.softmax(z[0], dim=1))
    assert torch.allclose(out["um"], expected), f"um {out['um']} vs {expected}"
    assert out["um"].item() > 0.01, f"um {out['um']} was not computed"


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match="kd_target.*soft.*hard"):
        CDMALoss(kd_target="argmax")
    with pytest.raises(ValueError, match="um_mode.*mean.*per_branch"):
        CDMALoss(um_mode="sum")
    z = _branches(17)
    with pytest.raises(AssertionError, match="n_labeled"):
        CDMALoss()(z, _label(7, 2)[:0], n_labeled=0)
    with pytest.raises(AssertionError, match="label shape"):
        CDMALoss()(z, _label(7, 3), n_labeled=2)
    with pytest.raises(AssertionError, match="branch 1"):
        CDMALoss()([z[0], z[1][:, :, :4]], _label(7, 2), n_labeled=2)
