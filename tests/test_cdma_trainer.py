"""CDMATrainer (one MTNet, CDMA losses, warm-up gate, gradient routing), CDMA's parameter groups
and milestones (``monai_bundles.cdma.optim``), and the bundle's sliding-window inferer against the
reference per-window loop (``monai_bundles.cdma.reference_inference``)."""

import copy
import types

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.engines.utils import IterationEvents
from monai.inferers import SlidingWindowInferer

from monai_bundles.cdma.losses import CDMALoss
from monai_bundles.cdma.networks import MTNet, MTNetPredictor
from monai_bundles.cdma.optim import GROUPS, iteration_milestones, parameter_groups
from monai_bundles.cdma.reference_inference import reference_sliding_window, window_starts
from monai_bundles.cdma.trainer import LOSS_TERMS, CDMATrainer

torch.set_num_threads(1)

SIZE = 64
# the network settings without randomness in training mode (dropout and feature noise off)
DETERMINISTIC = dict(feature_noise=0.0, aspp_dropout=0.0, decoder_dropout=(0.0, 0.0))


def _net(seed=0, **kwargs) -> MTNet:
    """A fast MTNet: ResNet18 encoder, 16-channel head, three branches (csa, sa, ca)."""
    torch.manual_seed(seed)
    return MTNet(encoder="resnet18", decoder_channels=16, **kwargs)


def _batches(steps=1, seed=0, unlabeled=True, unlabeled_seed=None):
    """``steps`` two-stream batches of 2 labeled + 2 unlabeled 3x64x64 images (the unlabeled
    images drawn from ``unlabeled_seed`` when given, so only they change)."""
    g = torch.Generator().manual_seed(seed)
    gu = g if unlabeled_seed is None else torch.Generator().manual_seed(unlabeled_seed)
    out = []
    for _ in range(steps):
        batch = {
            "labeled": {
                "image": torch.rand(2, 3, SIZE, SIZE, generator=g),
                "label": torch.randint(0, 2, (2, 1, SIZE, SIZE), generator=g).float(),
            }
        }
        if unlabeled:
            batch["unlabeled"] = {"image": torch.rand(2, 3, SIZE, SIZE, generator=gu)}
        out.append(batch)
    return out


def _trainer(net, loader, lr=0.01, loss_function=None, **kwargs) -> CDMATrainer:
    return CDMATrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=CDMALoss() if loss_function is None else loss_function,
        **kwargs,
    )


def _params(net) -> dict:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _record(trainer) -> list:
    """The per-iteration (unsup_weight, loss_cdkd, loss_um) of a run."""
    rows = []
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED,
        lambda e: rows.append(
            (e.state.output["unsup_weight"], e.state.output["loss_cdkd"], e.state.output["loss_um"])
        ),
    )
    return rows


class _FlagLoss(CDMALoss):
    """CDMALoss recording the ``unsupervised`` flag of each call."""

    def __init__(self):
        super().__init__()
        self.flags = []

    def forward(self, logits, label, n_labeled, unsupervised=True):
        self.flags.append(unsupervised)
        return super().forward(logits, label, n_labeled, unsupervised=unsupervised)


# ----------------------------------------------------------------------------- trainer
def test_one_step_output_and_total_loss():
    net = _net()
    before = _params(net)
    trainer = _trainer(net, _batches(1), lambda_cdkd=0.1, lambda_um=0.1)
    steps = ("FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED")
    counts = {name: 0 for name in steps}
    for name in steps:
        trainer.add_event_handler(
            IterationEvents[name], lambda _, n=name: counts.__setitem__(n, counts[n] + 1)
        )
    trainer.run()

    assert trainer.state.iteration == 1, f"ran {trainer.state.iteration} iterations"
    assert all(n == 1 for n in counts.values()), f"events fired {counts}"
    out = trainer.state.output
    assert set(LOSS_TERMS) | {"image", "label", "pred", "unsup_weight"} <= set(out), sorted(out)
    assert out["image"].shape == (4, 3, SIZE, SIZE), f"image {tuple(out['image'].shape)}"
    assert out["label"].shape == (2, 1, SIZE, SIZE), f"label {tuple(out['label'].shape)}"
    assert torch.is_tensor(out["loss"]) and out["loss"].ndim == 0, f"loss {out['loss']!r}"
    assert torch.isfinite(out["loss"]), f"loss {out['loss']}"
    parts = {k: out[k] for k in ("loss_sup", "loss_cdkd", "loss_um")}
    assert all(isinstance(v, float) and v > 0 for v in parts.values()), f"terms {parts}"
    assert out["unsup_weight"] == 1.0, f"unsup_weight {out['unsup_weight']} without warm-up"
    total = parts["loss_sup"] + 1.0 * (0.1 * parts["loss_cdkd"] + 0.1 * parts["loss_um"])
    assert abs(out["loss"].item() - total) < 1e-5, f"loss {out['loss'].item()} != {total}"

    assert out["pred"].shape == (2, 2, SIZE, SIZE), f"pred {tuple(out['pred'].shape)}"
    after = _params(net)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before), f"only {len(changed)}/{len(before)} changed"
    for i in range(3):
        assert any(k.startswith(f"decoders.{i}.") for k in changed), f"decoder {i} not trained"


def test_pred_is_the_csa_branch_of_the_labeled_images():
    net = _net(**DETERMINISTIC, backbone_norm="frozen_bn")
    reference = copy.deepcopy(net).train()
    batch = _batches(1)[0]
    trainer = _trainer(net, [batch])
    trainer.run()
    images = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    with torch.no_grad():
        expected = reference(images)[0][:2]  # branch 0 = csa, before the optimizer step
    pred = trainer.state.output["pred"].detach()
    assert net.branches[0] == "csa", f"branches {net.branches}"
    assert torch.allclose(pred, expected, atol=1e-5), f"max diff {(pred - expected).abs().max()}"
    with torch.no_grad():
        other = reference(images)[1][:2]
    assert not torch.allclose(pred, other, atol=1e-5), "pred equals the sa branch"


def test_warmup_gates_the_unsupervised_terms():
    loss = _FlagLoss()
    trainer = _trainer(_net(), _batches(3), loss_function=loss, unsup_warmup_iterations=2)
    rows = _record(trainer)
    trainer.run()
    assert loss.flags == [False, False, True], f"unsupervised flags {loss.flags}"
    for it, (w, cdkd, um) in enumerate(rows[:2], start=1):
        assert w == 0.0 and cdkd == 0.0 and um == 0.0, f"iteration {it}: w {w}, {cdkd}, {um}"
    w, cdkd, um = rows[2]
    assert w == 1.0, f"iteration 3: unsup_weight {w}"
    assert cdkd > 0 and um > 0, f"iteration 3: loss_cdkd {cdkd}, loss_um {um}"
    assert [trainer.unsup_weight(i) for i in (1, 2, 3, 100)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("lambdas", [(0.0, 0.0), (0.0, 0.1), (0.1, 0.0)])
def test_zero_lambdas_never_compute_the_unsupervised_terms(monkeypatch, lambdas):
    calls = []
    original = {name: getattr(CDMALoss, name) for name in ("_cdkd", "_um")}
    for name, fn in original.items():

        def counted(self, logits, _name=name, _fn=fn):
            calls.append(_name)
            return _fn(self, logits)

        monkeypatch.setattr(CDMALoss, name, counted)
    loss = _FlagLoss()
    trainer = _trainer(_net(), _batches(2), loss_function=loss, lambda_cdkd=lambdas[0])
    trainer.lambda_um = lambdas[1]  # a plain attribute (handlers may ramp it)
    rows = _record(trainer)
    trainer.run()
    if lambdas == (0.0, 0.0):
        assert loss.flags == [False, False], f"unsupervised flags {loss.flags}"
        assert not calls, f"computed {calls} with both lambdas 0"
        assert all(r[1] == 0.0 and r[2] == 0.0 for r in rows), f"terms {rows}"
    else:  # one weight nonzero: both terms computed (logged), only the weighted one counts
        assert loss.flags == [True, True], f"unsupervised flags {loss.flags}"
        assert sorted(calls) == ["_cdkd", "_cdkd", "_um", "_um"], f"calls {calls}"
        out = trainer.state.output
        total = out["loss_sup"] + lambdas[0] * out["loss_cdkd"] + lambdas[1] * out["loss_um"]
        assert abs(out["loss"].item() - total) < 1e-5, f"loss {out['loss'].item()} != {total}"


def test_labeled_only_batches_train():
    net = _net()
    before = _params(net)
    loss = _FlagLoss()
    trainer = _trainer(net, _batches(2, unlabeled=False), loss_function=loss)
    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 2, f"ran {trainer.state.iteration} iterations"
    assert out["image"].shape == (2, 3, SIZE, SIZE), f"image {tuple(out['image'].shape)}"
    assert out["pred"].shape == (2, 2, SIZE, SIZE), f"pred {tuple(out['pred'].shape)}"
    assert torch.isfinite(out["loss"]) and out["loss_sup"] > 0, f"loss {out['loss']}"
    after = _params(net)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before), f"only {len(changed)}/{len(before)} changed"


def test_zero_lambdas_equal_a_plain_supervised_step():
    """After the warm-up with both lambdas 0 the update is the SGD step of the supervised term
    on the joint batch; the same as a step inside the warm-up (unsupervised terms disabled)."""
    batch = _batches(1)[0]
    runs = {}
    for name, kwargs in (
        ("lambdas0", dict(lambda_cdkd=0.0, lambda_um=0.0)),
        ("warmup", dict(lambda_cdkd=0.1, lambda_um=0.1, unsup_warmup_iterations=1)),
        ("unsup", dict(lambda_cdkd=0.1, lambda_um=0.1)),
    ):
        net = _net(seed=0)
        torch.manual_seed(1)  # the same feature-noise and dropout draws in every run
        _trainer(net, [batch], **kwargs).run()
        runs[name] = _params(net)

    net = _net(seed=0).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    torch.manual_seed(1)
    terms = CDMALoss()(net(images), batch["labeled"]["label"], 2, unsupervised=False)
    terms["sup"].backward()
    optimizer.step()
    plain = _params(net)

    for key, value in plain.items():
        for name in ("lambdas0", "warmup"):
            assert torch.allclose(value, runs[name][key], atol=1e-6), f"{name}: {key} differs"
    differ = [k for k in plain if not torch.allclose(plain[k], runs["unsup"][k], atol=1e-6)]
    assert differ, "with lambdas 0.1 the update equals the supervised step"


@pytest.mark.parametrize("lambdas", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_gradient_reaches_the_unlabeled_images_only_through_the_unsupervised_terms(lambdas):
    """With frozen BatchNorm (no batch statistics) and GroupNorm elsewhere the images of a batch
    do not interact, so the only path from the unlabeled images to the loss is L_cdkd / L_um."""
    batch = _batches(1)[0]
    image_l = batch["labeled"]["image"].requires_grad_(True)
    image_u = batch["unlabeled"]["image"].requires_grad_(True)
    net = _net(backbone_norm="frozen_bn", **DETERMINISTIC)
    _trainer(net, [batch], lambda_cdkd=lambdas[0], lambda_um=lambdas[1]).run()
    assert image_l.grad is not None and image_l.grad.abs().max() > 0, "no gradient to labeled"
    grad_u = 0.0 if image_u.grad is None else image_u.grad.abs().max().item()
    if lambdas == (0.0, 0.0):
        assert grad_u == 0.0, f"unlabeled images get gradient {grad_u} with lambdas 0"
    else:
        assert grad_u > 0.0, f"unlabeled images get no gradient with lambdas {lambdas}"


@pytest.mark.parametrize("lambdas", [(0.0, 0.0), (0.1, 0.1)])
def test_unlabeled_images_change_the_update_only_with_unsupervised_terms(lambdas):
    updates = []
    for unlabeled_seed in (1, 2):
        net = _net(backbone_norm="frozen_bn", **DETERMINISTIC)
        batches = _batches(1, unlabeled_seed=unlabeled_seed)
        _trainer(net, batches, lambda_cdkd=lambdas[0], lambda_um=lambdas[1]).run()
        updates.append(_params(net))
    a, b = updates
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if lambdas == (0.0, 0.0):
        assert not differ, f"with lambdas 0 the unlabeled images changed {differ[:3]}"
    else:
        assert len(differ) > len(a) // 2, f"only {len(differ)}/{len(a)} depend on unlabeled"


# ----------------------------------------------------------------------------- optim
MULTIPLIERS = {"backbone_weight": 1.0, "backbone_bias": 2.0, "head_weight": 10.0, "head_bias": 20.0}


def _check_groups(groups, named, base_lr=0.01):
    assert [g["name"] for g in groups] == list(GROUPS), f"groups {[g['name'] for g in groups]}"
    for g in groups:
        expected = base_lr * MULTIPLIERS[g["name"]]
        assert abs(g["lr"] - expected) < 1e-12, f"{g['name']}: lr {g['lr']}, expected {expected}"
    owner = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in owner, f"a parameter is in {owner[id(p)]} and {g['name']}"
            owner[id(p)] = g["name"]
    trainable = {id(p): n for n, p in named if p.requires_grad}
    assert set(owner) == set(trainable), (
        f"{len(set(trainable) - set(owner))} trainable parameters in no group, "
        f"{len(set(owner) - set(trainable))} grouped parameters not trainable"
    )
    for pid, name in trainable.items():
        part = "backbone" if name.startswith("encoder.") else "head"
        kind = "bias" if name.endswith("bias") else "weight"
        assert owner[pid] == f"{part}_{kind}", f"{name} is in {owner[pid]}"


def test_parameter_groups():
    net = _net()
    groups = parameter_groups(net, 0.01, MULTIPLIERS)
    _check_groups(groups, list(net.named_parameters()))
    by_name = {g["name"]: g["params"] for g in groups}
    assert any(p is net.encoder.bn1.bias for p in by_name["backbone_bias"]), "BN bias"
    assert any(p is net.encoder.bn1.weight for p in by_name["backbone_weight"]), "BN weight"
    assert any(p is net.decoders[0].conv4.bias for p in by_name["head_bias"]), "conv4 bias"
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.02, 0.1, 0.2]


def test_parameter_groups_look_through_a_wrapper_and_skip_frozen_parameters():
    net = _net()
    expected = parameter_groups(net, 0.01, MULTIPLIERS)

    class Wrapper(torch.nn.Module):  # DistributedDataParallel-like
        def __init__(self, module):
            super().__init__()
            self.module = module

    for wrapper in (Wrapper(net), types.SimpleNamespace(module=net)):
        groups = parameter_groups(wrapper, 0.01, MULTIPLIERS)
        assert [(g["name"], [id(p) for p in g["params"]]) for g in groups] == [
            (g["name"], [id(p) for p in g["params"]]) for g in expected
        ], f"{type(wrapper).__name__}: groups differ from the unwrapped network's"

    for p in net.encoder.parameters():
        p.requires_grad_(False)
    groups = parameter_groups(Wrapper(net), 0.01, MULTIPLIERS)
    names = [g["name"] for g in groups]
    assert names == ["head_weight", "head_bias"], f"frozen encoder gave groups {names}"
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters() if p.requires_grad}, "frozen grouped"


@pytest.mark.parametrize(
    "multipliers, named",
    [
        ({k: v for k, v in MULTIPLIERS.items() if k != "head_bias"}, ["head_bias"]),
        ({**MULTIPLIERS, "decoder_weight": 5.0}, ["decoder_weight"]),
        ({"encoder": 1.0, "head": 10.0}, ["backbone_weight", "encoder", "head"]),
    ],
)
def test_parameter_groups_reject_wrong_keys(multipliers, named):
    with pytest.raises(ValueError, match="lr_multipliers") as info:
        parameter_groups(_net(), 0.01, multipliers)
    for key in named:
        assert key in str(info.value), f"{key!r} not named in: {info.value}"


def test_iteration_milestones():
    assert iteration_milestones(1000, [1 / 3, 2 / 3]) == [333, 667]
    assert iteration_milestones(1000, [0.75, 0.25, 0.5]) == [250, 500, 750]
    assert iteration_milestones(10, [0.01]) == [1], "a milestone is at least iteration 1"
    for bad in (0, 1, 1.5, -0.25):
        with pytest.raises(ValueError, match=r"\(0, 1\)") as info:
            iteration_milestones(1000, [0.5, bad])
        assert str(bad) in str(info.value), f"{bad} not named in: {info.value}"


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("size", [(90, 150), (51, 100), (64, 64), (41, 29)])
def test_sliding_window_inferer_matches_the_reference_loop(size):
    net = _net().eval()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(sum(size)))
    inferer = SlidingWindowInferer(
        roi_size=(64, 64), overlap=0.25, sw_batch_size=4, mode="constant"
    )
    with torch.no_grad():
        bundle = inferer(image[None], MTNetPredictor(net, "csa"))[0]
    reference = reference_sliding_window(net, image, (64, 64), 0.25)
    assert bundle.shape == (2, *size), f"inferer output {tuple(bundle.shape)}"
    assert reference.shape == (2, *size), f"reference output {tuple(reference.shape)}"
    diff = (torch.as_tensor(bundle) - reference).abs().max().item()
    assert diff < 1e-5, f"{size}: max difference {diff}"


def test_reference_loop_averages_overlapping_windows():
    """Not a tautology of the inferer: on a 64x100 image the overlap (columns 36..63) is the mean
    of the two windows' logits."""
    net = _net().eval()
    image = torch.rand(3, 64, 100, generator=torch.Generator().manual_seed(0))
    out = reference_sliding_window(net, image, (64, 64), 0.25)
    with torch.no_grad():
        left = net(image[None, :, :, :64])[0][0]
        right = net(image[None, :, :, 36:])[0][0]
    assert torch.allclose(out[:, :, :36], left[:, :, :36], atol=1e-6)
    assert torch.allclose(out[:, :, 64:], right[:, :, 28:], atol=1e-6)
    mean = (left[:, :, 36:] + right[:, :, :28]) / 2
    assert torch.allclose(out[:, :, 36:64], mean, atol=1e-6), "overlap is not the mean"


@pytest.mark.parametrize(
    "size, roi, overlap",
    [(64, 64, 0.25), (65, 64, 0.25), (90, 64, 0.25), (150, 64, 0.25), (600, 256, 0.25)]
    + [(1000, 256, 0.25), (775, 256, 0.5), (300, 256, 0.0), (100, 64, 0.9), (70, 8, 0.99)],
)
def test_window_starts_match_dense_patch_slices(size, roi, overlap):
    interval = roi if size == roi else max(1, int(roi * (1 - overlap)))  # _get_scan_interval
    slices = dense_patch_slices((size, roi), (roi, roi), (interval, roi))
    expected = sorted({s[0].start for s in slices})
    got = window_starts(size, roi, overlap)
    assert got == expected, f"window_starts({size}, {roi}, {overlap}) = {got}, MONAI {expected}"
    assert got[0] == 0 and got[-1] + roi == size, f"windows {got} do not cover {size}"
