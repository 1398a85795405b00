"""CDMA's optimiser set-up: the reference's four learning-rate groups and iteration milestones.

The reference (``core/abc_modules.get_parameter_groups`` + ``train_CDMA.py``) trains the encoder's
weights at the base lr, its biases (BatchNorm's) at 2x, the head's (ASPP, decoders, attention)
weights at 10x and biases at 20x. From scratch the reason for a small encoder lr (protecting
ImageNet weights) is gone: the bundle's from-scratch configs set every multiplier to 10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sslseg.errors import InputError

GROUPS = ("backbone_weight", "backbone_bias", "head_weight", "head_bias")


def parameter_groups(
    network: torch.nn.Module,
    base_lr: float,
    multipliers: Mapping[str, float],
    backbone_prefix: str = "encoder.",
) -> list[dict]:
    """Optimizer parameter groups ``[{"params", "lr", "name"}]`` of ``network``.

    Args:
        network: the model (a ``DistributedDataParallel`` wrapper is looked through).
        base_lr: learning rate the multipliers scale.
        multipliers: one float per group in ``GROUPS``; a parameter is a "bias" when its name
            ends with ``bias`` (as the reference: norm weights count as weights).
        backbone_prefix: parameter-name prefix of the encoder.

    Empty groups are left out (a frozen part, or a network without biases).
    """
    missing = [g for g in GROUPS if g not in multipliers]
    unknown = [g for g in multipliers if g not in GROUPS]
    if missing or unknown:
        raise InputError(
            f"lr_multipliers needs exactly the keys {list(GROUPS)}; missing {missing}, "
            f"unknown {unknown}"
        )
    module = getattr(network, "module", network)
    groups: dict[str, list] = {g: [] for g in GROUPS}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith(backbone_prefix) else "head"
        kind = "bias" if name.endswith("bias") else "weight"
        groups[f"{part}_{kind}"].append(param)
    return [
        {"params": params, "lr": base_lr * float(multipliers[g]), "name": g}
        for g, params in groups.items()
        if params
    ]


def iteration_milestones(max_iterations: int, fractions: Sequence[float]) -> list[int]:
    """``MultiStepLR`` milestones (iterations) at ``fractions`` of ``max_iterations``: the paper's
    "x0.1 every 50 of 150 epochs" is ``[1/3, 2/3]``, the reference code's ``[1/4, 1/2, 3/4]``."""
    bad = [f for f in fractions if not 0 < float(f) < 1]
    if bad:
        raise InputError(f"lr_milestones are fractions of max_iterations in (0, 1), got {bad}")
    return sorted({max(1, int(round(float(f) * max_iterations))) for f in fractions})
