"""DMD distillation losses: softening, Dice/KL terms, gradient routing."""

import pytest
import torch
import torch.nn.functional as F

from monai_bundles.dmd.losses import DMDLoss, soft_dice_loss, soften

torch.set_num_threads(1)


def _logits(channels, seed, shape=(2, 6, 6, 4)):
    g = torch.Generator().manual_seed(seed)
    b, *spatial = shape
    return (3 * torch.randn(b, channels, *spatial, generator=g)).requires_grad_(True)


def _entropy(p):
    """Mean per-voxel entropy of a softmax map (B, C, ...)."""
    return -(p * p.clamp_min(1e-12).log()).sum(1).mean()


@pytest.mark.parametrize("distill", ["dice", "kl"])
@pytest.mark.parametrize("channels", [1, 3])
def test_identical_predictions_give_zero_loss(distill, channels):
    z = _logits(channels, 0)
    loss1, loss2 = DMDLoss(temperature=2.0, distill=distill)(z, z.detach().clone())
    assert abs(loss1.item()) < 1e-6 and abs(loss2.item()) < 1e-6, f"{distill}: {loss1}, {loss2}"
    z2 = _logits(channels, 1)
    different = DMDLoss(temperature=2.0, distill=distill)(z, z2)[0].item()
    assert different > 1e-3, f"{distill}: different predictions gave {different}"


def test_temperature_flattens_softmax_and_sigmoid():
    z = _logits(4, 2)
    p1, p2 = soften(z, 1.0), soften(z, 2.0)
    assert _entropy(p2) > _entropy(p1), f"entropy T=2 {_entropy(p2)} <= T=1 {_entropy(p1)}"
    assert p2.max(1).values.mean() < p1.max(1).values.mean()
    zb = _logits(1, 3)
    assert (soften(zb, 2.0) - 0.5).abs().mean() < (soften(zb, 1.0) - 0.5).abs().mean()


def test_sigmoid_for_one_channel_softmax_for_many():
    zb = _logits(1, 4)
    assert torch.allclose(soften(zb, 2.0), torch.sigmoid(zb / 2))
    zc = _logits(3, 5)
    p = soften(zc, 2.0)
    assert torch.allclose(p, torch.softmax(zc / 2, dim=1))
    assert torch.allclose(p.sum(1), torch.ones_like(p.sum(1)))


def test_soft_dice_matches_reference_formula():
    g = torch.Generator().manual_seed(6)
    p, q = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    per_class = [
        1 - (2 * (pc * qc).sum() + 1e-5) / ((pc**2).sum() + (qc**2).sum() + 1e-5)
        for pc, qc in zip(p.unbind(1), q.unbind(1))
    ]
    expected = torch.stack(per_class).mean()
    assert torch.allclose(soft_dice_loss(p, q), expected), f"{soft_dice_loss(p, q)} vs {expected}"


def _grads(loss, z1, z2):
    z1.grad, z2.grad = None, None
    loss.backward(retain_graph=True)
    return [z.grad is not None and z.grad.abs().sum().item() > 0 for z in (z1, z2)]


@pytest.mark.parametrize("distill", ["dice", "kl"])
def test_gradient_routing(distill):
    z1, z2 = _logits(3, 7), _logits(3, 8)
    loss1, loss2 = DMDLoss(distill=distill, detach_target=False)(z1, z2)
    assert torch.equal(loss1, loss2), f"symmetric term expected, got {loss1} vs {loss2}"
    assert _grads(loss1, z1, z2) == [True, True]
    loss1, loss2 = DMDLoss(distill=distill, detach_target=True)(z1, z2)
    assert _grads(loss1, z1, z2) == [True, False], "net1's term must not reach net2"
    assert _grads(loss2, z1, z2) == [False, True], "net2's term must not reach net1"


def test_kl_at_t1_is_dml_two_way_kl():
    z1, z2 = _logits(3, 9), _logits(3, 10)
    voxels = z1.numel() // z1.shape[1]
    log_p1, log_p2 = F.log_softmax(z1, 1), F.log_softmax(z2, 1)
    kl_21 = F.kl_div(log_p1, log_p2.exp(), reduction="sum") / voxels  # KL(p2 || p1)
    kl_12 = F.kl_div(log_p2, log_p1.exp(), reduction="sum") / voxels  # KL(p1 || p2)
    sym1, _ = DMDLoss(temperature=1.0, distill="kl")(z1, z2)
    assert torch.allclose(sym1, kl_21 + kl_12, atol=1e-6), f"{sym1} vs {kl_21 + kl_12}"
    det1, det2 = DMDLoss(temperature=1.0, distill="kl", detach_target=True)(z1, z2)
    assert torch.allclose(det1, kl_21, atol=1e-6) and torch.allclose(det2, kl_12, atol=1e-6)
    # T^2 scaling (Hinton): at T=2 the term is 4 x the KL of the T=2 distributions
    t2, _ = DMDLoss(temperature=2.0, distill="kl")(z1, z2)
    q1, q2 = F.log_softmax(z1 / 2, 1), F.log_softmax(z2 / 2, 1)
    by_hand = F.kl_div(q1, q2.exp(), reduction="sum") + F.kl_div(q2, q1.exp(), reduction="sum")
    assert torch.allclose(t2, 4 * by_hand / voxels, atol=1e-6)


def test_binary_kl_compares_bernoulli_distributions():
    z1, z2 = _logits(1, 11), _logits(1, 12)
    two_class = lambda z: torch.cat([torch.zeros_like(z), z], dim=1)  # noqa: E731
    binary = DMDLoss(temperature=1.0, distill="kl")(z1, z2)[0]
    softmax_equivalent = DMDLoss(temperature=1.0, distill="kl")(two_class(z1), two_class(z2))[0]
    assert torch.allclose(
        binary, softmax_equivalent, atol=1e-6
    ), f"{binary} vs {softmax_equivalent}"


def test_bad_arguments_fail_loudly():
    with pytest.raises(AssertionError, match="distill"):
        DMDLoss(distill="mse")
    with pytest.raises(AssertionError, match="shape"):
        DMDLoss()(_logits(3, 0), _logits(2, 0))
