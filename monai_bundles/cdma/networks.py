"""The CDMA network (Zhong et al., MICCAI 2023): MTNet, a DeepLabv3+ with one shared encoder and
ASPP and several decoders that differ only in their attention block.

As the reference code (HiLab-git/CDMA ``core/networks.py``, ``core/deeplab_utils.py``):

- ``ChannelAttention``, ``SpatialAttention``, ``CBAM``: the CBAM blocks (shared MLP of 1x1
  convolutions on global average- and max-pooling; 7x7 convolution on [mean, max] over channels;
  channel then spatial). PyTorch's default initialisation, as the reference.
- ``ASPP``: 1x1 and dilated 3x3 branches, image pooling, 1x1 projection, GroupNorm, Dropout(0.5).
- ``AttentionDecoder``: the reference ``Decoder_Attention``: attention #1 on the concatenation of
  the upsampled ASPP output and the reduced low-level feature, attention #2 after conv2 and its
  norm, before the ReLU. Branch names: ``csa`` (CBAM), ``sa``, ``ca``, ``none`` (no attention).
- ``FeatureNoise``: CCT's multiplicative uniform noise ``x * (1 + u)``, training mode only.
- ``MTNet``: torchvision ResNet encoder (``weights=None``, never downloads) with layer4 at stride 1
  (output stride 16), ASPP, one ``AttentionDecoder`` per branch; returns one logits map per branch.
  Unlike the reference, the feature noise is applied (per branch, independent draws) and no
  unused modules are built.
- ``MTNetPredictor``: one branch's logits (the reference infers with CSA) or the mean softmax of
  all branches, for the sliding-window inferer.

Sizes: ResNet50 / 256-channel decoders / three branches about 43.0M parameters; ResNet18 /
64-channel decoders about 12.5M.
"""

import os
from typing import Mapping, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from monai_bundles.common.checkpoint_resume import load_checkpoint
from sslseg.errors import InputError, MissingInputError

__all__ = [
    "ATTENTIONS",
    "ENCODERS",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "ASPP",
    "AttentionDecoder",
    "FeatureNoise",
    "FixedBatchNorm2d",
    "MTNet",
    "MTNetPredictor",
    "make_attention",
]

ATTENTIONS = ("csa", "sa", "ca", "none")
# name -> (low-level channels = layer1 output, high-level channels = layer4 output)
ENCODERS = {
    "resnet18": (64, 512),
    "resnet34": (64, 512),
    "resnet50": (256, 2048),
    "resnet101": (256, 2048),
}
BACKBONE_NORMS = ("bn", "frozen_bn")


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the reference's everywhere)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _group_norm(groups: int, channels: int, key: str) -> nn.GroupNorm:
    """``GroupNorm(groups, channels)``; an ``InputError`` naming ``key`` when they don't divide."""
    if groups < 1 or channels % groups:
        raise InputError(
            f"{key}={channels} is not divisible by norm_groups={groups} (GroupNorm needs "
            f"channels divisible by the number of groups)"
        )
    return nn.GroupNorm(groups, channels)


def _kaiming(modules) -> None:
    """``kaiming_normal_`` on the weights of the ``nn.Conv2d`` among ``modules`` (reference)."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


class ChannelAttention(nn.Module):
    """CBAM channel attention: (B, C, H, W) -> (B, C, H, W), ``x * sigmoid(mlp(avg) + mlp(max))``.

    ``mlp`` = 1x1 conv C -> max(1, C // ratio) (no bias), ReLU, 1x1 conv back to C (no bias),
    shared by the global average- and max-pooled (B, C, 1, 1) descriptors.
    """

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return x * torch.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: (B, C, H, W) -> (B, C, H, W), ``x * sigmoid(conv([mean_C, max_C]))``.

    The convolution is 2 -> 1 channels, ``kernel_size`` x ``kernel_size`` (odd), zero padding
    ``kernel_size // 2``, no bias.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        assert kernel_size % 2 == 1, f"kernel_size must be odd, got {kernel_size}"
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out = torch.amax(x, dim=1, keepdim=True)
        return x * torch.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


class CBAM(nn.Module):
    """Channel attention then spatial attention (own parameters): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7):
        super().__init__()
        self.ca = ChannelAttention(channels, ratio)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(self.ca(x))


def make_attention(name: str, channels: int, ratio: int = 16, kernel_size: int = 7) -> nn.Module:
    """The attention block of branch ``name`` (``csa``/``sa``/``ca``/``none``) on ``channels``."""
    if name == "csa":
        return CBAM(channels, ratio, kernel_size)
    if name == "sa":
        return SpatialAttention(kernel_size)
    if name == "ca":
        return ChannelAttention(channels, ratio)
    if name == "none":
        return nn.Identity()
    raise InputError(f"branches: unknown branch {name!r}, expected one of {list(ATTENTIONS)}")


class ASPP(nn.Module):
    """DeepLabv3 ASPP: (B, in_channels, h, w) -> (B, out_channels, h, w).

    One branch per rate (1x1 conv for rate 1, 3x3 conv with dilation = padding = rate otherwise)
    plus image pooling (global average -> 1x1 conv -> GN -> ReLU -> bilinear upsample,
    ``align_corners=True``), each conv without bias + GN + ReLU; concatenation -> 1x1 conv ->
    GN -> ReLU -> Dropout. Convolutions ``kaiming_normal_``, ``GroupNorm(norm_groups, C)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (1, 6, 12, 18),
        norm_groups: int = 4,
        dropout: float = 0.5,
    ):
        super().__init__()
        if not rates or any(int(r) != r or r < 1 for r in rates):
            raise InputError(f"aspp_rates {list(rates)!r}: expected a list of positive integers")

        def branch(kernel: int, rate: int) -> nn.Sequential:
            pad = 0 if kernel == 1 else rate
            return nn.Sequential(
                nn.Conv2d(
                    in_channels, out_channels, kernel, padding=pad, dilation=rate, bias=False
                ),
                _group_norm(norm_groups, out_channels, "decoder_channels"),
                nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList(
            [branch(1, 1) if int(r) == 1 else branch(3, int(r)) for r in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _group_norm(norm_groups, out_channels, "decoder_channels"),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            nn.Conv2d((len(rates) + 1) * out_channels, out_channels, 1, bias=False),
            _group_norm(norm_groups, out_channels, "decoder_channels"),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        _kaiming(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(_upsample(self.image_pool(x), x.shape[2:]))
        return self.project(torch.cat(outs, dim=1))


class AttentionDecoder(nn.Module):
    """The reference ``Decoder_Attention``: ASPP output x (B, high_channels, h, w) and low-level
    feature l (B, low_level_in, 4h, 4w) -> logits (B, out_channels, 4h, 4w) at l's resolution.

    1. l -> ``conv1`` 1x1 to ``low_level_channels`` (no bias) -> ``norm1`` (GN) -> ReLU
    2. x -> bilinear upsample to l's size (``align_corners=True``); concat [x, l]
    3. ``attention1`` on the (high_channels + low_level_channels)-channel concatenation
    4. ``conv2`` 3x3 -> decoder_channels (no bias) -> ``norm2`` (GN) -> ``attention2`` -> ReLU ->
       Dropout(dropout[0])
    5. ``conv3`` 3x3 (no bias) -> ReLU -> Dropout(dropout[1]) (the reference builds a ``bn3``
       it never uses; not built here)
    6. ``conv4`` 1x1 -> out_channels, with bias
    ``attention`` in ``csa`` (CBAM), ``sa``, ``ca``, ``none`` (identity). The convolutions are
    ``kaiming_normal_``, the attention blocks keep PyTorch's default initialisation (reference).
    """

    def __init__(
        self,
        attention: str,
        low_level_in: int,
        high_channels: int,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        out_channels: int = 2,
        norm_groups: int = 4,
        dropout: Sequence[float] = (0.5, 0.1),
        attention_ratio: int = 16,
        attention_kernel: int = 7,
    ):
        super().__init__()
        if len(dropout) != 2:
            raise InputError(f"decoder_dropout {list(dropout)!r}: expected two probabilities")
        concat = high_channels + low_level_channels
        self.attention_name = attention
        self.conv1 = nn.Conv2d(low_level_in, low_level_channels, 1, bias=False)
        self.norm1 = _group_norm(norm_groups, low_level_channels, "low_level_channels")
        self.attention1 = make_attention(attention, concat, attention_ratio, attention_kernel)
        self.conv2 = nn.Conv2d(concat, decoder_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(norm_groups, decoder_channels, "decoder_channels")
        self.attention2 = make_attention(
            attention, decoder_channels, attention_ratio, attention_kernel
        )
        self.dropout2 = nn.Dropout(dropout[0])
        self.conv3 = nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False)
        self.dropout3 = nn.Dropout(dropout[1])
        self.conv4 = nn.Conv2d(decoder_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        _kaiming([self.conv1, self.conv2, self.conv3, self.conv4])

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.relu(self.norm1(self.conv1(low_level)))
        x = torch.cat([_upsample(x, low_level.shape[2:]), low_level], dim=1)
        x = self.attention1(x)
        x = self.dropout2(self.relu(self.attention2(self.norm2(self.conv2(x)))))
        x = self.dropout3(self.relu(self.conv3(x)))
        return self.conv4(x)


class FeatureNoise(nn.Module):
    """CCT's feature noise: (B, C, H, W) -> ``x * (1 + u)``, u ~ U(-magnitude, magnitude) of shape
    (1, C, H, W) (shared over the batch), drawn with ``torch.rand`` from torch's default generator
    of x's device (so ``RNGState`` resume reproduces it); identity in eval mode or at magnitude 0.
    Each call draws anew. No parameters.
    """

    def __init__(self, magnitude: float = 0.3):
        super().__init__()
        self.magnitude = float(magnitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.magnitude == 0:
            return x
        u = torch.rand((1, *x.shape[1:]), device=x.device, dtype=torch.float32)
        u = (u * 2.0 - 1.0) * self.magnitude
        return x * (1.0 + u.to(x.dtype))

    def extra_repr(self) -> str:
        return f"magnitude={self.magnitude}"


class FixedBatchNorm2d(nn.BatchNorm2d):
    """The reference's ``FixedBatchNorm``: BatchNorm that always normalises with its running
    statistics (``F.batch_norm(..., training=False)``), also in training mode, and never updates
    them; the affine weight and bias stay trainable. Same state_dict keys as ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _build_encoder(
    name: str, in_channels: int, backbone_norm: str, layer4_dilation: int
) -> torchvision.models.ResNet:
    """A torchvision ResNet (``weights=None``) without ``fc``/``avgpool``, layer4 at stride 1.

    ``layer4_dilation`` > 1 dilates layer4's 3x3 convolutions except those of its first block,
    as torchvision's ``replace_stride_with_dilation=[False, False, True]`` (which it refuses for
    BasicBlock ResNets; this works for both block types).
    """
    if name not in ENCODERS:
        raise InputError(f"encoder {name!r}: expected one of {list(ENCODERS)}")
    if backbone_norm not in BACKBONE_NORMS:
        raise InputError(f"backbone_norm {backbone_norm!r}: expected one of {list(BACKBONE_NORMS)}")
    if int(layer4_dilation) != layer4_dilation or layer4_dilation < 1:
        raise InputError(f"layer4_dilation {layer4_dilation!r}: expected a positive integer")
    norm_layer = FixedBatchNorm2d if backbone_norm == "frozen_bn" else nn.BatchNorm2d
    encoder = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    del encoder.fc, encoder.avgpool
    if in_channels != 3:
        encoder.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(encoder.conv1.weight, mode="fan_out", nonlinearity="relu")
    first = encoder.layer4[0]
    strided = (
        first.conv2 if isinstance(first, torchvision.models.resnet.Bottleneck) else first.conv1
    )
    strided.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    d = int(layer4_dilation)
    for block in list(encoder.layer4)[1:]:
        for conv in (block.conv2,) if hasattr(block, "conv3") else (block.conv1, block.conv2):
            conv.dilation, conv.padding = (d, d), (d, d)
    return encoder


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _listed(keys, limit: int = 10) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _load_exactly(module: nn.Module, state: Mapping, path: str, what: str) -> None:
    """Load ``state`` into ``module``; an ``InputError`` naming ``path`` and every missing,
    unexpected or wrongly shaped key unless all match (``num_batches_tracked`` may be absent, as
    in old torchvision files)."""
    expected = module.state_dict()
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]  # BatchNorm fills a missing counter itself
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and hasattr(state[k], "shape") and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (file vs network): {_listed(shapes)}")
    if problems:
        raise InputError(
            f"pretrained weights file {path} (bundle key pretrained): does not match the {what}: "
            + "; ".join(problems)
        )
    module.load_state_dict(dict(state), strict=True)


class MTNet(nn.Module):
    """CDMA's MTNet: (B, in_channels, H, W) -> tuple of K logits (B, out_channels, H, W), one per
    entry of ``branches`` (same order), in training and eval mode.

    Encoder: torchvision ``resnet18/34/50/101`` (``weights=None``), layer4 at stride 1 (output
    stride 16; ``layer4_dilation=2`` = standard DeepLabv3+, the reference uses 1); low-level
    feature = layer1 output (stride 4, 64 or 256 channels), high-level = layer4 output (512 or
    2048 channels). ``backbone_norm``: ``bn`` (trainable BatchNorm) or ``frozen_bn`` (the
    reference: running statistics always used, never updated, affine trainable). Head: ``ASPP``
    (high -> decoder_channels), then per branch Dropout(``aspp_dropout``) (an independent mask
    per branch, the paper's "dropout ... before each of the three decoders";
    ``dropout_per_branch=False`` = the reference code: one Dropout at the end of the ASPP, its
    mask shared by all branches), ``FeatureNoise(feature_noise)`` (training only, independent
    draw, branches named in ``feature_noise_branches``) and an ``AttentionDecoder``; logits
    upsampled bilinearly (``align_corners=True``) to the input size.

    ``pretrained_weights``: a local file (never downloaded) holding a torchvision ImageNet ResNet
    state_dict (``fc.*`` dropped, every other encoder key must match) or a full MTNet state_dict
    (keys ``encoder.*``, loaded strictly), either possibly under a ``"net"`` or ``"state_dict"``
    entry.
    """

    output_stride = 16

    def __init__(
        self,
        encoder: str = "resnet50",
        branches: Sequence[str] = ("csa", "sa", "ca"),
        in_channels: int = 3,
        out_channels: int = 2,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        aspp_rates: Sequence[int] = (1, 6, 12, 18),
        norm_groups: int = 4,
        aspp_dropout: float = 0.5,
        decoder_dropout: Sequence[float] = (0.5, 0.1),
        feature_noise: float = 0.3,
        feature_noise_branches: Sequence[str] = ("csa", "sa", "ca"),
        backbone_norm: str = "bn",
        layer4_dilation: int = 1,
        pretrained_weights: str = "",
        dropout_per_branch: bool = True,
    ):
        super().__init__()
        if isinstance(branches, str) or not 1 <= len(branches) <= 3:
            raise InputError(
                f"branches {branches!r}: expected a list of 1 to 3 names from {list(ATTENTIONS)}"
            )
        if isinstance(feature_noise_branches, str):
            raise InputError(f"feature_noise_branches {feature_noise_branches!r}: expected a list")
        for key, names in (
            ("branches", branches),
            ("feature_noise_branches", feature_noise_branches),
        ):
            for name in names:
                if name not in ATTENTIONS:
                    raise InputError(
                        f"{key}: unknown branch {name!r}, expected one of {list(ATTENTIONS)}"
                    )
        if not 0 <= feature_noise <= 1:
            raise InputError(f"feature_noise {feature_noise!r}: expected a value in [0, 1]")
        self.branches = tuple(branches)
        self.low_level_in, self.high_channels = ENCODERS.get(encoder, (None, None))
        self.encoder = _build_encoder(encoder, in_channels, backbone_norm, layer4_dilation)
        self.dropout_per_branch = bool(dropout_per_branch)
        self.aspp = ASPP(
            self.high_channels,
            decoder_channels,
            aspp_rates,
            norm_groups,
            0.0 if self.dropout_per_branch else aspp_dropout,
        )
        self.branch_dropout = nn.Dropout(aspp_dropout if self.dropout_per_branch else 0.0)
        self.decoders = nn.ModuleList(
            [
                AttentionDecoder(
                    name,
                    self.low_level_in,
                    decoder_channels,
                    decoder_channels,
                    low_level_channels,
                    out_channels,
                    norm_groups,
                    decoder_dropout,
                )
                for name in self.branches
            ]
        )
        self.feature_noise = FeatureNoise(feature_noise)
        self.noisy_branches = tuple(name in feature_noise_branches for name in self.branches)
        if pretrained_weights:
            self.load_pretrained(str(pretrained_weights))

    def load_pretrained(self, path: str) -> None:
        """Load a torchvision ResNet state_dict into the encoder or a full MTNet state_dict into
        the network from the local file ``path`` (see the class docstring)."""
        if not os.path.isfile(path):
            raise MissingInputError(
                f"pretrained weights file {path} (bundle key pretrained) does not exist"
            )
        state = load_checkpoint(path)
        for entry in ("net", "state_dict"):
            if isinstance(state, Mapping) and isinstance(state.get(entry), Mapping):
                state = state[entry]
                break
        if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
            raise InputError(
                f"pretrained weights file {path} (bundle key pretrained): not a state_dict (a "
                f"mapping of parameter names to tensors, possibly under 'net' or 'state_dict'), "
                f"got {type(state).__name__}"
            )
        state = _strip_prefix(state, "module.")  # saved from (Distributed)DataParallel
        if any(k.startswith("encoder.") for k in state):
            _load_exactly(self, state, path, f"MTNet (branches {list(self.branches)})")
        else:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            _load_exactly(self.encoder, state, path, "ResNet encoder (torchvision key layout)")

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, in_channels, H, W) -> low-level (B, 64|256, H/4, W/4), high-level
        (B, 512|2048, H/16, W/16) (sizes rounded up)."""
        e = self.encoder
        low = e.layer1(e.maxpool(e.relu(e.bn1(e.conv1(x)))))
        return low, e.layer4(e.layer3(e.layer2(low)))

    def _branch_index(self, branch: Union[str, int]) -> int:
        if isinstance(branch, int) and not isinstance(branch, bool):
            if 0 <= branch < len(self.branches):
                return branch
        elif branch in self.branches:
            return self.branches.index(branch)  # the first one when names repeat
        raise InputError(
            f"branch {branch!r} is not one of the network's branches {list(self.branches)} "
            f"(a name or an index)"
        )

    def _decode(self, index: int, feats: torch.Tensor, low: torch.Tensor, size) -> torch.Tensor:
        feats = self.branch_dropout(feats)  # p = 0 (identity) with dropout_per_branch=False
        if self.noisy_branches[index]:
            feats = self.feature_noise(feats)
        return _upsample(self.decoders[index](feats, low), size)

    def _check_input(self, x: torch.Tensor) -> None:
        assert (
            x.ndim == 4 and x.shape[1] == self.encoder.conv1.in_channels
        ), f"MTNet expects (B, {self.encoder.conv1.in_channels}, H, W), got {tuple(x.shape)}"

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, in_channels, H, W) -> K logits (B, out_channels, H, W) in ``branches`` order."""
        self._check_input(x)
        low, high = self.encode(x)
        feats = self.aspp(high)
        return tuple(self._decode(i, feats, low, x.shape[2:]) for i in range(len(self.branches)))

    def forward_branch(self, x: torch.Tensor, branch: Union[str, int]) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, out_channels, H, W) of one branch (name or
        index), running the encoder and ASPP once and only that decoder."""
        index = self._branch_index(branch)
        self._check_input(x)
        low, high = self.encode(x)
        return self._decode(index, self.aspp(high), low, x.shape[2:])


def _unwrap(net: nn.Module) -> nn.Module:
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return net.module
    return net


class MTNetPredictor(nn.Module):
    """Inference view of an ``MTNet``: (B, in_channels, H, W) -> (B, out_channels, H, W).

    ``branch`` a branch name of ``net``: that branch's logits (``net.forward_branch``; the
    reference infers with ``csa`` and averages logits over sliding windows). ``"ensemble"``: the
    mean over branches of the softmax probabilities.

    ``state_dict`` / ``load_state_dict`` are the wrapped MTNet's (no ``net.`` prefix), so a
    training checkpoint's ``net`` entry loads into the predictor too, e.g. to export it
    (``monai_bundles.common.export --net_id predictor --key_in_ckpt net``).
    """

    def __init__(self, net: nn.Module, branch: str = "csa"):
        super().__init__()
        branches = list(_unwrap(net).branches)
        if branch != "ensemble" and branch not in branches:
            raise InputError(
                f"inference_branch {branch!r} is not one of the network's branches {branches} "
                f"(or 'ensemble')"
            )
        self.net = net
        self.branch = branch

    def state_dict(self, *args, **kwargs):
        """The wrapped MTNet's state_dict (keys without a ``net.`` prefix)."""
        return _unwrap(self.net).state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load an MTNet state_dict (e.g. a checkpoint's ``net`` entry) into the wrapped MTNet."""
        return _unwrap(self.net).load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits of ``branch`` (or mean probabilities, ``ensemble``)
        (B, out_channels, H, W)."""
        if self.branch == "ensemble":
            return torch.stack([torch.softmax(z, dim=1) for z in self.net(x)]).mean(dim=0)
        return _unwrap(self.net).forward_branch(x, self.branch)
