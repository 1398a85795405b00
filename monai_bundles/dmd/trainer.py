"""``DMDTrainer``: MONAI trainer for two mutually distilled networks (DMD, MICCAI 2023).

Each iteration takes a two-stream batch ``{"labeled": {"image", "label"}, "unlabeled": {"image"}}``
(see ``monai_bundles.common.two_stream``), runs both networks on the labeled images followed by the
unlabeled ones, and minimises ``L_1 + L_2`` with ``L_i = L_sup_i + lambda * L_distill_i`` in one
backward pass and one optimizer step over both networks' parameters (each network's gradient is
``dL_sup_i/dtheta_i + lambda * dL_distill/dtheta_i``, as in the reference ``train_dmd.py``). The
step itself (streams, AMP, backward, ``IterationEvents``) is ``common.two_stream_trainer``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_bundles.common.two_stream_trainer import TwoStreamTrainer

# the losses in ``engine.state.output``, logged by ``monai_bundles.common.stats.loss_terms``
LOSS_TERMS = (Keys.LOSS, "loss_sup1", "loss_sup2", "loss_distill")


class DMDTrainer(TwoStreamTrainer):
    """Trainer of two networks with supervised and mutual-distillation losses.

    Args:
        network1, network2: same architecture, different initialisation; logits (B, K, *spatial).
        optimizer: one optimizer over both networks' parameters.
        sup_loss_function: ``loss(logits (B_l, K, *spatial), label) -> scalar``, e.g.
            ``DiceLoss(sigmoid=True)`` (K == 1) or ``DiceLoss(softmax=True, to_onehot_y=True)``.
        distill_loss_function: ``loss(logits1, logits2) -> (loss_net1, loss_net2)`` over all
            B_l + B_u images, e.g. ``monai_bundles.dmd.losses.DMDLoss``.
        lambda_distill: weight of the distillation term (a plain attribute: handlers may ramp it).
        kwargs: the other arguments of ``TwoStreamTrainer`` (those of MONAI's
            ``SupervisedTrainer``: device, max_epochs, train_data_loader, epoch_length, amp, ...).

    ``engine.state.output`` holds "image" (B_l + B_u, C, *spatial), "label", "pred" (network1's
    logits on the labeled images), "loss" (the total, a tensor as in ``SupervisedTrainer``) and
    the floats "loss_sup1", "loss_sup2", "loss_distill" (network1's distillation term).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network1: torch.nn.Module,
        network2: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        sup_loss_function: Callable,
        distill_loss_function: Callable,
        lambda_distill: float = 4.0,
        **kwargs,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            networks=[network1, network2],
            optimizer=optimizer,
            **kwargs,
        )
        self.network1 = network1
        self.network2 = network2
        self.sup_loss_function = sup_loss_function
        self.distill_loss_function = distill_loss_function
        self.lambda_distill = float(lambda_distill)

    def _compute_losses(self, engine: DMDTrainer, images, label, n_labeled: int) -> None:
        """Forward both networks and fill ``engine.state.output`` with the losses."""
        logits1, logits2 = engine.network1(images), engine.network2(images)
        engine.state.output[Keys.PRED] = logits1[:n_labeled]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        sup1 = engine.sup_loss_function(logits1[:n_labeled], label).mean()
        sup2 = engine.sup_loss_function(logits2[:n_labeled], label).mean()
        distill1, distill2 = engine.distill_loss_function(logits1, logits2)
        # Each network must receive lambda * dL_distill/dtheta_i (L_i = L_sup_i + lambda * L_dist;
        # the reference code's `sup1 + sup2 + lam_kd * loss_kd`): a symmetric term shared by both
        # networks (the same tensor, gradients reaching both) is added once; two per-direction
        # terms with detached targets are both added.
        distill = distill1 if distill1 is distill2 else distill1 + distill2
        engine.state.output[Keys.LOSS] = sup1 + sup2 + engine.lambda_distill * distill
        engine.state.output.update(
            loss_sup1=sup1.item(), loss_sup2=sup2.item(), loss_distill=distill1.item()
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
