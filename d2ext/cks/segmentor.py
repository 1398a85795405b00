"""LACSS instance segmentor: fixed-size crops of a stride-4 feature map plus a position encoding.

Port of ``lacss/modules/segmentor.py`` (tag 0.4.4). All heavy convolutions run once per image
(``len(CONV_DIMS)`` x [conv3x3 -> per-channel GroupNorm -> ReLU] -> conv3x3 to ``MIX_DIM``: the
map ``F``); per instance at (y, x) px only a ``P x P`` patch of ``F`` (``P = CROP_SIZE / 4``) is
gathered at grid origin ``(floor(y/4) - P//2, floor(x/4) - P//2)`` (zeros outside the map), a
position encoding is added, ReLU, a 2x2/2 transposed conv gives ``2P x 2P`` logits, bilinearly
resized to ``S x S`` (``S = CROP_SIZE``). Encodings (``POS_ENCODING``):

- ``learned`` (LACSS ``_Encoder``): the mean of the raw ``IN_FEATURE`` vectors of the 2x2 cells
  rows ``floor(y/4)-1 .. floor(y/4)``, cols ``floor(x/4)-1 .. floor(x/4)`` -> MLP -> a small
  ``(h, w, c) = ENCODER_DIMS`` map (flax HWC order) -> bilinear resize to ``P x P`` -> 1x1 conv.
- ``linear`` (the code's fixed ablation): channels ``(i / P - 0.5, j / P - 0.5)`` -> 1x1 conv.
- ``sine`` (the paper's "cosine encoding a la Transformer", our reading): per axis 8 channels
  ``sin / cos(i / 10000^(2k/8))``, k = 0..3, i the integer cell index -> 1x1 conv.

Coordinates are LACSS's (y, x) pixels, edge-indexed; see :mod:`d2ext.cks.crops`.
:func:`paste_masks` places the crops into full-size boolean masks with detectron2's ``ROIMasks``.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ROIMasks
from torch import nn

from .crops import crop_origins

__all__ = ["InstanceSegmentor", "gather_patches", "paste_masks", "sine_encoding"]

POS_ENCODINGS = ("learned", "linear", "sine")


def gather_patches(
    fmap: torch.Tensor,
    batch_idx: torch.Tensor,
    origins: torch.Tensor,
    size: int,
    padding: str = "zeros",
) -> torch.Tensor:
    """Square patches of a batched feature map, batched over instances (no per-instance loop).

    Args:
        fmap: (B, C, H, W).
        batch_idx: (N,) long, the image of each patch.
        origins: (N, 2) long, (row, col) of each patch's top-left cell; may lie outside the map.
        size: patch side in cells.
        padding: "zeros" (cells outside the map are 0) or "replicate" (indices clamped to the map).

    Returns:
        (N, C, size, size).
    """
    assert padding in ("zeros", "replicate"), f"unknown padding {padding!r}"
    _, _, height, width = fmap.shape
    offs = torch.arange(size, device=fmap.device)
    rows = origins[:, 0:1] + offs  # (N, size)
    cols = origins[:, 1:2] + offs
    rows_c = rows.clamp(0, height - 1)
    cols_c = cols.clamp(0, width - 1)
    # index_select (backward: index_add_, serial on CPU) rather than advanced indexing, whose
    # backward accumulates duplicate indices in a thread-dependent order: exact resume needs
    # bitwise-reproducible gradients
    flat = fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])  # (B*H*W, C)
    lin = (batch_idx[:, None, None] * height + rows_c[:, :, None]) * width + cols_c[:, None, :]
    patches = flat.index_select(0, lin.reshape(-1)).view(*lin.shape, fmap.shape[1])
    if padding == "zeros":
        valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[
            :, None, :
        ]
        patches = torch.where(valid[..., None], patches, patches.new_zeros(()))
    return patches.permute(0, 3, 1, 2)  # (N, C, size, size)


def sine_encoding(size: int, dims_per_axis: int = 8, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sinusoidal encoding of a ``size x size`` patch (Transformer formula per axis).

    Channel ``2k`` / ``2k+1`` of an axis is ``sin`` / ``cos`` of ``i / temperature^(2k / d)``
    (``i`` the integer cell index along that axis, ``d = dims_per_axis``); y channels first.

    Returns:
        (2 * dims_per_axis, size, size) float32.
    """
    assert dims_per_axis % 2 == 0, f"dims_per_axis {dims_per_axis} must be even"
    pos = torch.arange(size, dtype=torch.float64)
    freq = temperature ** (-torch.arange(0, dims_per_axis, 2, dtype=torch.float64) / dims_per_axis)
    angles = pos[:, None] * freq[None, :]  # (size, d/2)
    enc_1d = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(size, dims_per_axis)
    enc_y = enc_1d.t()[:, :, None].expand(dims_per_axis, size, size)
    enc_x = enc_1d.t()[:, None, :].expand(dims_per_axis, size, size)
    return torch.cat([enc_y, enc_x]).float()


def linear_encoding(size: int) -> torch.Tensor:
    """LACSS's fixed encoding ``mgrid[:P, :P] / P - 0.5``: (2, size, size), channels (y, x)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([yy, xx]).float() / size - 0.5


class InstanceSegmentor(nn.Module):
    """Per-instance ``S x S`` logits from one FPN level (stride 4) and instance locations."""

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        stride: int = 4,
        conv_dims: Sequence[int] = (384, 384, 384),
        mix_dim: int = 64,
        crop_size: int = 96,
        pos_encoding: str = "learned",
        encoder_dims: Sequence[int] = (8, 8, 4),
        encoder_padding: str = "replicate",
    ):
        """
        Args:
            in_feature: name of the input feature map (e.g. "p2").
            in_channels: its channels C.
            stride: its stride in pixels (LACSS: 4; the 2x2/2 deconv + resize assume >= 2).
            conv_dims: widths of the image-level conv3x3-GN-ReLU blocks.
            mix_dim: channels of the mixed map F and of the patches.
            crop_size: S, the crop side in pixels (a multiple of ``stride``).
            pos_encoding: "learned" | "linear" | "sine".
            encoder_dims: (h, w, c) of the learned encoder's small map (flax HWC order);
                its MLP hidden width is h * w * c (LACSS ``n_latent_features = -1``).
            encoder_padding: how the learned encoder's 2x2 window treats cells outside the map:
                "replicate" (clamped) or "zeros" (LACSS 0.4.4 ``gather_patches`` zero-pads).
        """
        super().__init__()
        assert stride >= 2, f"stride {stride} < 2 is not supported (LACSS uses a 3x3 conv head)"
        assert crop_size % stride == 0, f"crop size {crop_size} not a multiple of {stride}"
        assert (
            pos_encoding in POS_ENCODINGS
        ), f"POS_ENCODING {pos_encoding!r} not in {POS_ENCODINGS}"
        assert encoder_padding in ("replicate", "zeros"), f"bad encoder_padding {encoder_padding!r}"
        self.in_feature = in_feature
        self.stride = stride
        self.crop_size = crop_size
        self.patch_size = crop_size // stride
        self.pos_encoding = pos_encoding
        self.encoder_dims = tuple(int(d) for d in encoder_dims)
        self.encoder_padding = encoder_padding

        blocks = []
        ch = in_channels
        for dim in conv_dims:
            blocks += [
                nn.Conv2d(ch, dim, 3, padding=1, bias=False),
                nn.GroupNorm(dim, dim, eps=1e-6),
                nn.ReLU(inplace=True),
            ]
            ch = dim
        self.convs = nn.Sequential(*blocks)
        self.mix = nn.Conv2d(ch, mix_dim, 3, padding=1, bias=False)

        if pos_encoding == "learned":
            assert len(self.encoder_dims) == 3, f"ENCODER_DIMS {encoder_dims} must be (h, w, c)"
            hidden = math.prod(self.encoder_dims)
            self.encoder = nn.Sequential(
                nn.Linear(in_channels, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
            )
            enc_ch = self.encoder_dims[2]
        else:
            fixed = (
                linear_encoding(self.patch_size)
                if pos_encoding == "linear"
                else sine_encoding(self.patch_size)
            )
            self.register_buffer("fixed_encoding", fixed[None], persistent=False)
            enc_ch = fixed.shape[0]
        self.encoder_proj = nn.Conv2d(enc_ch, mix_dim, 1, bias=False)
        self.deconv = nn.ConvTranspose2d(mix_dim, 1, 2, stride=2)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        seg = cfg.MODEL.CKS.SEGMENTOR
        shape = input_shape[seg.IN_FEATURE]
        return {
            "in_feature": seg.IN_FEATURE,
            "in_channels": shape.channels,
            "stride": shape.stride or 4,
            "conv_dims": list(seg.CONV_DIMS),
            "mix_dim": seg.MIX_DIM,
            "crop_size": seg.CROP_SIZE,
            "pos_encoding": seg.POS_ENCODING,
            "encoder_dims": list(seg.ENCODER_DIMS),
        }

    def _learned_encoding(
        self, feat: torch.Tensor, batch_idx: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        """(N, c, P, P) encodings from the raw feature ``feat`` (B, C, H, W) at grid ``cells``."""
        window = gather_patches(feat, batch_idx, cells - 1, 2, padding=self.encoder_padding)
        vec = self.encoder(window.mean(dim=(2, 3)))  # (N, h*w*c)
        h, w, c = self.encoder_dims
        small = vec.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # flax HWC -> (N, c, h, w)
        size = (self.patch_size, self.patch_size)
        return F.interpolate(small, size=size, mode="bilinear", align_corners=False)

    def forward(
        self, features: Dict[str, torch.Tensor], locations: List[torch.Tensor]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            features: {name: (B, C, H, W)}; ``features[in_feature]`` is used.
            locations: B tensors (N_i, 2) float, (y, x) pixels (N_i may be 0).

        Returns:
            B tuples (logits (N_i, S, S) float, origins (N_i, 2) long (y0, x0) pixels): the crop
            of instance n covers pixel rows ``y0 .. y0+S-1`` and cols ``x0 .. x0+S-1``.
        """
        feat = features[self.in_feature]
        assert len(locations) == feat.shape[0], f"{len(locations)} location sets, B={len(feat)}"
        fmap = self.mix(self.convs(feat))  # (B, MIX, H, W)
        device = fmap.device
        counts = [len(loc) for loc in locations]
        locs = torch.cat(
            [loc.reshape(-1, 2).to(device=device, dtype=torch.float32) for loc in locations]
        )
        batch_idx = torch.repeat_interleave(
            torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
        )
        origins = crop_origins(locs, self.crop_size, self.stride)  # (N, 2) px
        grid_origins = torch.div(origins, self.stride, rounding_mode="floor")
        patches = gather_patches(fmap, batch_idx, grid_origins, self.patch_size)  # (N, MIX, P, P)

        if self.pos_encoding == "learned":
            cells = torch.div(locs, self.stride, rounding_mode="floor").long()
            enc = self._learned_encoding(feat, batch_idx, cells)
        else:
            enc = self.fixed_encoding.to(fmap.dtype)
        patches = F.relu(patches + self.encoder_proj(enc))

        logits = self.deconv(patches)  # (N, 1, 2P, 2P)
        size = (self.crop_size, self.crop_size)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]
        return list(zip(logits.split(counts), origins.split(counts)))


@torch.no_grad()
def paste_masks(
    logits: torch.Tensor,
    origins: torch.Tensor,
    scale: Tuple[float, float],
    out_hw: Tuple[int, int],
    threshold: float = 0.5,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Full-size boolean masks from crop logits (detectron2 ``ROIMasks`` bilinear paste).

    Args:
        logits: (N, S, S) crop logits.
        origins: (N, 2) long, (y0, x0) pixels of the crops in the model's input frame.
        scale: (sy, sx) = output size / input size.
        out_hw: (H_out, W_out).
        threshold: on ``sigmoid(logits)`` (``>=``).
        chunk_size: instances pasted at a time (bounds the float intermediates on dense images).

    Returns:
        (N, H_out, W_out) bool. At scale 1 this equals placing ``sigmoid(l) >= threshold`` at the
        origin (crop parts outside the output cut).
    """
    height, width = int(out_hw[0]), int(out_hw[1])
    num = logits.shape[0]
    out = torch.zeros((num, height, width), dtype=torch.bool, device=logits.device)
    if num == 0:
        return out
    size = logits.shape[-1]
    sy, sx = float(scale[0]), float(scale[1])
    y0 = origins[:, 0].float()
    x0 = origins[:, 1].float()
    boxes = torch.stack([x0, y0, x0 + size, y0 + size], dim=1)
    boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
    # boxes not meeting the output stay empty (detectron2's CPU paste fails on them)
    inside = (boxes[:, 2] > 0) & (boxes[:, 0] < width) & (boxes[:, 3] > 0) & (boxes[:, 1] < height)
    keep = inside.nonzero()[:, 0]
    probs = logits[keep].float().sigmoid()
    boxes = boxes[keep]
    for start in range(0, len(keep), chunk_size):
        sl = slice(start, start + chunk_size)
        masks = ROIMasks(probs[sl]).to_bitmasks(Boxes(boxes[sl]), height, width, threshold)
        out[keep[sl]] = masks.tensor
    return out
