"""CDMA networks: attention blocks vs the reference formulas, decoder order, output stride, feature
noise, backbone norm, pretrained loading, predictor and sizes (``monai_bundles.cdma.networks``)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from monai_bundles.cdma.networks import (
    CBAM,
    AttentionDecoder,
    ChannelAttention,
    FeatureNoise,
    FixedBatchNorm2d,
    MTNet,
    MTNetPredictor,
    SpatialAttention,
)
from sslseg.errors import InputError, MissingInputError

torch.set_num_threads(1)


def _small(**kwargs) -> MTNet:
    """A fast MTNet: ResNet18 encoder, 16-channel head."""
    kwargs.setdefault("encoder", "resnet18")
    kwargs.setdefault("decoder_channels", 16)
    return MTNet(**kwargs)


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _no_dropout(**kwargs) -> MTNet:
    return _small(aspp_dropout=0.0, decoder_dropout=(0.0, 0.0), **kwargs)


# hand computations of the reference formulas (core/deeplab_utils.py), without conv layers
def _channel_attention(x, w1, w2):
    def mlp(v):  # v (B, C) -> (B, C)
        return torch.relu(v @ w1.T) @ w2.T

    a = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    return x * a[:, :, None, None]


def _spatial_attention(x, w):
    k = w.shape[-1]
    p = k // 2
    m = F.pad(torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1), (p, p, p, p))
    h, wd = x.shape[2:]
    s = torch.zeros(x.shape[0], h, wd, dtype=x.dtype)
    for c in range(2):
        for i in range(k):
            for j in range(k):
                s += w[c, i, j] * m[:, c, i : i + h, j : j + wd]
    return x * torch.sigmoid(s)[:, None]


def test_channel_attention_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 6, generator=g)
    w1, w2 = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    ca = ChannelAttention(8, ratio=4)
    assert ca.fc1.weight.shape == (2, 8, 1, 1) and ca.fc1.bias is None and ca.fc2.bias is None
    with torch.no_grad():
        ca.fc1.weight.copy_(w1[:, :, None, None])
        ca.fc2.weight.copy_(w2[:, :, None, None])
        out = ca(x)
    expected = _channel_attention(x, w1, w2)
    assert torch.allclose(out, expected, atol=1e-6), f"max diff {(out - expected).abs().max()}"


def test_attention_hidden_width():
    assert ChannelAttention(304).fc1.out_channels == 19  # the reference's CBAM(304)
    assert ChannelAttention(256).fc1.out_channels == 16
    assert ChannelAttention(8).fc1.out_channels == 1  # max(1, C // 16), the reference gives 0


@pytest.mark.parametrize("kernel", [7, 3])
def test_spatial_attention_matches_hand_computation(kernel):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, 7, generator=g)
    w = torch.randn(2, kernel, kernel, generator=g) * 0.3
    sa = SpatialAttention(kernel)
    assert sa.conv1.weight.shape == (1, 2, kernel, kernel) and sa.conv1.bias is None
    with torch.no_grad():
        sa.conv1.weight.copy_(w[None])
        out = sa(x)
    expected = _spatial_attention(x, w)
    assert torch.allclose(out, expected, atol=1e-6), f"max diff {(out - expected).abs().max()}"


def test_cbam_is_channel_then_spatial():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 32, 6, 6, generator=g)
    w1, w2 = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    w = torch.randn(2, 7, 7, generator=g) * 0.3
    cbam = CBAM(32)  # ratio 16 -> hidden 2, kernel 7
    with torch.no_grad():
        cbam.ca.fc1.weight.copy_(w1[:, :, None, None])
        cbam.ca.fc2.weight.copy_(w2[:, :, None, None])
        cbam.sa.conv1.weight.copy_(w[None])
        out = cbam(x)
    expected = _spatial_attention(_channel_attention(x, w1, w2), w)
    assert torch.allclose(out, expected, atol=1e-6), f"max diff {(out - expected).abs().max()}"


@pytest.mark.parametrize("attention", ["csa", "sa", "ca", "none"])
def test_decoder_order(attention):
    """attention #1 on the concat (high + 48 ch), #2 on conv2 + GN output, before the ReLU."""
    dec = AttentionDecoder(attention, low_level_in=64, high_channels=24, decoder_channels=16)
    dec.eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].detach().clone(), output.detach().clone())

        return hook

    for name in ("attention1", "norm2", "attention2", "dropout2", "conv4"):
        getattr(dec, name).register_forward_hook(record(name))
    with torch.no_grad():
        out = dec(torch.randn(2, 24, 4, 5), torch.randn(2, 64, 16, 20))
    assert seen["attention1"][0].shape == (2, 24 + 48, 16, 20), f"{seen['attention1'][0].shape}"
    assert seen["attention2"][0].shape == (2, 16, 16, 20), f"{seen['attention2'][0].shape}"
    assert torch.equal(seen["attention2"][0], seen["norm2"][1]), "attention #2 must follow GN"
    assert torch.equal(seen["dropout2"][0], torch.relu(seen["attention2"][1])), "ReLU after #2"
    assert out.shape == (2, 2, 16, 20) and dec.conv4.bias is not None
    assert isinstance(dec.norm1, torch.nn.GroupNorm) and dec.norm1.num_groups == 4
    assert dec.norm1.num_channels == 48
    # in MTNet: attention #1 sees decoder_channels + low_level_channels
    net = _small(branches=("csa",))
    assert net.decoders[0].attention1.ca.fc1.in_channels == 16 + 48


def test_decoder_rejects_indivisible_low_level_channels():
    with pytest.raises(InputError, match="low_level_channels=50 .*norm_groups=4"):
        AttentionDecoder("csa", 64, 16, decoder_channels=16, low_level_channels=50)
    with pytest.raises(InputError, match="decoder_channels=18"):
        _small(decoder_channels=18)


@pytest.mark.parametrize("encoder,low_ch,high_ch", [("resnet18", 64, 512), ("resnet50", 256, 2048)])
def test_output_stride_16(encoder, low_ch, high_ch):
    net = MTNet(encoder=encoder, decoder_channels=16, branches=("none",)).eval()
    first = net.encoder.layer4[0]
    strided = first.conv2 if encoder == "resnet50" else first.conv1
    assert strided.stride == (1, 1) and first.downsample[0].stride == (1, 1)
    assert all(
        m.dilation == (1, 1) for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)
    )
    with torch.no_grad():
        low, high = net.encode(torch.rand(1, 3, 64, 96))
    assert low.shape == (1, low_ch, 16, 24), f"low-level {tuple(low.shape)}"
    assert high.shape == (1, high_ch, 4, 6), f"high-level {tuple(high.shape)}"


def test_layer4_dilation_2_matches_torchvision_deeplab_encoder():
    """resnet50 + layer4_dilation=2 = torchvision's replace_stride_with_dilation=[F, F, T]."""
    ref = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, False, True]
    )
    ref.eval()
    net = MTNet(encoder="resnet50", decoder_channels=16, branches=("none",), layer4_dilation=2)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    net.encoder.load_state_dict(state)
    net.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
        _, high = net.encode(x)
    assert high.shape == (1, 2048, 4, 4), f"{tuple(high.shape)}"
    assert torch.allclose(high, expected, atol=1e-5), f"max diff {(high - expected).abs().max()}"
    # BasicBlock (torchvision refuses dilation there): still stride 16, blocks 1.. dilated
    small = _small(layer4_dilation=2, branches=("none",)).eval()
    assert small.encoder.layer4[1].conv1.dilation == (2, 2)
    assert small.encoder.layer4[0].conv2.dilation == (1, 1)
    with torch.no_grad():
        assert small.encode(torch.rand(1, 3, 64, 64))[1].shape == (1, 512, 4, 4)


@pytest.mark.parametrize("branches", [("csa", "sa", "ca"), ("sa", "ca"), ("none",)])
def test_forward_shapes_train_and_eval(branches):
    net = _small(branches=branches, out_channels=3)
    x = torch.rand(2, 3, 64, 64)
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            outs = net(x)
        assert isinstance(outs, tuple) and len(outs) == len(branches), f"{len(outs)} outputs"
        assert all(o.shape == (2, 3, 64, 64) for o in outs), [tuple(o.shape) for o in outs]
    assert len(net.decoders) == len(branches)
    assert [d.attention_name for d in net.decoders] == list(branches)


def test_forward_branch_equals_forward_in_eval():
    net = _small().eval()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        outs = net(x)
        for i, name in enumerate(("csa", "sa", "ca")):
            for key in (name, i):
                z = net.forward_branch(x, key)
                assert torch.allclose(z, outs[i], atol=1e-5), f"{key}: {(z - outs[i]).abs().max()}"
    with pytest.raises(InputError, match=r"'cbam'.*\['csa', 'sa', 'ca'\]"):
        net.forward_branch(x, "cbam")
    with pytest.raises(InputError, match="branches"):
        net.forward_branch(x, 3)


def test_feature_noise_module():
    noise = FeatureNoise(0.3)
    x = torch.ones(4, 3, 5, 5)
    assert torch.equal(noise.eval()(x), x)
    y = noise.train()(x)
    assert ((y >= 0.7) & (y <= 1.3)).all() and not torch.equal(y, x)
    assert torch.equal(y[0], y[3]), "one draw (1, C, H, W) shared over the batch"
    assert not torch.equal(y, noise(x)), "each call draws anew"
    torch.manual_seed(5)
    a = noise(x)
    torch.manual_seed(5)
    assert torch.equal(a, noise(x)), "drawn from torch's default generator"
    assert torch.equal(FeatureNoise(0.0).train()(x), x)


def test_feature_noise_only_in_training():
    torch.manual_seed(0)
    net = _no_dropout(feature_noise=0.3)
    clean = _no_dropout(feature_noise=0.0)
    clean.load_state_dict(net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    net.eval(), clean.eval()
    with torch.no_grad():
        a, b, ref = net(x), net(x), clean(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b)), "eval must be deterministic"
    assert all(torch.equal(p, q) for p, q in zip(a, ref)), "no noise in eval mode"
    net.train(), clean.train()
    with torch.no_grad():
        noisy, ref = net(x), clean(x)
    for name, p, q in zip(net.branches, noisy, ref):
        assert (p - q).abs().max() > 1e-4, f"branch {name}: no feature noise in training"


def test_feature_noise_branches_selects_branches():
    net = _no_dropout(feature_noise=0.3, feature_noise_branches=["sa"]).train()
    clean = _no_dropout(feature_noise=0.0).train()
    clean.load_state_dict(net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        noisy, ref = net(x), clean(x)
    assert torch.allclose(noisy[0], ref[0], atol=1e-6) and torch.allclose(
        noisy[2], ref[2], atol=1e-6
    )
    assert (noisy[1] - ref[1]).abs().max() > 1e-4, "sa branch must get noise"
    none = _no_dropout(feature_noise=0.3, feature_noise_branches=[]).train()
    none.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(none(x), ref))


def test_feature_noise_independent_per_branch():
    x = torch.rand(2, 3, 64, 64)
    for noise in (0.3, 0.0):
        net = _no_dropout(branches=("csa", "csa"), feature_noise=noise).train()
        net.decoders[1].load_state_dict(net.decoders[0].state_dict())
        with torch.no_grad():
            a, b = net(x)
        if noise:
            assert (a - b).abs().max() > 1e-4, "the two branches must get independent noise"
        else:
            assert torch.allclose(a, b, atol=1e-6), f"max diff {(a - b).abs().max()}"


@pytest.mark.parametrize("per_branch", [True, False])
def test_dropout_before_each_decoder(per_branch):
    """Paper: a dropout mask per decoder; reference code (``dropout_per_branch=False``): one
    ASPP dropout mask shared by the decoders."""
    x = torch.rand(2, 3, 64, 64)
    net = _small(
        branches=("csa", "csa"),
        feature_noise=0.0,
        decoder_dropout=(0.0, 0.0),
        aspp_dropout=0.5,
        dropout_per_branch=per_branch,
    ).train()
    net.decoders[1].load_state_dict(net.decoders[0].state_dict())
    with torch.no_grad():
        a, b = net(x)
    differ = bool((a - b).abs().max() > 1e-4)
    assert differ == per_branch, f"per_branch={per_branch}: max diff {(a - b).abs().max()}"
    assert net.aspp.project[-1].p == (0.0 if per_branch else 0.5)
    with torch.no_grad():
        a, b = net.eval()(x)
    assert torch.allclose(a, b, atol=1e-6), "no dropout in eval mode"


def test_feature_noise_reproducible_from_default_generator():
    net = _no_dropout().train()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        a = net(x)
        torch.manual_seed(3)
        b = net(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_backbone_norm(norm):
    net = _small(backbone_norm=norm, branches=("csa",)).train()
    bns = [m for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FixedBatchNorm2d) == (norm == "frozen_bn") for m in bns)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items() if "running" in k}
    x = torch.rand(2, 3, 64, 64)
    net(x)[0].sum().backward()
    after = net.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if norm == "frozen_bn":
        assert not changed, f"frozen BN running statistics changed: {changed[:3]}"
        assert net.encoder.bn1.weight.grad is not None and net.encoder.bn1.weight.requires_grad
        with torch.no_grad():
            train_low = net.encode(x)[0]
            assert torch.equal(train_low, net.eval().encode(x)[0]), "frozen BN: train == eval"
    else:
        assert len(changed) == len(before), "trainable BN must update its running statistics"


def test_in_channels():
    net = _small(in_channels=1, branches=("sa",)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32))[0].shape == (1, 2, 32, 32)
    with pytest.raises(AssertionError, match="expects"):
        net(torch.rand(1, 3, 32, 32))


def test_pretrained_torchvision_state_dict(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    state = ref.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    for source in (path, tmp_path / "wrapped.pth"):
        if source.name == "wrapped.pth":  # {"state_dict": ...}, counters absent (old files)
            old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            torch.save({"state_dict": old}, source)
        net = _small(pretrained_weights=str(source), branches=("csa",))
        got = net.encoder.state_dict()
        for key, value in state.items():
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                continue
            assert torch.equal(got[key], value), f"{source.name}: {key} not loaded"


def test_pretrained_bad_files(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    extra = dict(state, **{"layer1.0.conv9.weight": torch.zeros(3)})
    bad = tmp_path / "extra.pth"
    torch.save(extra, bad)
    with pytest.raises(InputError) as err:
        _small(pretrained_weights=str(bad))
    assert str(bad) in str(err.value) and "layer1.0.conv9.weight" in str(err.value), err.value
    missing = {k: v for k, v in state.items() if k != "bn1.weight"}
    torch.save(missing, bad)
    with pytest.raises(InputError, match="missing keys: bn1.weight"):
        _small(pretrained_weights=str(bad))
    torch.save(state, bad)
    with pytest.raises(InputError, match=r"conv1.weight \(64, 3, 7, 7\) vs \(64, 1, 7, 7\)"):
        _small(pretrained_weights=str(bad), in_channels=1)
    with pytest.raises(InputError, match="missing keys"):  # resnet18 file into resnet50
        MTNet(encoder="resnet50", decoder_channels=16, pretrained_weights=str(bad))
    absent = tmp_path / "nope.pth"
    with pytest.raises(MissingInputError, match="nope.pth"):
        _small(pretrained_weights=str(absent))
    torch.save([1, 2], bad)
    with pytest.raises(InputError, match="not a state_dict"):
        _small(pretrained_weights=str(bad))


def test_pretrained_full_mtnet_round_trip(tmp_path):
    net = _small(backbone_norm="frozen_bn")
    path = tmp_path / "model.pt"
    torch.save({"net": net.state_dict(), "optimizer": {}}, path)
    loaded = _small(backbone_norm="frozen_bn", pretrained_weights=str(path))
    expected, got = net.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(InputError) as err:
        _small(branches=("csa", "sa"), pretrained_weights=str(path))
    assert str(path) in str(err.value) and "decoders.2." in str(err.value), err.value


def test_predictor():
    net = _small().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        csa = MTNetPredictor(net)(x)
        assert torch.equal(csa, net.forward_branch(x, "csa"))
        ensemble = MTNetPredictor(net, "ensemble")(x)
        probs = [torch.softmax(z, dim=1) for z in net(x)]
    expected = (probs[0] + probs[1] + probs[2]) / 3
    assert torch.allclose(ensemble, expected, atol=1e-6)
    assert torch.allclose(ensemble.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)
    predictor = MTNetPredictor(net, "ca")
    assert predictor.net is net  # a submodule: .eval()/.to() reach the network
    state = predictor.state_dict()  # the MTNet's own keys: a checkpoint's "net" entry loads
    assert "aspp.project.0.weight" in state and set(state) == set(net.state_dict())
    other = MTNetPredictor(_small(), "ca")
    other.load_state_dict(state)
    torch.testing.assert_close(other.net.state_dict(), net.state_dict())
    with pytest.raises(InputError, match=r"inference_branch 'csa'.*\['sa', 'ca'\]"):
        MTNetPredictor(_small(branches=("sa", "ca")), "csa")


def test_bad_config_keys():
    with pytest.raises(InputError, match="encoder 'resnet152'"):
        MTNet(encoder="resnet152")
    with pytest.raises(InputError, match="backbone_norm 'gn'"):
        _small(backbone_norm="gn")
    with pytest.raises(InputError, match="branches: unknown branch 'cbam'"):
        _small(branches=("csa", "cbam"))
    with pytest.raises(InputError, match="1 to 3"):
        _small(branches=("csa",) * 4)
    with pytest.raises(InputError, match="1 to 3"):
        _small(branches="csa")
    with pytest.raises(InputError, match="feature_noise_branches: unknown branch 'SA'"):
        _small(feature_noise_branches=["SA"])
    with pytest.raises(InputError, match="feature_noise -0.1"):
        _small(feature_noise=-0.1)


def test_parameter_counts():
    """Spec: resnet18 / 64-ch decoders ~12.5M; resnet50 / 256-ch 43.0M (no unused modules)."""
    bench = _count(MTNet(encoder="resnet18", decoder_channels=64, low_level_channels=48))
    paper = _count(MTNet(encoder="resnet50"))
    print(f"MTNet resnet18/64: {bench} parameters, resnet50/256: {paper}")
    assert abs(bench - 12.5e6) < 0.02 * 12.5e6, f"resnet18/64 MTNet has {bench} parameters"
    assert abs(paper - 43.0e6) < 0.02 * 43.0e6, f"resnet50/256 MTNet has {paper} parameters"
