"""LACSS collaborator (training only, points mode): a small UNet for the image foreground and a
shallow CNN for cell borders, both on the standardised image, at full resolution.

Port of ``lacss/modules/auxiliary.py`` + ``unet.py`` (tag 0.4.4). Paper nets a1 / b1: fg UNet
widths (16, 32, 64), border CNN (32, 32) + head; 0.4.4's ``LacssCollaborator`` swaps the two
specs (``PRESET: code_0_4_4``). ``BORDER_NET: unet`` (paper b2, our reading) uses a second UNet
with the ``FG_UNET`` widths as border net. Every norm is a per-image, per-channel normalisation
with a learned bias and no scale (flax ``GroupNorm(use_scale=False)``, eps 1e-6).
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["BorderCNN", "Collaborator", "ImageNorm", "UNet", "resolve_collaborator_widths"]

PRESETS = ("paper", "code_0_4_4")
BORDER_NETS = ("cnn", "unet")


class ImageNorm(nn.Module):
    """Per-image, per-channel normalisation with a learned bias only (no scale parameter).

    Equals ``GroupNorm(C, C, eps)`` with its weight fixed to 1. Input/output (B, C, H, W).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.channels, None, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


def _conv_norm_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        ImageNorm(out_ch),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """LACSS ``UNet`` (patch size 1): (B, C_in, H, W) -> (B, widths[0], H, W).

    Encoder level k: conv3x3 (stride 1 at k = 0, 2 after) -> norm -> ReLU -> conv3x3 -> norm ->
    ReLU. Decoder from the coarsest: bilinear upsample to the skip's size, concat the skip,
    2 x [conv3x3 -> norm -> ReLU] at the skip's width. Convs have no bias. Stride-2 convs pad
    (1, 1) (flax "SAME" pads (0, 1): a half-pixel shift, harmless from scratch).
    """

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        assert len(widths) >= 1, "UNet needs at least one level"
        self.encoder = nn.ModuleList()
        ch = in_channels
        for k, width in enumerate(widths):
            self.encoder.append(
                nn.Sequential(
                    _conv_norm_relu(ch, width, stride=1 if k == 0 else 2),
                    _conv_norm_relu(width, width),
                )
            )
            ch = width
        self.decoder = nn.ModuleList()
        for width in list(widths[:-1])[::-1]:
            self.decoder.append(
                nn.Sequential(_conv_norm_relu(ch + width, width), _conv_norm_relu(width, width))
            )
            ch = width
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.decoder, skips[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class BorderCNN(nn.Sequential):
    """[conv3x3 (no bias) -> norm -> ReLU] per width: (B, C_in, H, W) -> (B, widths[-1], H, W)."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        layers = []
        ch = in_channels
        for width in widths:
            layers.append(_conv_norm_relu(ch, width))
            ch = width
        super().__init__(*layers)
        self.out_channels = ch


def resolve_collaborator_widths(
    preset: str, fg_unet: Sequence[int], border_cnn: Sequence[int], border_net: str
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(fg UNet widths, border net widths) of a preset.

    "paper": fg = ``fg_unet``; border = ``border_cnn`` (cnn) or ``fg_unet`` (unet).
    "code_0_4_4" (0.4.4 swaps the specs): fg = ``border_cnn``; border = ``fg_unet``.
    """
    assert preset in PRESETS, f"COLLABORATOR.PRESET {preset!r} not in {PRESETS}"
    assert border_net in BORDER_NETS, f"COLLABORATOR.BORDER_NET {border_net!r} not in {BORDER_NETS}"
    fg_unet, border_cnn = tuple(fg_unet), tuple(border_cnn)
    if preset == "code_0_4_4":
        return border_cnn, fg_unet
    return fg_unet, (border_cnn if border_net == "cnn" else fg_unet)


class Collaborator(nn.Module):
    """Foreground and border logits of the image's cell type, at full resolution."""

    @configurable
    def __init__(
        self,
        *,
        fg_widths: Sequence[int] = (16, 32, 64),
        border_widths: Sequence[int] = (32, 32),
        border_net: str = "cnn",
        num_cell_types: int = 1,
        in_channels: int = 3,
    ):
        """
        Args:
            fg_widths: widths of the foreground UNet (paper a1: (16, 32, 64)).
            border_widths: widths of the border net (paper b1 CNN: (32, 32)).
            border_net: "cnn" (paper b1) or "unet" (paper b2, our reading).
            num_cell_types: output channels of both heads; each image uses its own.
            in_channels: image channels.
        """
        super().__init__()
        assert border_net in BORDER_NETS, f"border_net {border_net!r} not in {BORDER_NETS}"
        self.num_cell_types = num_cell_types
        self.fg_net = UNet(in_channels, fg_widths)
        self.fg_head = nn.Conv2d(self.fg_net.out_channels, num_cell_types, 3, padding=1)
        if border_net == "cnn":
            self.border_net = BorderCNN(in_channels, border_widths)
        else:
            self.border_net = UNet(in_channels, border_widths)
        self.border_head = nn.Conv2d(self.border_net.out_channels, num_cell_types, 3, padding=1)

    @classmethod
    def from_config(cls, cfg):
        col = cfg.MODEL.CKS.COLLABORATOR
        fg, border = resolve_collaborator_widths(
            col.PRESET, col.FG_UNET, col.BORDER_CNN, col.BORDER_NET
        )
        return {
            "fg_widths": fg,
            "border_widths": border,
            "border_net": col.BORDER_NET,
            "num_cell_types": col.NUM_CELL_TYPES,
        }

    def forward(
        self, images: torch.Tensor, cell_types: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            images: (B, C, H, W) standardised, padded (H, W multiples of 32 recommended).
            cell_types: (B,) long in [0, NUM_CELL_TYPES); None = all 0.

        Returns:
            fg_logits (B, H, W), border_logits (B, H, W): each image's cell-type channel.
        """
        batch = images.shape[0]
        if cell_types is None:
            cell_types = torch.zeros(batch, dtype=torch.long, device=images.device)
        cell_types = cell_types.to(device=images.device, dtype=torch.long).reshape(batch)
        assert bool(
            ((cell_types >= 0) & (cell_types < self.num_cell_types)).all()
        ), f"cell types {cell_types.tolist()} outside [0, {self.num_cell_types})"
        rows = torch.arange(batch, device=images.device)
        fg = self.fg_head(self.fg_net(images))[rows, cell_types]
        border = self.border_head(self.border_net(images))[rows, cell_types]
        return fg, border
