"""DMD's distillation losses between two networks' temperature-softened predictions.

Shapes: logits and probabilities are (B, C, *spatial). With C == 1 the task is binary and the
channel is the foreground logit (sigmoid); with C > 1 the channels are classes (softmax over dim 1).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

DISTILL_KINDS = ("dice", "kl")


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled probabilities (B, C, *spatial) -> (B, C, *spatial).

    ``sigmoid(z / T)`` when C == 1, else ``softmax(z / T)`` over the channel dimension.
    """
    assert logits.ndim >= 3, f"expected logits (B, C, *spatial), got shape {tuple(logits.shape)}"
    assert temperature > 0, f"temperature must be positive, got {temperature}"
    scaled = logits / temperature
    return torch.sigmoid(scaled) if logits.shape[1] == 1 else torch.softmax(scaled, dim=1)


def _log_distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of the full per-voxel distribution, (B, K, *spatial).

    K == C for softmax; for one sigmoid channel K == 2 (background, foreground), so that a KL
    divergence compares the two Bernoulli distributions.
    """
    scaled = logits / temperature
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-scaled), F.logsigmoid(scaled)], dim=1)
    return torch.log_softmax(scaled, dim=1)


def soft_dice_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Dice loss between two probability maps p, q of shape (B, C, *spatial), a scalar.

    Per class ``1 - (2 sum(p q) + eps) / (sum(p^2) + sum(q^2) + eps)`` with the sums over batch
    and space (the UA-MT/DMD reference ``dice_loss``), then the mean over classes. Zero when
    p == q. This is MONAI's DiceLoss with squared denominators and batch reduction; the
    background channel of a softmax output is included, as in the reference code.
    """
    assert (
        p.shape == q.shape
    ), f"probability maps differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}"
    loss = DiceLoss(squared_pred=True, batch=True, smooth_nr=eps, smooth_dr=eps, soft_label=True)
    return loss(p, q)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for log-distributions (B, K, *spatial): summed over K, mean over voxels."""
    voxels = log_p.numel() // log_p.shape[1]
    return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / voxels


class DMDLoss(torch.nn.Module):
    """Mutual distillation term between two networks' logits (B, C, *spatial).

    Args:
        temperature: T of the softened probabilities ``soften(z, T)``.
        distill: ``"dice"`` (DMD: Dice loss between the softened predictions) or ``"kl"``
            (2-way KL ``KL(p2||p1) + KL(p1||p2)`` scaled by T^2; with T = 1 this is DML).
        detach_target: False (reference code): both returned entries are the same symmetric term
            and gradients reach both networks. True: net1's term uses p2 detached as target
            (for KL: ``KL(p2||p1)``) and net2's term uses p1 detached (``KL(p1||p2)``).

    ``forward(logits1, logits2)`` returns ``(loss_for_net1, loss_for_net2)``, two scalars.
    """

    def __init__(
        self, temperature: float = 2.0, distill: str = "dice", detach_target: bool = False
    ):
        super().__init__()
        assert distill in DISTILL_KINDS, f"distill must be one of {DISTILL_KINDS}, got {distill!r}"
        assert temperature > 0, f"temperature must be positive, got {temperature}"
        self.temperature = float(temperature)
        self.distill = distill
        self.detach_target = bool(detach_target)

    def forward(
        self, logits1: torch.Tensor, logits2: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        assert logits1.shape == logits2.shape, (
            f"the two networks' logits differ in shape: {tuple(logits1.shape)} vs "
            f"{tuple(logits2.shape)}"
        )
        if self.distill == "dice":
            return self._dice(logits1, logits2)
        return self._two_way_kl(logits1, logits2)

    def _dice(self, logits1, logits2):
        p1, p2 = soften(logits1, self.temperature), soften(logits2, self.temperature)
        if not self.detach_target:
            term = soft_dice_loss(p1, p2)
            return term, term
        return soft_dice_loss(p1, p2.detach()), soft_dice_loss(p2, p1.detach())

    def _two_way_kl(self, logits1, logits2):
        scale = self.temperature**2
        log_p1 = _log_distribution(logits1, self.temperature)
        log_p2 = _log_distribution(logits2, self.temperature)
        if not self.detach_target:
            term = scale * (_kl(log_p2, log_p1) + _kl(log_p1, log_p2))
            return term, term
        return scale * _kl(log_p2.detach(), log_p1), scale * _kl(log_p1.detach(), log_p2)
