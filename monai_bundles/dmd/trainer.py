"""``DMDTrainer``: MONAI trainer for two mutually distilled networks (DMD, MICCAI 2023).

Each iteration takes a two-stream batch ``{"labeled": {"image", "label"}, "unlabeled": {"image"}}``
(see ``monai_bundles.common.two_stream``), runs both networks on the labeled images followed by the
unlabeled ones, and minimises ``L_1 + L_2`` with ``L_i = L_sup_i + lambda * L_distill_i`` in one
backward pass and one optimizer step over both networks' parameters (each network's gradient is
``dL_sup_i/dtheta_i + lambda * dL_distill/dtheta_i``, as in the reference ``train_dmd.py``). It
fires MONAI's ``IterationEvents`` like ``SupervisedTrainer`` so standard handlers keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys

LABELED, UNLABELED = "labeled", "unlabeled"
# the losses in ``engine.state.output``, logged by ``monai_bundles.common.stats.loss_terms``
LOSS_TERMS = (Keys.LOSS, "loss_sup1", "loss_sup2", "loss_distill")


class DMDTrainer(Trainer):
    """Trainer of two networks with supervised and mutual-distillation losses.

    Args:
        device, max_epochs, epoch_length, non_blocking, iteration_update, postprocessing,
        key_train_metric, additional_metrics, metric_cmp_fn, train_handlers, amp, event_names,
        event_to_attr, decollate, optim_set_to_none, to_kwargs, amp_kwargs: as in MONAI's
            ``SupervisedTrainer``.
        train_data_loader: yields ``{"labeled": batch_l, "unlabeled": batch_u}``; batch_l has
            "image" (B_l, C, *spatial) and "label", batch_u has "image" (B_u, C, *spatial).
        network1, network2: same architecture, different initialisation; logits (B, K, *spatial).
        optimizer: one optimizer over both networks' parameters.
        sup_loss_function: ``loss(logits (B_l, K, *spatial), label) -> scalar``, e.g.
            ``DiceLoss(sigmoid=True)`` (K == 1) or ``DiceLoss(softmax=True, to_onehot_y=True)``.
        distill_loss_function: ``loss(logits1, logits2) -> (loss_net1, loss_net2)`` over all
            B_l + B_u images, e.g. ``monai_bundles.dmd.losses.DMDLoss``.
        lambda_distill: weight of the distillation term (a plain attribute: handlers may ramp it).
        prepare_batch: applied to each stream's batch separately (MONAI's
            ``default_prepare_batch`` by default: returns (image, label or None) on the device).

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
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.network1 = network1
        self.network2 = network2
        self.networks = [network1, network2]
        self.optimizer = optimizer
        self.sup_loss_function = sup_loss_function
        self.distill_loss_function = distill_loss_function
        self.lambda_distill = float(lambda_distill)
        self.optim_set_to_none = optim_set_to_none

    def _prepare_streams(self, engine: DMDTrainer, batchdata: dict[str, Any]):
        """Both streams on the device: images (B_l + B_u, C, *spatial), labels, B_l."""
        assert isinstance(batchdata, dict) and {LABELED, UNLABELED} <= set(batchdata), (
            f"expected a dict with keys {LABELED!r} and {UNLABELED!r}, got "
            f"{type(batchdata).__name__} with keys {sorted(getattr(batchdata, 'keys', list)())}"
        )
        args = (engine.state.device, engine.non_blocking)
        image_l, label = engine.prepare_batch(batchdata[LABELED], *args, **engine.to_kwargs)[:2]
        image_u = engine.prepare_batch(batchdata[UNLABELED], *args, **engine.to_kwargs)[0]
        assert label is not None, "the labeled stream's batch has no 'label'"
        assert image_l.shape[1:] == image_u.shape[1:], (
            f"labeled and unlabeled images differ in shape: {tuple(image_l.shape)} vs "
            f"{tuple(image_u.shape)}"
        )
        return torch.cat([image_l, image_u], dim=0), label, image_l.shape[0]

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

    def _iteration(self, engine: DMDTrainer, batchdata: dict[str, Any]) -> dict:
        """One DMD step on a two-stream batch; returns ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, label, n_labeled = self._prepare_streams(engine, batchdata)
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: label}
        for network in engine.networks:
            network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                self._compute_losses(engine, images, label, n_labeled)
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            self._compute_losses(engine, images, label, n_labeled)
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
