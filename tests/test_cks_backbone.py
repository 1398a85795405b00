"""Tests of the CKS (LACSS) backbones (d2ext.cks.backbone) and flax-style init (d2ext.cks.init)."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from d2ext.cks.backbone import Block, ConvNeXt, LacssFPN, drop_path
from d2ext.cks.init import init_lacss_

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
RES = ["res2", "res3", "res4", "res5"]


def _count(module: nn.Module, skip: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not (skip and n.startswith(skip)))


@pytest.fixture
def cfg():
    """detectron2 default config plus the CKS backbone keys (defaults of the spec)."""
    c = get_cfg()
    c.MODEL.CONVNEXT = CN()
    c.MODEL.CONVNEXT.DEPTHS = [3, 3, 27, 3]
    c.MODEL.CONVNEXT.DIMS = [96, 192, 384, 768]
    c.MODEL.CONVNEXT.DROP_PATH_RATE = 0.4
    c.MODEL.CONVNEXT.LAYER_SCALE_INIT = 1e-6
    c.MODEL.CONVNEXT.OUT_FEATURES = list(RES)
    c.MODEL.LACSS_FPN = CN()
    c.MODEL.LACSS_FPN.IN_FEATURES = list(RES)
    c.MODEL.LACSS_FPN.OUT_CHANNELS = 384
    c.MODEL.DEVICE = "cpu"
    return c


def test_parameter_counts():
    with torch.device("meta"):
        net = ConvNeXt(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
        fpn = LacssFPN(net, RES, out_channels=384)
    assert _count(net) == 49_453_152, f"ConvNeXt-S has {_count(net)} parameters"
    n_fpn = _count(fpn, skip="bottom_up.")
    assert n_fpn == 4_536_960, f"LacssFPN(96..768 -> 384) has {n_fpn} parameters"


def test_tiny_shapes_and_strides():
    torch.manual_seed(0)
    fpn = LacssFPN(ConvNeXt(**TINY), RES, out_channels=12).eval()
    assert fpn.size_divisibility == 32 and fpn.bottom_up.size_divisibility == 32
    x = torch.randn(2, 3, 64, 96)
    bu = fpn.bottom_up(x)
    for k, name in enumerate(RES):
        s = 4 * 2**k
        assert bu[name].shape == (2, TINY["dims"][k], 64 // s, 96 // s), f"{name}: {bu[name].shape}"
    out = fpn(x)
    shapes = fpn.output_shape()
    assert list(out) == ["p2", "p3", "p4", "p5"], f"{list(out)}"
    for k, name in enumerate(out):
        s = 4 * 2**k
        assert shapes[name] == ShapeSpec(channels=12, stride=s), f"{name}: {shapes[name]}"
        assert out[name].shape == (2, 12, 64 // s, 96 // s), f"{name}: {out[name].shape}"
        assert (out[name] >= 0).all(), f"{name} is not ReLU'd"


def test_convnext_out_features_subset_builds_needed_stages_only():
    net = ConvNeXt(**TINY, out_features=("res3",))
    assert len(net.stages) == 2 and net.size_divisibility == 8, f"{len(net.stages)} stages"
    out = net(torch.randn(1, 3, 32, 32))
    assert list(out) == ["res3"] and out["res3"].shape == (1, 16, 4, 4), f"{out['res3'].shape}"


def _reference_forward(fpn: LacssFPN, x: torch.Tensor):
    """Hand-written LACSS ConvNeXt + FPN forward (eval) from the module's parameters."""
    p = dict(fpn.named_parameters())

    def ln2d(t, pre):
        t = t.permute(0, 2, 3, 1)
        t = F.layer_norm(t, t.shape[-1:], p[pre + ".weight"], p[pre + ".bias"], 1e-6)
        return t.permute(0, 3, 1, 2)

    feats = []
    for k in range(4):
        d = f"bottom_up.downsample_layers.{k}"
        if k == 0:
            x = F.conv2d(x, p[d + ".0.weight"], p[d + ".0.bias"], stride=4)
            x = ln2d(x, d + ".1")
        else:
            x = F.conv2d(ln2d(x, d + ".0"), p[d + ".1.weight"], p[d + ".1.bias"], stride=2)
        b = f"bottom_up.stages.{k}.0"
        dim = x.shape[1]
        y = F.conv2d(x, p[b + ".dwconv.weight"], p[b + ".dwconv.bias"], padding=3, groups=dim)
        y = ln2d(y, b + ".norm").permute(0, 2, 3, 1)
        y = F.linear(y, p[b + ".pwconv1.weight"], p[b + ".pwconv1.bias"])
        y = 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
        y = F.linear(y, p[b + ".pwconv2.weight"], p[b + ".pwconv2.bias"]) * p[b + ".gamma"]
        x = x + y.permute(0, 3, 1, 2)
        feats.append(x)
    lat = [
        F.relu(F.conv2d(f, p[f"fpn_lateral{k + 2}.weight"], p[f"fpn_lateral{k + 2}.bias"]))
        for k, f in enumerate(feats)
    ]
    outs = {"p5": lat[3]}
    for k in (2, 1, 0):
        up = outs[f"p{k + 3}"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        w, b = p[f"fpn_output{k + 2}.weight"], p[f"fpn_output{k + 2}.bias"]
        outs[f"p{k + 2}"] = F.relu(F.conv2d(up + lat[k], w, b, padding=1))
    return outs


def test_forward_matches_hand_written_reference():
    torch.manual_seed(0)
    fpn = LacssFPN(ConvNeXt(**TINY, layer_scale_init=0.5, drop_path_rate=0.3), RES, 12).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out, ref = fpn(x), _reference_forward(fpn, x)
    for name in ref:
        err = (out[name] - ref[name]).abs().max().item()
        assert err < 1e-5, f"{name} differs from the reference by {err}"


def test_top_down_wiring():
    """p5 feeds p4 only through the top-down path: zeroing p5's lateral changes p4, not p4's
    lateral; the coarsest level has no 3x3 conv."""
    torch.manual_seed(0)
    fpn = LacssFPN(ConvNeXt(**TINY), RES, 12).eval()
    assert not hasattr(fpn, "fpn_output5") and hasattr(fpn, "fpn_output4")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = fpn(x)
        fpn.fpn_lateral5.weight.zero_()
        fpn.fpn_lateral5.bias.fill_(-1.0)  # ReLU -> p5 == 0
        after = fpn(x)
    assert after["p5"].abs().max() == 0, "coarsest output is not ReLU(lateral)"
    for name in ("p4", "p3", "p2"):
        assert not torch.allclose(before[name], after[name]), f"{name} ignores the top-down path"


def test_drop_path_rates_and_eval_identity():
    torch.manual_seed(0)
    net = ConvNeXt(depths=(1, 2, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.4)
    rates = [blk.drop_path.rate for stage in net.stages for blk in stage]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4]), f"{rates}"
    blk = Block(8, drop_path_rate=0.9, layer_scale_init=1.0).eval()
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        y1, y2 = blk(x), blk(x)
    assert torch.equal(y1, y2), "drop path is not the identity in eval mode"
    branch = torch.ones(64, 3, 2, 2)
    torch.manual_seed(1)
    out = drop_path(branch, 0.5, training=True)
    per_sample = out.flatten(1)
    assert ((per_sample == 0) | (per_sample == 2)).all(), "kept samples not scaled by 1/keep"
    assert (per_sample.std(dim=1) == 0).all(), "drop path is not per sample"
    assert 0 < (per_sample[:, 0] == 0).sum() < 64, "no sample or every sample dropped"


def test_gelu_is_tanh_approximation():
    blk = Block(8)
    assert isinstance(blk.act, nn.GELU) and blk.act.approximate == "tanh", f"{blk.act}"
    assert blk.norm.eps == 1e-6 and blk.dwconv.kernel_size == (7, 7) and blk.dwconv.groups == 8
    assert blk.gamma.detach().eq(1e-6).all(), "layer scale not initialised to 1e-6"


def test_convnext_builder(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_lacss_convnext_backbone"
    cfg.MODEL.CONVNEXT.DEPTHS = list(TINY["depths"])
    cfg.MODEL.CONVNEXT.DIMS = list(TINY["dims"])
    cfg.MODEL.LACSS_FPN.OUT_CHANNELS = 16
    net = build_backbone(cfg)
    assert isinstance(net, LacssFPN) and isinstance(net.bottom_up, ConvNeXt), f"{type(net)}"
    rates = [blk.drop_path.rate for stage in net.bottom_up.stages for blk in stage]
    assert rates[-1] == pytest.approx(0.4), f"{rates}"
    out = net(torch.randn(1, 3, 64, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 16, 16, 8),
        "p3": (1, 16, 8, 4),
        "p4": (1, 16, 4, 2),
        "p5": (1, 16, 2, 1),
    }


def test_resnet_builder(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_lacss_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.LACSS_FPN.OUT_CHANNELS = 32
    net = build_backbone(cfg).eval()
    assert net.size_divisibility == 32, f"{net.size_divisibility}"
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p2", "p3", "p4", "p5"], f"{list(out)}"
    for k, (name, v) in enumerate(out.items()):
        s = 4 * 2**k
        assert v.shape == (1, 32, 64 // s, 96 // s), f"{name}: {v.shape}"
        assert net.output_shape()[name] == ShapeSpec(channels=32, stride=s)


def test_init_lecun_statistics():
    torch.manual_seed(0)
    lin = nn.Linear(1024, 512)
    init_lacss_(lin)
    std = lin.weight.std().item()
    assert abs(std - math.sqrt(1 / 1024)) < 0.02 * math.sqrt(1 / 1024), f"std {std}"
    bound = 2 / 0.87962566103423978 * math.sqrt(1 / 1024)
    assert lin.weight.abs().max() <= bound + 1e-7, "not truncated at 2 sigma"
    assert lin.bias.eq(0).all()
    init_lacss_(lin, "he")
    std = lin.weight.std().item()
    assert abs(std - math.sqrt(2 / 1024)) < 0.02 * math.sqrt(2 / 1024), f"he std {std}"


def test_init_conv_transpose_fan_in_norms_and_gamma():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ConvTranspose2d(256, 8, 4, stride=2),  # flax fan_in 256*16; torch's own 8*16
        nn.Conv2d(64, 64, 7, groups=64),  # depthwise: fan_in 49
        nn.GroupNorm(4, 8),
        Block(16),
    )
    for m in model.modules():
        for name in ("weight", "bias"):
            if isinstance(getattr(m, name, None), nn.Parameter):
                nn.init.uniform_(getattr(m, name), 2, 3)
    model[3].gamma.data.fill_(0.25)
    init_lacss_(model)
    for m, fan_in in ((model[0], 256 * 16), (model[1], 49)):
        std = m.weight.std().item()
        assert abs(std / math.sqrt(1 / fan_in) - 1) < 0.05, f"{type(m).__name__} std {std}"
        assert m.bias.eq(0).all()
    blk = model[3]
    for norm in (model[2], blk.norm):
        assert norm.weight.eq(1).all() and norm.bias.eq(0).all(), f"{norm}"
    assert blk.gamma.eq(0.25).all(), "layer-scale gamma was touched"
    assert blk.pwconv1.bias.eq(0).all() and blk.dwconv.bias.eq(0).all()


def test_init_unknown_scheme():
    with pytest.raises(ValueError, match="MODEL.CKS.INIT"):
        init_lacss_(nn.Linear(2, 2), "xavier")
