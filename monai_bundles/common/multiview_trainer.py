"""``MultiViewTrainer``: one 2D network per view of a volume, trained in lockstep (ATSO/RSTN).

Each iteration takes a batch with ``image_v{a}`` (B, C * context, h, w) and ``label_v{a}``
(B, 1, h, w) for every view axis ``a`` (``monai_bundles.common.multiview.RandViewSlabsd`` makes
them; wrapped as ``{"labeled": batch}`` by the two-stream loader with ``unlabeled_batch_size 0``),
runs view network ``a`` on its own slabs, sums the per-view losses and takes one backward pass and
one optimizer step over all parameters. Each network gets gradients from its own loss only, so
this is the same as independent trainings run side by side, with one loader, one checkpoint and
one resume. With a single view it is a plain supervised 2D trainer (the ACDC variant).
The step itself (AMP, backward, ``IterationEvents``) is ``TwoStreamTrainer``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from monai_bundles.common.two_stream_trainer import LABELED, TwoStreamTrainer


def view_keys(axis: int) -> tuple[str, str]:
    """``("image_v{axis}", "label_v{axis}")``: the batch keys of one view."""
    return f"image_v{axis}", f"label_v{axis}"


class MultiViewTrainer(TwoStreamTrainer):
    """Trainer of one network per view axis with a supervised loss per view.

    Args:
        networks: one network per entry of ``views`` (same order), each mapping
            (B, C * context, h, w) to logits (B, K, h, w).
        views: the spatial axes (0, 1, 2) of the views; batch keys ``image_v{a}``/``label_v{a}``.
        loss_function: ``loss(logits (B, K, h, w), label (B, 1, h, w)) -> scalar``, e.g.
            ``DiceLoss(sigmoid=True)`` or ``DiceLoss(softmax=True, to_onehot_y=True)``.
        kwargs: the other arguments of ``TwoStreamTrainer`` (device, max_epochs,
            train_data_loader, optimizer, epoch_length, train_handlers, amp, ...).

    ``engine.state.output`` holds "loss" (the sum over views, a tensor) and the floats
    "loss_v{a}" per view; "pred" is the first view's logits.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        networks: Sequence[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        views: Sequence[int] = (0, 1, 2),
        **kwargs,
    ) -> None:
        networks = list(networks)
        views = [int(v) for v in views]
        assert len(networks) == len(views), (
            f"MultiViewTrainer: {len(networks)} networks for {len(views)} views {views}: "
            f"one network per view"
        )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            networks=networks,
            optimizer=optimizer,
            **kwargs,
        )
        self.views = views
        self.loss_function = loss_function

    def _prepare_streams(self, engine: MultiViewTrainer, batchdata: dict[str, Any]):
        """Per view (image, label) on the device: ``({a: image}, {a: label}, B)``."""
        batch = batchdata.get(LABELED, batchdata) if isinstance(batchdata, dict) else batchdata
        images, labels = {}, {}
        for axis in engine.views:
            key_i, key_l = view_keys(axis)
            assert key_i in batch and key_l in batch, (
                f"MultiViewTrainer: the batch has no {key_i!r}/{key_l!r} for view {axis}; "
                f"keys {sorted(batch)} (is RandViewSlabsd's `views` the trainer's?)"
            )
            sub = {Keys.IMAGE: batch[key_i], Keys.LABEL: batch[key_l]}
            args = (engine.state.device, engine.non_blocking)
            images[axis], labels[axis] = engine.prepare_batch(sub, *args, **engine.to_kwargs)[:2]
        return images, labels, images[engine.views[0]].shape[0]

    def _compute_losses(self, engine: MultiViewTrainer, images, label, n_labeled: int) -> None:
        """Forward each view's network on its slabs; the loss is the sum over views."""
        total, terms, first = 0.0, {}, None
        for axis, network in zip(engine.views, engine.networks):
            logits = network(images[axis])
            first = logits if first is None else first
            loss = engine.loss_function(logits, label[axis]).mean()
            terms[f"loss_v{axis}"] = loss.item()
            total = total + loss
        engine.state.output[Keys.PRED] = first
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = total
        engine.state.output.update(terms)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
