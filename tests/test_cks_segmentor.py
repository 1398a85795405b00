"""CKS segmentor and collaborator units (CPU, seconds): crop geometry, batched patch gathering vs a
per-instance reference, the learned encoder's 2x2 window (rows floor-1 .. floor), output shapes
for empty / single / several instances, the fixed encodings, the ROIMasks paste, and the
collaborator's nets (presets, cell-type selection, bias-only norm, parameter counts).
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec

from d2ext.cks.collaborator import Collaborator, ImageNorm, resolve_collaborator_widths
from d2ext.cks.crops import crop_origins
from d2ext.cks.segmentor import InstanceSegmentor, gather_patches, paste_masks, sine_encoding

REPO = Path(__file__).resolve().parent.parent

S = 96
P = S // 4


def _segmentor(pos_encoding="learned", in_channels=8, conv_dims=(8, 8), **kwargs):
    torch.manual_seed(0)
    return InstanceSegmentor(
        in_feature="p2",
        in_channels=in_channels,
        conv_dims=conv_dims,
        mix_dim=6,
        crop_size=S,
        pos_encoding=pos_encoding,
        **kwargs,
    ).eval()


def _locations(height, width):
    """(y, x) px: interior, near every border and corner, exactly on grid lines, at the far edge."""
    return torch.tensor(
        [
            [50.3, 60.7],
            [0.2, 0.9],
            [3.99, 127.5],
            [4.0, 8.0],
            [height - 0.1, width - 0.1],
            [height - 30.0, 2.0],
            [17.5, width - 45.2],
        ]
    )


def _slow_patch(fmap_b, gy0, gx0, size):
    """One patch with zeros outside, via explicit padding and slicing."""
    pad = 3 * size
    padded = F.pad(fmap_b, (pad, pad, pad, pad))
    return padded[:, gy0 + pad : gy0 + pad + size, gx0 + pad : gx0 + pad + size]


def _slow_forward(seg, feat, locs):
    """Per-instance reference of InstanceSegmentor.forward for one image (feat (C, H, W))."""
    fmap = seg.mix(seg.convs(feat[None]))[0]
    height, width = feat.shape[-2:]
    out = []
    for y, x in locs.tolist():
        cy, cx = math.floor(y / 4), math.floor(x / 4)
        patch = _slow_patch(fmap, cy - P // 2, cx - P // 2, P)
        if seg.pos_encoding == "learned":
            cells = [
                feat[:, min(max(r, 0), height - 1), min(max(c, 0), width - 1)]
                for r in (cy - 1, cy)
                for c in (cx - 1, cx)
            ]
            vec = seg.encoder(torch.stack(cells).mean(0))
            h, w, c = seg.encoder_dims
            small = vec.reshape(h, w, c).permute(2, 0, 1)[None]
            enc = F.interpolate(small, size=(P, P), mode="bilinear", align_corners=False)
        else:
            enc = seg.fixed_encoding
        mixed = F.relu(patch[None] + seg.encoder_proj(enc))
        logit = F.interpolate(seg.deconv(mixed), size=(S, S), mode="bilinear", align_corners=False)
        out.append(logit[0, 0])
    return torch.stack(out)


def test_crop_origins_floor_minus_half_patch():
    locs = torch.tensor([[0.0, 0.0], [3.99, 4.0], [50.5, 7.2], [95.9, 200.1]])
    origins = crop_origins(locs, crop_size=S, stride=4)
    expected = torch.tensor(
        [[4 * (math.floor(y / 4) - 12), 4 * (math.floor(x / 4) - 12)] for y, x in locs.tolist()]
    )
    assert origins.dtype == torch.long, f"origins dtype {origins.dtype}"
    assert torch.equal(origins, expected), f"{origins.tolist()} != {expected.tolist()}"


def test_gather_patches_matches_per_instance_reference():
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 20, 28)
    origins = torch.tensor([[-12, -12], [0, 0], [10, 20], [-3, 25], [15, -20], [30, 40], [8, 2]])
    batch_idx = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    got = gather_patches(fmap, batch_idx, origins, P)
    assert got.shape == (7, 5, P, P), f"shape {tuple(got.shape)}"
    for n, (b, (gy0, gx0)) in enumerate(zip(batch_idx.tolist(), origins.tolist())):
        ref = _slow_patch(fmap[b], gy0, gx0, P)
        assert torch.equal(got[n], ref), f"patch {n} at {(gy0, gx0)} differs"
    # replicate: indices clamped to the map
    rep = gather_patches(fmap, batch_idx[:1], torch.tensor([[-1, -1]]), 2, padding="replicate")
    assert torch.equal(rep[0, :, 0, 0], fmap[0, :, 0, 0]) and torch.equal(
        rep[0, :, 1, 1], fmap[0, :, 0, 0]
    ), "replicate padding should clamp to cell (0, 0)"


@pytest.mark.parametrize("pos_encoding", ["learned", "linear", "sine"])
def test_forward_matches_per_instance_reference(pos_encoding):
    seg = _segmentor(pos_encoding)
    torch.manual_seed(1)
    feat = torch.randn(2, 8, 32, 40)  # image 128 x 160 px
    locs = [_locations(128, 160), _locations(128, 160)[[2, 0, 4]]]
    with torch.no_grad():
        outs = seg({"p2": feat, "p3": feat[:, :, ::2, ::2]}, locs)
        for b, ((logits, origins), loc) in enumerate(zip(outs, locs)):
            ref = _slow_forward(seg, feat[b], loc)
            assert torch.allclose(
                logits, ref, atol=1e-5
            ), f"{pos_encoding} image {b}: max diff {(logits - ref).abs().max():.2e}"
            assert torch.equal(origins, crop_origins(loc, S, 4)), f"origins {origins.tolist()}"


def test_learned_encoder_samples_rows_floor_minus_one_to_floor():
    seg = _segmentor("learned")
    seen = {}
    seg.encoder[0].register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0].detach()))
    feat = torch.zeros(1, 8, 16, 16)
    feat[0, :, 5, 9] = 1.0  # the only nonzero cell: rows 20..23 px, cols 36..39 px
    cells = [(r, c) for r in range(3, 8) for c in range(7, 12)]
    locs = torch.tensor([[4 * r + 1.5, 4 * c + 3.9] for r, c in cells])
    with torch.no_grad():
        seg({"p2": feat}, [locs])
    for (r, c), vec in zip(cells, seen["x"]):
        expect = 0.25 if (r in (5, 6) and c in (9, 10)) else 0.0
        assert torch.allclose(
            vec, torch.full_like(vec, expect)
        ), f"cell {(r, c)}: encoder input {vec[0].item()} != {expect}"
    # at the map corner the window is clamped (replicate) or zero-padded (LACSS 0.4.4)
    corner = torch.zeros(1, 8, 16, 16)
    corner[0, :, 0, 0] = 1.0
    with torch.no_grad():
        seg({"p2": corner}, [torch.tensor([[1.0, 2.0]])])
        assert torch.allclose(seen["x"], torch.ones(1, 8)), f"replicate: {seen['x'][0, 0]}"
        seg_zero = _segmentor("learned", encoder_padding="zeros")
        seg_zero.encoder[0].register_forward_pre_hook(lambda m, i: seen.update(x=i[0].detach()))
        seg_zero({"p2": corner}, [torch.tensor([[1.0, 2.0]])])
        assert torch.allclose(seen["x"], torch.full((1, 8), 0.25)), f"zeros: {seen['x'][0, 0]}"


@pytest.mark.parametrize("pos_encoding", ["learned", "linear", "sine"])
@pytest.mark.parametrize("counts", [(0,), (1,), (5,), (0, 5, 1), (0, 0)])
def test_output_shapes_and_gradients(pos_encoding, counts):
    seg = _segmentor(pos_encoding).train()
    torch.manual_seed(2)
    feat = torch.randn(len(counts), 8, 16, 24, requires_grad=True)
    locs = [torch.rand(n, 2) * torch.tensor([64.0, 96.0]) for n in counts]
    outs = seg({"p2": feat}, locs)
    assert len(outs) == len(counts), f"{len(outs)} outputs for {len(counts)} images"
    for (logits, origins), n in zip(outs, counts):
        assert logits.shape == (n, S, S), f"logits {tuple(logits.shape)} for N={n}"
        assert origins.shape == (n, 2) and origins.dtype == torch.long, f"origins {origins.shape}"
    total = sum(logits.sum() for logits, _ in outs)
    if sum(counts):
        total.backward()
        assert feat.grad is not None and feat.grad.abs().sum() > 0, "no gradient to the features"


def test_fixed_encodings():
    enc = sine_encoding(P)
    assert enc.shape == (16, P, P), f"sine shape {tuple(enc.shape)}"
    i = torch.arange(P, dtype=torch.float32)
    assert torch.allclose(enc[0, :, 3], torch.sin(i)) and torch.allclose(enc[1, :, 3], torch.cos(i))
    assert torch.allclose(enc[8 + 2, 7, :], torch.sin(i / 10000 ** (2 / 8)), atol=1e-6)
    lin = _segmentor("linear").fixed_encoding[0]
    assert lin.shape == (2, P, P) and lin[0, 0, 0] == -0.5
    assert float(lin[1, 0, 23]) == pytest.approx(23 / 24 - 0.5)
    assert torch.equal(lin[0, :, 5], torch.arange(P) / P - 0.5), "linear channel 0 must be y"


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_segmentor_parameter_counts_and_config():
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.CKS = CN()
    cfg.MODEL.CKS.SEGMENTOR = CN(
        dict(
            IN_FEATURE="p2",
            CONV_DIMS=[384] * 3,
            MIX_DIM=64,
            CROP_SIZE=96,
            POS_ENCODING="learned",
            ENCODER_DIMS=[8, 8, 4],
        )
    )
    shapes = {"p2": ShapeSpec(channels=384, stride=4), "p3": ShapeSpec(channels=384, stride=8)}
    seg = InstanceSegmentor(cfg, shapes)
    c = 384
    convs = 3 * (9 * c * c + 2 * c) + 9 * c * 64
    encoder = (c * 256 + 256) + 2 * (256 * 256 + 256) + 4 * 64
    deconv = 64 * 4 + 1
    assert _n_params(seg) == convs + encoder + deconv == 4_435_457, f"{_n_params(seg)}"
    cfg.MODEL.CKS.SEGMENTOR.POS_ENCODING = "linear"
    assert _n_params(InstanceSegmentor(cfg, shapes)) == convs + 2 * 64 + deconv
    cfg.MODEL.CKS.SEGMENTOR.POS_ENCODING = "sine"
    assert _n_params(InstanceSegmentor(cfg, shapes)) == convs + 16 * 64 + deconv


def _direct_placement(probs, origins, height, width):
    out = torch.zeros(len(probs), height, width, dtype=torch.bool)
    for n, (y0, x0) in enumerate(origins.tolist()):
        for r in range(S):
            for c in range(S):
                if 0 <= y0 + r < height and 0 <= x0 + c < width:
                    out[n, y0 + r, x0 + c] = probs[n, r, c] >= 0.5
    return out


def _blob_logits(n, seed=3):
    """Smooth disc-like logits with random centres and radii (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    cy, cx = 30 + 36 * torch.rand(n, 1, 1, generator=g), 30 + 36 * torch.rand(n, 1, 1, generator=g)
    radius = 10 + 20 * torch.rand(n, 1, 1, generator=g)
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    return (radius - dist) / 3 + 0.3 * torch.randn(n, S, S, generator=g)


def test_paste_scale_one_equals_direct_placement():
    logits = _blob_logits(6)
    origins = torch.tensor([[-40, -40], [0, 0], [20, 50], [100, -8], [-90, 100], [150, 150]])
    height, width = 130, 170
    got = paste_masks(logits, origins, (1.0, 1.0), (height, width), chunk_size=4)
    ref = _direct_placement(logits.sigmoid(), origins, height, width)
    assert got.dtype == torch.bool and got.shape == (6, height, width), f"{got.shape}"
    assert torch.equal(got, ref), f"mismatching pixels per instance {(got ^ ref).sum((1, 2))}"
    assert not got[5].any(), "a crop entirely outside the image pastes nothing"
    empty = paste_masks(logits[:0], origins[:0], (1.0, 1.0), (height, width))
    assert empty.shape == (0, height, width) and empty.dtype == torch.bool


def test_paste_scale_two_is_plausible():
    logits = _blob_logits(4, seed=4)
    origins = torch.tensor([[0, 0], [10, 40], [-20, 60], [50, 30]])
    small = paste_masks(logits, origins, (1.0, 1.0), (120, 160))
    big = paste_masks(logits, origins, (2.0, 2.0), (240, 320), chunk_size=3)
    upsampled = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    inter = (big & upsampled).sum((1, 2)).float()
    union = (big | upsampled).sum((1, 2)).float()
    area_ratio = big.sum((1, 2)).float() / small.sum((1, 2)).float()
    assert bool((inter / union > 0.9).all()), f"IoU vs upsampled {inter / union}"
    assert bool(((area_ratio > 3.8) & (area_ratio < 4.2)).all()), f"area ratios {area_ratio}"


def _collab_cfg(preset="paper", border_net="cnn", fg=(16, 32, 64), n=1):
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.CKS = CN()
    cfg.MODEL.CKS.COLLABORATOR = CN(
        dict(
            PRESET=preset,
            FG_UNET=list(fg),
            BORDER_CNN=[32, 32],
            BORDER_NET=border_net,
            NUM_CELL_TYPES=n,
        )
    )
    return cfg


def _unet_params(widths, in_ch=3):
    total, ch = 0, in_ch
    for w in widths:
        total += 9 * ch * w + w + 9 * w * w + w
        ch = w
    for w in list(widths[:-1])[::-1]:
        total += 9 * (ch + w) * w + w + 9 * w * w + w
        ch = w
    return total


def _cnn_params(widths, in_ch=3):
    total, ch = 0, in_ch
    for w in widths:
        total += 9 * ch * w + w
        ch = w
    return total


def _head(ch, n):
    return 9 * ch * n + n


@pytest.mark.parametrize(
    "preset,border_net,fg,expected",
    [
        ("paper", "cnn", (16, 32, 64), 128_834),
        ("code_0_4_4", "cnn", (16, 32, 64), None),
        ("paper", "unet", (16, 32, 64), None),
        ("paper", "cnn", (16, 32, 64, 128), None),
        ("code_0_4_4", "unet", (16, 32, 64), None),
    ],
)
def test_collaborator_presets_parameter_counts(preset, border_net, fg, expected):
    col = Collaborator(_collab_cfg(preset, border_net, fg))
    fg_w, border_w = resolve_collaborator_widths(preset, fg, (32, 32), border_net)
    if preset == "code_0_4_4":
        assert (fg_w, border_w) == ((32, 32), tuple(fg)), f"swap: {fg_w}, {border_w}"
    else:
        assert fg_w == tuple(fg), f"paper fg widths {fg_w}"
        assert border_w == ((32, 32) if border_net == "cnn" else tuple(fg)), f"border {border_w}"
    want = _unet_params(fg_w) + _head(fg_w[0], 1)
    if border_net == "cnn":
        want += _cnn_params(border_w) + _head(border_w[-1], 1)
    else:
        want += _unet_params(border_w) + _head(border_w[0], 1)
    assert _n_params(col) == want, f"{preset}/{border_net}/{fg}: {_n_params(col)} != {want}"
    if expected is not None:
        assert want == expected, f"paper a1/b1 count {want} != {expected}"


def test_collaborator_shapes_and_cell_type_selection():
    torch.manual_seed(0)
    col = Collaborator(fg_widths=(4, 8, 8), border_widths=(8,), num_cell_types=3).eval()
    images = torch.randn(3, 3, 64, 96)
    cell_types = torch.tensor([2, 0, 1])
    with torch.no_grad():
        fg, border = col(images, cell_types)
        full_fg = col.fg_head(col.fg_net(images))
        full_border = col.border_head(col.border_net(images))
        default_fg, _ = col(images[:1])
    assert fg.shape == border.shape == (3, 64, 96), f"{fg.shape}, {border.shape}"
    for b, t in enumerate(cell_types.tolist()):
        assert torch.equal(fg[b], full_fg[b, t]) and torch.equal(border[b], full_border[b, t])
    assert torch.allclose(
        default_fg[0], full_fg[0, 0], atol=1e-5
    ), "cell_types=None must select type 0"
    with pytest.raises(AssertionError):
        col(images, torch.tensor([0, 3, 1]))


def test_collaborator_code_preset_swaps_nets():
    col = Collaborator(_collab_cfg("code_0_4_4"))
    assert [blk[0][0].out_channels for blk in col.fg_net.encoder] == [32, 32]
    assert [blk[0].out_channels for blk in col.border_net] == [16, 32, 64]


def _fg_receptive_field(col: Collaborator, size: int = 129) -> int:
    """Side (px) of the input region that reaches the centre pixel of the fg logits, measured by
    the gradient with every per-image norm replaced by its bias (the norm's statistics would
    connect every pixel)."""
    for m in col.modules():
        if isinstance(m, ImageNorm):
            m.forward = lambda x, b=m.bias: x + b.view(1, -1, 1, 1)
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    fg, _ = col.double()(x)
    fg[0, size // 2, size // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)) > 0)
    return int(rows.max() - rows.min() + 1)


def test_collaborator_fg_receptive_fields():
    # README "Results": a1 sees the whole of a ~50 px ISBI cell (its dark nucleus from any pixel),
    # the code preset's fg UNet (32, 32) (configs/cks/isbi2014_points.yaml) a ~19 px neighbourhood
    torch.manual_seed(0)
    rf_a1 = _fg_receptive_field(Collaborator(_collab_cfg("paper")))
    rf_code = _fg_receptive_field(Collaborator(_collab_cfg("code_0_4_4")))
    assert 40 <= rf_a1 <= 50, f"a1 fg receptive field {rf_a1} px"
    assert 15 <= rf_code <= 23, f"code_0_4_4 fg receptive field {rf_code} px"


def test_isbi_configs_use_the_code_collaborator():
    from d2ext.config import build_cfg

    for name in ("isbi2014_points.yaml", "isbi2014_cpu.yaml"):
        cfg = build_cfg(REPO / "configs" / "cks" / name)
        args = Collaborator.from_config(cfg)
        assert tuple(args["fg_widths"]) == (32, 32), f"{name}: fg widths {args['fg_widths']}"
        assert cfg.MODEL.CKS.LOSS.COLLAPSE_WEIGHT == 0.05, f"{name}: delta"


def test_norm_is_per_image_per_channel_with_bias_only():
    torch.manual_seed(0)
    col = Collaborator(_collab_cfg())
    norms = [m for m in col.modules() if isinstance(m, ImageNorm)]
    assert len(norms) == 10 + 2, f"{len(norms)} norms"  # UNet 3x2 + 2x2, border CNN 2
    for norm in norms:
        names = [name for name, _ in norm.named_parameters()]
        assert names == ["bias"], f"norm parameters {names}"
    assert not any(isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) for m in col.modules())
    norm = ImageNorm(4)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.randn(2, 4, 9, 11) * 3 + 1
    gn = torch.nn.GroupNorm(4, 4, eps=1e-6)
    with torch.no_grad():
        gn.bias.copy_(norm.bias)
    assert torch.allclose(norm(x), gn(x), atol=1e-5), "ImageNorm != GroupNorm(C, C) with weight 1"
    mean = x.mean((2, 3), keepdim=True)
    std = x.var((2, 3), unbiased=False, keepdim=True).add(1e-6).sqrt()
    ref = (x - mean) / std + norm.bias[None, :, None, None]
    assert torch.allclose(norm(x), ref, atol=1e-5), "not a per-image, per-channel normalisation"


def test_collaborator_gradients_reach_both_nets():
    torch.manual_seed(0)
    col = Collaborator(_collab_cfg())
    fg, border = col(torch.randn(1, 3, 32, 32), torch.tensor([0]))
    (fg.mean() + border.mean()).backward()
    missing = [n for n, p in col.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
