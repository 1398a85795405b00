"""LA evaluation = the reference UA-MT ``test_single_case`` sliding window (probabilities averaged).

``SlidingWindowInferer(overlap=la_overlap(...), mode="constant")`` over a ``ProbabilityNet`` must
give the same probability map as the reference loop written out below (pad to the patch when
smaller, windows at ``min(stride * i, size - patch)``, sigmoid/softmax per window, accumulate score
and count, divide, crop the padding), and ``la_overlap`` must give MONAI exactly the LA strides.
``SliceVolumeInferer`` is checked against a per-slice loop with the same resizing.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval

from monai_bundles.common.inferers import ProbabilityNet, SliceVolumeInferer, la_overlap
from monai_bundles.common.reference_inference import reference_sliding_window


def _net(out_channels: int, seed: int = 0) -> torch.nn.Module:
    """A tiny 3D net (B, 1, *spatial) -> logits (B, out_channels, *spatial); zero padding makes
    its output depend on where a window starts, so misplaced windows would show."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, out_channels, 3, padding=1),
    ).eval()


def test_la_overlap_gives_exact_la_strides():
    overlap = la_overlap((112, 112, 80), (18, 18, 4))
    assert _get_scan_interval((200, 150, 88), (112, 112, 80), 3, overlap) == (18, 18, 4)
    assert la_overlap() == overlap
    with pytest.raises(ValueError, match="stride"):
        la_overlap((32, 32), (40, 4))


@pytest.mark.parametrize("shape", [(60, 50, 40), (28, 50, 20)])  # larger than / padded to roi
@pytest.mark.parametrize("out_channels", [1, 3])
def test_sliding_window_matches_reference_loop(shape, out_channels):
    roi, strides = (32, 32, 24), (6, 6, 4)
    net = _net(out_channels)
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    inferer = SlidingWindowInferer(
        roi_size=roi,
        overlap=la_overlap(roi, strides),
        sw_batch_size=3,
        mode="constant",
        progress=False,
    )
    with torch.no_grad():
        ours = inferer(torch.from_numpy(image)[None, None], ProbabilityNet(net))[0].numpy()
    ref = reference_sliding_window(net, image, roi, strides, out_channels)
    assert ours.shape == ref.shape == (out_channels, *shape)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_probability_net_uses_network1_or_averages():
    x = torch.randn(2, 1, 8, 8, 8)
    net1, net2 = _net(3, seed=1), _net(3, seed=2)
    with torch.no_grad():
        p1, p2 = torch.softmax(net1(x), 1), torch.softmax(net2(x), 1)
        torch.testing.assert_close(ProbabilityNet([net1, net2])(x), p1)
        torch.testing.assert_close(ProbabilityNet([net1, net2], ensemble=True)(x), (p1 + p2) / 2)
        binary = _net(1)
        torch.testing.assert_close(ProbabilityNet(binary)(x), torch.sigmoid(binary(x)))


def test_slice_volume_inferer_matches_per_slice_loop():
    torch.manual_seed(0)
    net2d = torch.nn.Conv2d(1, 4, 3, padding=1).eval()
    prob_net = ProbabilityNet(net2d)
    volume = torch.rand(1, 1, 5, 40, 30)  # (B, C, D, H, W)
    with torch.no_grad():
        ours = SliceVolumeInferer(roi_size=(64, 64), sw_batch_size=2)(volume, prob_net)
        ref = torch.stack(
            [
                F.interpolate(
                    prob_net(F.interpolate(volume[:, :, k], size=(64, 64), mode="bilinear")),
                    size=(40, 30),
                    mode="bilinear",
                )
                for k in range(volume.shape[2])
            ],
            dim=2,
        )
    assert ours.shape == (1, 4, 5, 40, 30)
    torch.testing.assert_close(torch.as_tensor(ours), ref)


def _bn_net(seed: int = 0) -> torch.nn.Module:
    """3D net with BatchNorm after a conv and after a transposed conv, non-trivial statistics."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.BatchNorm3d(4),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 4, 2, stride=2),
        torch.nn.ConvTranspose3d(4, 4, 2, stride=2),
        torch.nn.BatchNorm3d(4),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 2, 1),
    )
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_optimized_probability_net_matches_reference_and_follows_weight_updates(compile_):
    """BatchNorm folding + channels-last (+ inductor-frozen compilation): same windows'
    probabilities as the reference loop, no BatchNorm left in the inference copy, and a weight
    update reaches the next evaluation (frozen constants are rebuilt, not reused)."""
    roi, strides = (16, 16, 8), (6, 6, 4)
    net = _bn_net()
    image = np.random.default_rng(1).standard_normal((30, 26, 14)).astype(np.float32)
    inferer = SlidingWindowInferer(
        roi_size=roi,
        overlap=la_overlap(roi, strides),
        mode="constant",
        sw_batch_size=4,
        progress=False,
    )  # last batch smaller
    fast = ProbabilityNet(net, optimize=True, compile=compile_).eval()
    with torch.no_grad():
        ours = inferer(torch.from_numpy(image)[None, None], fast)[0].numpy()
    np.testing.assert_allclose(
        ours, reference_sliding_window(net, image, roi, strides, 2), atol=1e-5
    )
    copies = fast._inference_copies
    assert len(copies) == 1 and not any(
        isinstance(m, torch.nn.BatchNorm3d) for m in copies[0].modules()
    )
    assert all(isinstance(m, torch.nn.BatchNorm3d) for m in (net[1], net[5]))  # original intact
    with torch.no_grad():
        net[0].weight.mul_(-1.0)  # an optimizer step changes parameters in place like this
        after = inferer(torch.from_numpy(image)[None, None], fast)[0].numpy()
    np.testing.assert_allclose(
        after, reference_sliding_window(net, image, roi, strides, 2), atol=1e-5
    )
    assert np.abs(after - ours).max() > 1e-3


def test_compiled_probability_net_falls_back_to_eager(monkeypatch):
    """A compiler that fails (no C++ compiler, say) warns once and the eager copy answers."""

    def broken(*args, **kwargs):
        def fail(x):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    net, x = _bn_net(), torch.randn(2, 1, 8, 8, 8)
    fast = ProbabilityNet(net, optimize=True, compile=True).eval()
    with pytest.warns(UserWarning, match="no compiler here"):
        out = fast(x)
    with torch.no_grad():
        torch.testing.assert_close(out, torch.softmax(net(x), 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(fast(x), out)  # no second warning needed: eager from now on
