"""``CDMATrainer``: one MTNet, K decoders, supervised + cross-distillation + entropy losses.

Each iteration forwards the labeled images followed by the unlabeled ones through the network once
(K logits), and minimises (reference ``train_CDMA.py`` l.96-124)::

    loss = L_sup + w * (lambda_cdkd * L_cdkd + lambda_um * L_um),   w = 0 for the first
    ``unsup_warmup_iterations`` iterations, then 1

with ``L_sup`` on the labeled images and ``L_cdkd``, ``L_um`` on all images
(``monai_bundles.cdma.losses.CDMALoss``). While ``w`` or both lambdas are 0 the unsupervised
terms are not computed (a supervised baseline runs the labeled stream alone, same network).
The step itself (streams, AMP, backward, ``IterationEvents``) is ``common.two_stream_trainer``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_bundles.common.two_stream_trainer import TwoStreamTrainer

# the losses in ``engine.state.output``, logged by ``monai_bundles.common.stats.loss_terms``
LOSS_TERMS = (Keys.LOSS, "loss_sup", "loss_cdkd", "loss_um")


class CDMATrainer(TwoStreamTrainer):
    """Trainer of one multi-decoder network (``MTNet``) with the CDMA losses.

    Args:
        network: ``forward(x (B, C_in, H, W))`` -> sequence of K logits (B, C, H, W).
        optimizer: over the network's parameters (``monai_bundles.cdma.optim.parameter_groups``).
        loss_function: ``CDMALoss``: ``(logits, label, n_labeled, unsupervised)`` -> dict of the
            scalar terms ``sup``, ``cdkd``, ``um``.
        lambda_cdkd, lambda_um: weights of the cross-distillation and entropy terms (plain
            attributes: handlers may ramp them).
        unsup_warmup_iterations: iterations (counted from 1) trained with ``w = 0``.
        pred_branch: index of the branch whose labeled logits go to ``output["pred"]`` (CSA).
        kwargs: the other arguments of ``TwoStreamTrainer`` (those of MONAI's
            ``SupervisedTrainer``: device, max_epochs, train_data_loader, epoch_length, amp, ...).

    ``engine.state.output`` holds "image" (B_l + B_u, C, H, W), "label", "pred" (logits of
    ``pred_branch`` on the labeled images), "loss" (the total, a tensor) and the floats
    "loss_sup", "loss_cdkd", "loss_um" (unweighted) and "unsup_weight" (w).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        lambda_cdkd: float = 0.1,
        lambda_um: float = 0.1,
        unsup_warmup_iterations: int = 0,
        pred_branch: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            networks=[network],
            optimizer=optimizer,
            **kwargs,
        )
        self.network = network
        self.loss_function = loss_function
        self.lambda_cdkd = float(lambda_cdkd)
        self.lambda_um = float(lambda_um)
        self.unsup_warmup_iterations = int(unsup_warmup_iterations)
        self.pred_branch = int(pred_branch)

    def unsup_weight(self, iteration: int) -> float:
        """``w`` at ``iteration`` (1-based): 0 in the warm-up, then 1 (reference: epoch < 15)."""
        return 0.0 if iteration <= self.unsup_warmup_iterations else 1.0

    def _compute_losses(self, engine: CDMATrainer, images, label, n_labeled: int) -> None:
        """Forward the network once and fill ``engine.state.output`` with the losses."""
        logits = engine.network(images)
        engine.state.output[Keys.PRED] = logits[engine.pred_branch][:n_labeled]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        w = engine.unsup_weight(engine.state.iteration)
        unsupervised = w > 0 and (engine.lambda_cdkd != 0 or engine.lambda_um != 0)
        terms = engine.loss_function(logits, label, n_labeled, unsupervised=unsupervised)
        loss = terms["sup"]
        if unsupervised:
            loss = loss + w * (engine.lambda_cdkd * terms["cdkd"] + engine.lambda_um * terms["um"])
        engine.state.output[Keys.LOSS] = loss
        engine.state.output.update(
            loss_sup=float(terms["sup"].detach()),
            loss_cdkd=float(terms["cdkd"].detach()),
            loss_um=float(terms["um"].detach()),
            unsup_weight=w,
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
