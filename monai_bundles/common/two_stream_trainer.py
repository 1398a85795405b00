"""``TwoStreamTrainer``: the MONAI trainer skeleton of the semi-supervised bundles (DMD, CDMA).

Each iteration takes a two-stream batch ``{"labeled": {"image", "label"}, "unlabeled": {"image"}}``
(``monai_bundles.common.two_stream``; a batch without ``"unlabeled"`` trains on the labeled images
only, e.g. a supervised baseline on the same draws), concatenates the labeled images and the
unlabeled ones on the device, lets the subclass compute the losses (``_compute_losses``), and
takes one backward pass and one optimizer step, with AMP where enabled. It fires MONAI's
``IterationEvents`` like ``SupervisedTrainer``, so standard handlers keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys

LABELED, UNLABELED = "labeled", "unlabeled"


class TwoStreamTrainer(Trainer):
    """Base trainer of one or more networks on labeled + unlabeled batches.

    Args:
        device, max_epochs, epoch_length, non_blocking, iteration_update, postprocessing,
        key_train_metric, additional_metrics, metric_cmp_fn, train_handlers, amp, event_names,
        event_to_attr, decollate, optim_set_to_none, to_kwargs, amp_kwargs: as in MONAI's
            ``SupervisedTrainer``.
        train_data_loader: yields ``{"labeled": batch_l, "unlabeled": batch_u}`` (or the labeled
            part alone); batch_l has "image" (B_l, C, *spatial) and "label", batch_u "image"
            (B_u, C, *spatial).
        networks: the trained networks (``train()`` is called on each every iteration).
        optimizer: one optimizer over all trained parameters.
        prepare_batch: applied to each stream's batch separately (MONAI's
            ``default_prepare_batch`` by default: returns (image, label or None) on the device).

    Subclasses implement ``_compute_losses(engine, images, label, n_labeled)``: forward, set
    ``engine.state.output[Keys.PRED]``, fire ``FORWARD_COMPLETED``, set the total
    ``engine.state.output[Keys.LOSS]`` (a tensor) and any float terms, fire ``LOSS_COMPLETED``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        networks: Sequence[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
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
        self.networks = list(networks)
        self.optimizer = optimizer
        self.optim_set_to_none = optim_set_to_none

    def _prepare_streams(self, engine: TwoStreamTrainer, batchdata: dict[str, Any]):
        """Both streams on the device: images (B_l + B_u, C, *spatial), labels, B_l.

        A batch without an ``"unlabeled"`` entry gives the labeled images alone (B_u = 0).
        """
        assert isinstance(batchdata, dict) and LABELED in batchdata, (
            f"expected a dict with the key {LABELED!r} (and {UNLABELED!r}), got "
            f"{type(batchdata).__name__} with keys {sorted(getattr(batchdata, 'keys', list)())}"
        )
        args = (engine.state.device, engine.non_blocking)
        image_l, label = engine.prepare_batch(batchdata[LABELED], *args, **engine.to_kwargs)[:2]
        assert label is not None, "the labeled stream's batch has no 'label'"
        if UNLABELED not in batchdata:
            return image_l, label, image_l.shape[0]
        image_u = engine.prepare_batch(batchdata[UNLABELED], *args, **engine.to_kwargs)[0]
        assert image_l.shape[1:] == image_u.shape[1:], (
            f"labeled and unlabeled images differ in shape: {tuple(image_l.shape)} vs "
            f"{tuple(image_u.shape)}"
        )
        return torch.cat([image_l, image_u], dim=0), label, image_l.shape[0]

    def _compute_losses(self, engine: TwoStreamTrainer, images, label, n_labeled: int) -> None:
        """Forward the networks and fill ``engine.state.output`` (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _compute_losses")

    def _iteration(self, engine: TwoStreamTrainer, batchdata: dict[str, Any]) -> dict:
        """One step on a two-stream batch; returns ``engine.state.output``."""
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
