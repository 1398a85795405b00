"""DMD networks: the papers' V-Net (LA) and SSL4MIS 2D U-Net (ACDC)."""

import pytest
import torch

from monai_bundles.common.networks import UNet2D, VNet

torch.set_num_threads(1)


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_vnet_shapes_and_size():
    net = VNet(n_channels=1, n_classes=1, n_filters=4).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 32, 16, 48))
    assert out.shape == (2, 1, 32, 16, 48), f"got {tuple(out.shape)}"
    two_class = VNet(n_classes=2, n_filters=4, has_dropout=True).eval()
    with torch.no_grad():
        assert two_class(torch.rand(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    full = _count(VNet(n_filters=16))
    assert 9.0e6 < full < 10.0e6, f"V-Net (n_filters=16) has {full} parameters, expected ~9.4M"


def test_vnet_rejects_indivisible_sizes():
    with pytest.raises(AssertionError, match="divisible by 16"):
        VNet(n_filters=4)(torch.rand(1, 1, 16, 16, 20))


def test_unet2d_shapes_and_size():
    net = UNet2D(in_chns=1, class_num=4).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 4, 32, 48), f"got {tuple(out.shape)}"
    count = _count(net)
    assert 1.7e6 < count < 1.9e6, f"UNet2D has {count} parameters, expected ~1.8M"


@pytest.mark.parametrize("build", [lambda: VNet(n_filters=4), lambda: UNet2D(class_num=2)])
def test_two_instances_differ(build):
    net1, net2 = build(), build()
    pairs = zip(net1.parameters(), net2.parameters())
    diffs = [not torch.equal(a, b) for a, b in pairs if a.ndim > 1]  # conv weights, not BN
    assert all(diffs), f"{diffs.count(False)} weight tensors identical between the two instances"
    torch.manual_seed(0)
    net3 = build()
    torch.manual_seed(0)
    net4 = build()
    same = all(torch.equal(a, b) for a, b in zip(net3.parameters(), net4.parameters()))
    assert same, "the same seed must give the same initialisation"
