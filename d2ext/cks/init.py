"""Flax-style parameter initialisation for the CKS (LACSS) model (key ``MODEL.CKS.INIT``).

LACSS (``jiyuuchc/lacss`` tag 0.4.4) keeps flax's defaults: every ``nn.Conv`` / ``nn.Dense`` /
``nn.ConvTranspose`` kernel is LeCun normal, i.e. ``variance_scaling(1, "fan_in",
"truncated_normal")`` (a normal truncated at +-2 sigma whose std is corrected by
0.87962566103423978 so that the *truncated* variable has variance 1/fan_in), every bias is 0, every
norm has scale 1 and bias 0. The paper says He init: ``"he"`` uses the same truncated normal with
variance 2/fan_in (flax's ``he_normal``).

fan_in is flax's: receptive field x input channels per group. For ``nn.ConvTranspose*`` this is
``in_channels * prod(kernel_size)``, not torch's own fan_in (computed from the weight's second
axis, i.e. the output channels). Parameters that belong to no conv/linear/norm module, such as
ConvNeXt's layer-scale gammas, are left alone.
"""

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

__all__ = ["init_lacss_", "truncated_normal_", "TRUNCATED_NORMAL_STD_CORRECTION"]

# std of a standard normal truncated to [-2, 2] (jax.nn.initializers.variance_scaling)
TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978

# scheme -> variance scale (variance = scale / fan_in)
_SCALES = {"lecun": 1.0, "he": 2.0}

_NORMS = (nn.LayerNorm, nn.GroupNorm, _NormBase)


def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with N(0, s^2) truncated to [-2 s, 2 s], s = std / 0.8796...

    The result has standard deviation ``std`` (jax ``variance_scaling(..., "truncated_normal")``).
    """
    s = std / TRUNCATED_NORMAL_STD_CORRECTION
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=0.0, std=s, a=-2.0 * s, b=2.0 * s)


def _fan_in(module: nn.Module) -> int:
    """flax fan_in of a conv / transposed conv / linear module's kernel.

    Conv weight (out, in / groups, *k) and ConvTranspose weight (in, out / groups, *k) alike: one
    output value sees ``in / groups`` channels x ``prod(k)`` taps (torch's own fan_in of a
    transposed conv would use out / groups instead).
    """
    if isinstance(module, _ConvNd):  # includes _ConvTransposeNd
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    return module.in_features


def _is_norm(module: nn.Module) -> bool:
    """torch norms plus channels-first LayerNorm variants (class name ending in "Norm*")."""
    if isinstance(module, _NORMS):
        return True
    name = type(module).__name__
    return "Norm" in name and isinstance(getattr(module, "weight", None), nn.Parameter)


def init_lacss_(module: nn.Module, scheme: str = "lecun") -> None:
    """Re-initialise every conv / linear / norm of ``module`` (recursively) in place.

    Args:
        module: any module; its Conv{1,2,3}d, ConvTranspose{1,2,3}d and Linear weights get a
            truncated normal with variance ``scale / fan_in`` (``scale`` 1 for ``"lecun"``, 2 for
            ``"he"``) and zero biases; norms (LayerNorm, GroupNorm, BatchNorm, channels-first
            LayerNorms) get weight 1 and bias 0. Other parameters (layer-scale gammas, position
            embeddings) and buffers are untouched.
        scheme: ``"lecun"`` (LACSS code, flax default) or ``"he"`` (paper).

    Raises:
        ValueError: unknown ``scheme`` (the message names ``MODEL.CKS.INIT``).
    """
    if scheme not in _SCALES:
        raise ValueError(f"MODEL.CKS.INIT must be one of {sorted(_SCALES)}, got {scheme!r}")
    scale = _SCALES[scheme]
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (_ConvNd, nn.Linear)):
                truncated_normal_(m.weight, math.sqrt(scale / _fan_in(m)))
                if m.bias is not None:
                    m.bias.zero_()
            elif _is_norm(m):
                if isinstance(getattr(m, "weight", None), nn.Parameter):
                    m.weight.fill_(1.0)
                if isinstance(getattr(m, "bias", None), nn.Parameter):
                    m.bias.zero_()
