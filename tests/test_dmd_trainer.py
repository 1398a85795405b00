"""DMDTrainer: two networks, supervised + distillation losses, MONAI iteration events."""

import copy
import logging

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler
from monai.losses import DiceLoss

from monai_bundles.common.networks import UNet2D, VNet
from monai_bundles.common.stats import loss_terms
from monai_bundles.common.two_stream import EpochTwoStreamLoader, labeled_prepare_batch
from monai_bundles.dmd.losses import DMDLoss
from monai_bundles.dmd.trainer import LOSS_TERMS, DMDTrainer

torch.set_num_threads(1)

CASES = {
    # name: (network builder, image spatial shape, classes in the label, supervised loss)
    "vnet3d": (lambda: VNet(n_filters=4), (16, 16, 16), 2, lambda: DiceLoss(sigmoid=True)),
    "unet2d": (
        lambda: UNet2D(class_num=3),
        (32, 32),
        3,
        lambda: DiceLoss(softmax=True, to_onehot_y=True),
    ),
}


def _two_stream(spatial, classes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = [
        (
            {
                "image": torch.rand(2, 1, *spatial, generator=g),
                "label": torch.randint(0, classes, (2, 1, *spatial), generator=g).float(),
            },
            {"image": torch.rand(2, 1, *spatial, generator=g)},
        )
        for _ in range(steps)
    ]
    return EpochTwoStreamLoader(
        [b[0] for b in batches], [b[1] for b in batches], epoch_length=steps
    )


def _trainer(net1, net2, loader, sup_loss, lambda_distill=4.0, detach_target=False, **kwargs):
    params = list(net1.parameters()) + list(net2.parameters())
    return DMDTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network1=net1,
        network2=net2,
        optimizer=torch.optim.SGD(params, lr=0.1),
        sup_loss_function=sup_loss,
        distill_loss_function=DMDLoss(temperature=2.0, detach_target=detach_target),
        lambda_distill=lambda_distill,
        **kwargs,
    )


class _ListHandler(logging.Handler):
    def __init__(self, messages):
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_iterations_train_both_networks(case):
    build, spatial, classes, sup_loss = CASES[case]
    torch.manual_seed(0)
    net1, net2 = build(), build()
    before = [copy.deepcopy(n.state_dict()) for n in (net1, net2)]
    logger, messages = logging.getLogger(f"dmd_test_{case}"), []
    logger.setLevel(logging.INFO)
    logger.addHandler(_ListHandler(messages))
    stats = StatsHandler(name=logger.name, output_transform=loss_terms, iteration_log=True)
    trainer = _trainer(
        net1, net2, _two_stream(spatial, classes, 2), sup_loss(), train_handlers=[stats]
    )
    counts = {event: 0 for event in IterationEvents}
    for event in counts:
        trainer.add_event_handler(event, lambda _, e=event: counts.__setitem__(e, counts[e] + 1))
    trainer.run()

    assert trainer.state.iteration == 2, f"ran {trainer.state.iteration} iterations"
    for event in ("FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"):
        fired = counts[IterationEvents[event]]
        assert fired == 2, f"{event} fired {fired} times in 2 iterations"
    out = trainer.state.output
    expected = {"image", "label", "pred", "loss", "loss_sup1", "loss_sup2", "loss_distill"}
    assert expected <= set(out), f"output keys {sorted(out)}"
    assert out["image"].shape == (4, 1, *spatial) and out["label"].shape == (2, 1, *spatial)
    assert out["pred"].shape[0] == 2, f"pred has {out['pred'].shape[0]} images, expected 2"
    assert torch.is_tensor(out["loss"]) and out["loss"].ndim == 0, f"loss {out['loss']!r}"
    assert torch.isfinite(out["loss"]), f"loss {out['loss']}"
    parts = [out[k] for k in ("loss_sup1", "loss_sup2", "loss_distill")]
    assert all(isinstance(v, float) and v == v and v >= 0 for v in parts), f"parts {parts}"
    total = parts[0] + parts[1] + 4.0 * parts[2]  # reference: sup1 + sup2 + lam * loss_kd
    assert abs(out["loss"].item() - total) < 1e-4, f"loss {out['loss'].item()} != {total}"
    logged = [m for m in messages if "loss_distill:" in m and "loss_sup2:" in m]
    assert len(logged) == 2, f"StatsHandler logged {messages}"
    for net, state in zip((net1, net2), before):
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, state[k])]
        assert len(changed) > len(state) // 2, f"only {len(changed)}/{len(state)} tensors changed"


def _net1_after_one_step(net2_seed, lambda_distill, detach_target=False):
    build, spatial, classes, sup_loss = CASES["vnet3d"]
    torch.manual_seed(0)
    net1 = build()
    torch.manual_seed(net2_seed)
    net2 = build()
    loader = _two_stream(spatial, classes, 1)
    _trainer(net1, net2, loader, sup_loss(), lambda_distill, detach_target).run()
    return net1.state_dict()


def test_lambda_zero_trains_the_networks_independently():
    alone = _net1_after_one_step(net2_seed=1, lambda_distill=0.0)
    other_partner = _net1_after_one_step(net2_seed=2, lambda_distill=0.0)
    assert all(
        torch.equal(v, other_partner[k]) for k, v in alone.items()
    ), "with lambda 0 network1's update depends on network2"
    coupled = _net1_after_one_step(net2_seed=1, lambda_distill=4.0)
    coupled_other = _net1_after_one_step(net2_seed=2, lambda_distill=4.0)
    assert not all(
        torch.equal(v, coupled_other[k]) for k, v in coupled.items()
    ), "with lambda 4 network1 ignores network2"


def test_lambda_zero_matches_a_plain_supervised_step():
    """Network1's DMD update with lambda 0 is a supervised SGD step on the same joint batch."""
    build, spatial, classes, sup_loss = CASES["vnet3d"]
    dmd_net1 = _net1_after_one_step(net2_seed=1, lambda_distill=0.0)
    torch.manual_seed(0)
    net = build().train()
    step = next(iter(_two_stream(spatial, classes, 1)))
    images = torch.cat([step["labeled"]["image"], step["unlabeled"]["image"]])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    sup_loss()(net(images)[:2], step["labeled"]["label"]).backward()
    optimizer.step()
    for key, value in net.state_dict().items():
        assert torch.allclose(value.float(), dmd_net1[key].float(), atol=1e-6), f"{key} differs"


def test_detached_targets_still_couple_the_networks():
    a = _net1_after_one_step(net2_seed=1, lambda_distill=4.0, detach_target=True)
    b = _net1_after_one_step(net2_seed=2, lambda_distill=4.0, detach_target=True)
    assert not all(torch.equal(v, b[k]) for k, v in a.items()), "detached target had no effect"


def test_each_network_gets_lambda_times_the_distillation_gradient():
    """With the symmetric Dice term, gradients through both sides (reference code, the term added
    once) and detached per-direction targets give each network the same gradient
    lambda * dL_distill/dtheta_i, hence the same SGD step; doubling the shared term would not."""
    shared = _net1_after_one_step(net2_seed=1, lambda_distill=4.0, detach_target=False)
    detached = _net1_after_one_step(net2_seed=1, lambda_distill=4.0, detach_target=True)
    for key, value in shared.items():
        assert torch.allclose(value.float(), detached[key].float(), atol=1e-6), f"{key} differs"
    doubled = _net1_after_one_step(net2_seed=1, lambda_distill=8.0, detach_target=True)
    assert not all(
        torch.allclose(v.float(), doubled[k].float(), atol=1e-6) for k, v in shared.items()
    ), "the distillation weight has no effect"


def test_bad_batch_fails_loudly():
    build, spatial, classes, sup_loss = CASES["vnet3d"]
    trainer = _trainer(build(), build(), [{"image": torch.rand(2, 1, *spatial)}], sup_loss())
    with pytest.raises(AssertionError, match="labeled"):
        trainer.run()


def test_loss_terms_and_labeled_prepare_batch_the_configs_name():
    """The named functions train.json / train_supervised.json use instead of lambdas."""
    dmd_out = {
        "image": torch.zeros(2),
        "pred": torch.zeros(2),
        "loss": torch.tensor(1.5),
        "loss_sup1": 0.5,
        "loss_sup2": 0.25,
        "loss_distill": torch.tensor(0.75),
    }
    assert loss_terms(dmd_out) == {
        "loss": 1.5,
        "loss_sup1": 0.5,
        "loss_sup2": 0.25,
        "loss_distill": 0.75,
    }
    assert set(loss_terms(dmd_out)) == set(LOSS_TERMS)
    assert loss_terms({"image": torch.zeros(1), "loss": torch.tensor(2.0)}) == {"loss": 2.0}
    with pytest.raises(KeyError, match="no key starting with 'loss'"):
        loss_terms({"image": torch.zeros(1)})
    labeled = {"image": torch.ones(2, 1, 4, 4), "label": torch.zeros(2, 1, 4, 4)}
    image, label = labeled_prepare_batch(
        {"labeled": labeled, "unlabeled": {"image": None}}, torch.device("cpu"), False
    )
    assert torch.equal(image, labeled["image"]) and torch.equal(label, labeled["label"])
    with pytest.raises(KeyError, match="'labeled'"):
        labeled_prepare_batch(labeled, torch.device("cpu"))
