"""ConvNeXt and LACSS's FPN as detectron2 backbones (CKS / LACSS principal network).

- :class:`ConvNeXt`: a port of ``lacss/modules/convnext.py`` (``jiyuuchc/lacss`` tag 0.4.4, after
  facebookresearch/ConvNeXt): no classification head and no output norms, 4x4/4 patch stem, tanh
  GELU, layer scale, stochastic depth. Module names follow the official PyTorch ConvNeXt
  (``downsample_layers.i``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``), so its ImageNet
  checkpoints load without renaming (minus the head and final norm).
- :class:`LacssFPN`: the ``FPN`` of ``lacss/modules/common.py`` (used by ``ConvNeXt`` and the
  ``Lacss`` model in ``lacss/modules/lacss.py``, tag 0.4.4), wrapping any bottom-up backbone. It
  differs from detectron2's FPN: ReLU after the laterals and after each 3x3 conv, the top-down
  path carries the *convolved* merged map, the coarsest level has no 3x3 conv, no extra levels.
- Builders in detectron2's ``BACKBONE_REGISTRY``: ``build_lacss_convnext_backbone`` (default) and
  ``build_lacss_resnet_backbone`` (d2 ResNet + LacssFPN, the CPU option).

Tensors are NCHW. Inputs must have H and W divisible by ``size_divisibility`` (32), as
``ImageList.from_tensors`` pads them.
"""

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

__all__ = [
    "Block",
    "ConvNeXt",
    "DropPath",
    "LacssFPN",
    "LayerNorm2d",
    "build_lacss_convnext_backbone",
    "build_lacss_resnet_backbone",
    "drop_path",
]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of the residual branch with probability ``rate``.

    Args:
        x: (N, ...) residual branch output.
        rate: drop probability; kept samples are scaled by 1 / (1 - rate).
        training: identity when False (or when ``rate`` is 0).

    Returns:
        Tensor shaped like ``x``.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device))
    return x / keep * mask.to(x.dtype)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (identity in eval mode)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, ...) -> same shape."""
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an (N, C, H, W) map (flax ``nn.LayerNorm`` on NHWC)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt block (``_Block`` of ``lacss/modules/convnext.py``).

    dwConv 7x7 (bias) -> LayerNorm(1e-6) -> Linear(4d) -> GELU(tanh) -> Linear(d) -> x gamma
    -> DropPath -> + shortcut. Shape (N, d, H, W) -> (N, d, H, W).
    """

    def __init__(
        self,
        dim: int,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        kernel_size: int = 7,
    ):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU(approximate="tanh")  # jax.nn.gelu's default
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, d, H, W) -> (N, d, H, W)."""
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = x * self.gamma
        x = self.drop_path(x.permute(0, 3, 1, 2))
        return shortcut + x


class ConvNeXt(Backbone):
    """ConvNeXt encoder of LACSS (``lacss/modules/convnext.py``, tag 0.4.4), no head.

    Stage k (0-based) outputs ``res{k+2}`` with ``dims[k]`` channels at stride ``4 * 2**k``:
    stage 0 = Conv 4x4/4 (bias) + LayerNorm2d(1e-6); stage k > 0 = LayerNorm2d(1e-6) + Conv 2x2/2
    (bias); each followed by ``depths[k]`` :class:`Block` s. The drop-path rate grows linearly
    from 0 (first block) to ``drop_path_rate`` (last block of all stages). Only the stages up to
    the last requested output are built.

    ConvNeXt-S (depths (3, 3, 27, 3), dims (96, 192, 384, 768)) has 49,453,152 parameters.
    """

    def __init__(
        self,
        in_channels: int = 3,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    ):
        """
        Args:
            in_channels: input image channels.
            depths: blocks per stage.
            dims: channels per stage (same length as ``depths``).
            drop_path_rate: stochastic-depth rate of the last block.
            layer_scale_init: initial value of the layer-scale gammas (<= 0: no layer scale).
            out_features: subset of ``res2 .. res{len(depths) + 1}`` to return.
        """
        super().__init__()
        assert len(depths) == len(
            dims
        ), f"CONVNEXT.DEPTHS {depths} and DIMS {dims} differ in length"
        names = [f"res{k + 2}" for k in range(len(depths))]
        unknown = [f for f in out_features if f not in names]
        assert (
            out_features and not unknown
        ), f"unknown ConvNeXt out_features {unknown}; have {names}"
        num_stages = max(names.index(f) for f in out_features) + 1

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.downsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        self._out_features = [f for f in names if f in out_features]
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        for k in range(num_stages):
            if k == 0:
                down = nn.Sequential(
                    nn.Conv2d(in_channels, dims[0], 4, stride=4), LayerNorm2d(dims[0], 1e-6)
                )
            else:
                down = nn.Sequential(
                    LayerNorm2d(dims[k - 1], 1e-6), nn.Conv2d(dims[k - 1], dims[k], 2, stride=2)
                )
            self.downsample_layers.append(down)
            first = sum(depths[:k])
            self.stages.append(
                nn.Sequential(
                    *[Block(dims[k], rates[first + j], layer_scale_init) for j in range(depths[k])]
                )
            )
            self._out_feature_channels[names[k]] = dims[k]
            self._out_feature_strides[names[k]] = 4 * 2**k
        self._size_divisibility = 4 * 2 ** (num_stages - 1)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) with H, W multiples of ``size_divisibility``.

        Returns:
            {``res{k+2}``: (N, dims[k], H / 2**(k+2), W / 2**(k+2))} for the ``out_features``.
        """
        outputs = {}
        for k, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = stage(down(x))
            name = f"res{k + 2}"
            if name in self._out_features:
                outputs[name] = x
        return outputs


class LacssFPN(Backbone):
    """LACSS's FPN (``FPN`` in ``lacss/modules/common.py``, tag 0.4.4) over a bottom-up backbone.

    With the ``in_features`` sorted by stride (finest first) and ``lat[k] = ReLU(lateral_k(x_k))``
    (1x1 conv with bias): ``out[-1] = lat[-1]``; for finer k,
    ``out[k] = ReLU(conv3x3_k(nearest_upsample(out[k + 1], size(lat[k])) + lat[k]))`` (with bias).
    Outputs are named ``p{log2(stride)}`` (p2..p5 for res2..res5) with ``out_channels`` channels;
    there are no extra levels. For inputs of 96, 192, 384, 768 channels and 384 outputs it has
    4,536,960 parameters.

    Module names: ``bottom_up``, ``fpn_lateral{s}`` and ``fpn_output{s}`` (s = log2 stride; no
    ``fpn_output`` for the coarsest level).
    """

    def __init__(self, bottom_up: Backbone, in_features: Sequence[str], out_channels: int = 384):
        """
        Args:
            bottom_up: backbone whose ``output_shape()`` holds every name of ``in_features``.
            in_features: bottom-up feature names, e.g. ``["res2", "res3", "res4", "res5"]``.
            out_channels: channels of every output level.
        """
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        assert in_features and not missing, (
            f"LACSS_FPN.IN_FEATURES {missing} are not outputs of the bottom-up backbone "
            f"({list(shapes)})"
        )
        self.bottom_up = bottom_up
        self.in_features: List[str] = sorted(in_features, key=lambda f: shapes[f].stride)
        strides = [shapes[f].stride for f in self.in_features]
        assert len(set(strides)) == len(strides), f"duplicate strides {strides} in {in_features}"
        self._levels = [int(math.log2(s)) for s in strides]
        assert all(2**lv == s for lv, s in zip(self._levels, strides)), f"strides {strides}"

        self.lateral_convs = []
        self.output_convs = []
        for i, (f, lv) in enumerate(zip(self.in_features, self._levels)):
            lateral = nn.Conv2d(shapes[f].channels, out_channels, 1)
            self.add_module(f"fpn_lateral{lv}", lateral)
            self.lateral_convs.append(lateral)
            if i < len(self.in_features) - 1:
                output = nn.Conv2d(out_channels, out_channels, 3, padding=1)
                self.add_module(f"fpn_output{lv}", output)
                self.output_convs.append(output)

        self._out_features = [f"p{lv}" for lv in self._levels]
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._out_feature_strides = {f"p{lv}": s for lv, s in zip(self._levels, strides)}
        self._size_divisibility = max(bottom_up.size_divisibility, strides[-1])

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W), H and W multiples of ``size_divisibility``.

        Returns:
            {``p{l}``: (N, out_channels, H / 2**l, W / 2**l)}, finest first.
        """
        bottom_up = self.bottom_up(x)
        lat = [F.relu(conv(bottom_up[f])) for conv, f in zip(self.lateral_convs, self.in_features)]
        outs = [lat[-1]]
        for k in range(len(lat) - 2, -1, -1):
            # jax.image.resize "nearest" = half-pixel centres = torch "nearest-exact"
            # (identical to "nearest" for the exact 2x of padded inputs)
            up = F.interpolate(outs[0], size=lat[k].shape[-2:], mode="nearest-exact")
            outs.insert(0, F.relu(self.output_convs[k](up + lat[k])))
        return dict(zip(self._out_features, outs))


def _lacss_fpn(cfg: CfgNode, bottom_up: Backbone) -> LacssFPN:
    return LacssFPN(
        bottom_up,
        in_features=list(cfg.MODEL.LACSS_FPN.IN_FEATURES),
        out_channels=cfg.MODEL.LACSS_FPN.OUT_CHANNELS,
    )


@BACKBONE_REGISTRY.register()
def build_lacss_convnext_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> LacssFPN:
    """ConvNeXt (``MODEL.CONVNEXT.*``) + LacssFPN (``MODEL.LACSS_FPN.*``); outputs p2..p5.

    ``MODEL.LACSS_FPN.IN_FEATURES`` must be among ``MODEL.CONVNEXT.OUT_FEATURES``.
    """
    c = cfg.MODEL.CONVNEXT
    bottom_up = ConvNeXt(
        in_channels=input_shape.channels,
        depths=tuple(c.DEPTHS),
        dims=tuple(c.DIMS),
        drop_path_rate=c.DROP_PATH_RATE,
        layer_scale_init=c.LAYER_SCALE_INIT,
        out_features=tuple(c.OUT_FEATURES),
    )
    return _lacss_fpn(cfg, bottom_up)


@BACKBONE_REGISTRY.register()
def build_lacss_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> LacssFPN:
    """detectron2 ResNet (``MODEL.RESNETS.*``) + LacssFPN (``MODEL.LACSS_FPN.*``).

    The ResNet's ``OUT_FEATURES`` are set to ``MODEL.LACSS_FPN.IN_FEATURES`` (on a copy of the
    config), so ``MODEL.RESNETS.OUT_FEATURES`` need not be edited.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.OUT_FEATURES = list(cfg.MODEL.LACSS_FPN.IN_FEATURES)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return _lacss_fpn(cfg, bottom_up)
