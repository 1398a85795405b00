"""Networks shared by the bundles (DMD, ATSO), as in the papers' reference code (not MONAI's
namesakes).

- ``VNet``: the LA V-Net of UA-MT/DTC/MC-Net (``networks/vnet.py``): 3x3x3 convolutions, stages of
  1/2/3/3/3 convolutions, strided 2x2x2 convolution down, transposed convolution up, additive skip
  connections; about 9.4M parameters at ``n_filters=16``.
- ``UNet2D``: SSL4MIS's ``UNet`` (``networks/unet.py``): channels [16, 32, 64, 128, 256], dropout
  [0.05, 0.1, 0.2, 0.3, 0.5], two 3x3 conv + BN + LeakyReLU per block, max-pool down, conv1x1 +
  bilinear up (SSL4MIS's ``UpBlock`` default); about 1.8M parameters.

Both use PyTorch's default initialisation, so two instances built one after the other differ.
"""

import torch
from torch import nn

NORMALIZATIONS = ("batchnorm", "groupnorm", "instancenorm", "none")


def _norm3d(normalization: str, channels: int) -> list:
    assert (
        normalization in NORMALIZATIONS
    ), f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
    if normalization == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if normalization == "groupnorm":
        return [nn.GroupNorm(num_groups=16, num_channels=channels)]
    if normalization == "instancenorm":
        return [nn.InstanceNorm3d(channels)]
    return []


def _conv_stage(n_convs: int, in_channels: int, out_channels: int, normalization: str):
    """``n_convs`` x (3x3x3 conv + norm + ReLU): (B, in, H, W, D) -> (B, out, H, W, D)."""
    ops = []
    for i in range(n_convs):
        ops.append(nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1))
        ops += _norm3d(normalization, out_channels) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*ops)


def _resample(conv_cls, in_channels: int, out_channels: int, normalization: str):
    """Strided 2x2x2 (transposed) conv + norm + ReLU: halves (or doubles) H, W, D."""
    ops = [conv_cls(in_channels, out_channels, 2, stride=2, padding=0)]
    return nn.Sequential(*ops, *_norm3d(normalization, out_channels), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """UA-MT/DTC V-Net: (B, n_channels, H, W, D) -> logits (B, n_classes, H, W, D).

    H, W, D must be divisible by 16 (four 2x downsamplings). With ``has_dropout`` a
    ``Dropout3d(0.5)`` is applied at the bottom (x5) and before the output convolution, as in the
    reference code.
    """

    def __init__(
        self,
        n_channels: int = 1,
        n_classes: int = 1,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = False,
    ):
        super().__init__()
        f, norm = n_filters, normalization
        self.has_dropout = has_dropout
        self.encoder_stages = nn.ModuleList(
            [
                _conv_stage(1, n_channels, f, norm),
                _conv_stage(2, 2 * f, 2 * f, norm),
                _conv_stage(3, 4 * f, 4 * f, norm),
                _conv_stage(3, 8 * f, 8 * f, norm),
                _conv_stage(3, 16 * f, 16 * f, norm),
            ]
        )
        self.downs = nn.ModuleList(
            [_resample(nn.Conv3d, c, 2 * c, norm) for c in (f, 2 * f, 4 * f, 8 * f)]
        )
        self.ups = nn.ModuleList(
            [_resample(nn.ConvTranspose3d, 2 * c, c, norm) for c in (8 * f, 4 * f, 2 * f, f)]
        )
        self.decoder_stages = nn.ModuleList(
            [
                _conv_stage(3, 8 * f, 8 * f, norm),
                _conv_stage(3, 4 * f, 4 * f, norm),
                _conv_stage(2, 2 * f, 2 * f, norm),
                _conv_stage(1, f, f, norm),
            ]
        )
        self.out_conv = nn.Conv3d(f, n_classes, 1, padding=0)
        self.dropout = nn.Dropout3d(p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 5 and all(
            s % 16 == 0 for s in x.shape[2:]
        ), f"VNet expects (B, C, H, W, D) with H, W, D divisible by 16, got {tuple(x.shape)}"
        skips = []
        for i, stage in enumerate(self.encoder_stages):
            x = stage(x)
            if i < len(self.downs):
                skips.append(x)
                x = self.downs[i](x)
        if self.has_dropout:
            x = self.dropout(x)
        for up, stage, skip in zip(self.ups, self.decoder_stages, reversed(skips)):
            x = stage(up(x) + skip)
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x)


def _conv_block2d(in_channels: int, out_channels: int, dropout_p: float) -> nn.Sequential:
    """SSL4MIS ``ConvBlock``: (B, in, H, W) -> (B, out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(),
        nn.Dropout(dropout_p),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(),
    )


class _UpBlock2d(nn.Module):
    """SSL4MIS ``UpBlock`` (bilinear): conv1x1 + 2x bilinear upsampling, concat skip, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = _conv_block2d(2 * skip_channels, out_channels, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, in, H, W), skip (B, skip, 2H, 2W) -> (B, out, 2H, 2W)."""
        return self.conv(torch.cat([skip, self.up(self.conv1x1(x))], dim=1))


class UNet2D(nn.Module):
    """SSL4MIS 2D U-Net: (B, in_chns, H, W) -> logits (B, class_num, H, W); H, W divisible by 16."""

    FEATURES = (16, 32, 64, 128, 256)
    DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)

    def __init__(self, in_chns: int = 1, class_num: int = 4):
        super().__init__()
        ft, dp = self.FEATURES, self.DROPOUT
        self.in_conv = _conv_block2d(in_chns, ft[0], dp[0])
        self.downs = nn.ModuleList(
            [
                nn.Sequential(nn.MaxPool2d(2), _conv_block2d(ft[i], ft[i + 1], dp[i + 1]))
                for i in range(4)
            ]
        )
        self.ups = nn.ModuleList([_UpBlock2d(ft[i + 1], ft[i], ft[i]) for i in reversed(range(4))])
        self.out_conv = nn.Conv2d(ft[0], class_num, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and all(
            s % 16 == 0 for s in x.shape[2:]
        ), f"UNet2D expects (B, C, H, W) with H, W divisible by 16, got {tuple(x.shape)}"
        skips = [self.in_conv(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.out_conv(x)
