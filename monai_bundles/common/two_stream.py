"""Two-stream (labeled + unlabeled) loading for semi-supervised MONAI trainers.

``EpochTwoStreamLoader`` zips a labeled and an unlabeled DataLoader into iteration-based epochs:
each step yields ``{"labeled": batch_l, "unlabeled": batch_u}`` and a stream that runs out is
simply re-iterated (like the reference codes' "6000 iterations" training). Each stream has its own
sampler. ``set_epoch(epoch)`` reseeds both samplers, the loaders' worker seeds and the datasets'
random transforms from ``(seed, epoch)``, so epoch ``e`` draws the same samples and augmentations
whether the run started at epoch 1 or resumed at epoch ``e`` (``TwoStreamEpochSeeder`` calls it
when an ignite epoch starts). ``labeled_prepare_batch`` lets a one-network MONAI trainer
(``SupervisedTrainer``) train on the labeled stream alone.
"""

from __future__ import annotations

from typing import Iterator

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.data.utils import set_rnd
from monai.engines.utils import default_prepare_batch
from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler

LABELED, UNLABELED = "labeled", "unlabeled"


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class EpochTwoStreamLoader:
    """Iterable of ``epoch_length`` steps ``{"labeled": batch_l, "unlabeled": batch_u}``.

    Not to be confused with Detectron2's ``d2ext.data.two_stream.ResumableTwoStreamLoader``, which
    yields ``(labeled, unlabeled)`` tuples of an endless stream and resumes mid-epoch by skipping
    the batches already drawn. This one fits ignite's epochs: dict batches, a fixed number of
    steps per epoch, and resume at an epoch boundary by reseeding from ``(seed, epoch)``.

    Args:
        labeled_loader: yields dicts with "image" (B_l, C, *spatial) and "label".
        unlabeled_loader: yields dicts with "image" (B_u, C, *spatial); None for a labeled-only
            stream (a supervised baseline: steps are ``{"labeled": batch_l}``, same labeled draws).
        epoch_length: steps per epoch (``len(self)``); the loaders are re-iterated as needed.
        seed: base seed of ``set_epoch``; the labeled stream uses ``seed + 2 * epoch`` and the
            unlabeled one ``seed + 2 * epoch + 1`` (plus a rank offset for the transforms).

    Every ``iter()`` starts both loaders afresh, lazily at the first step (so after an
    ``EPOCH_STARTED`` handler has called ``set_epoch``).
    """

    def __init__(self, labeled_loader, unlabeled_loader, epoch_length: int, seed: int = 0):
        assert int(epoch_length) > 0, f"epoch_length must be positive, got {epoch_length}"
        for name, loader in ((LABELED, labeled_loader), (UNLABELED, unlabeled_loader)):
            if loader is None and name == UNLABELED:
                continue
            try:
                size = len(loader)
            except TypeError:  # an iterable without length: trust it
                continue
            assert size > 0, (
                f"the {name} loader yields no batch (dataset smaller than the batch size with "
                f"drop_last?)"
            )
        self.labeled_loader = labeled_loader
        self.unlabeled_loader = unlabeled_loader
        self.epoch_length = int(epoch_length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.epoch_length

    @staticmethod
    def _endless(loader, steps: int) -> Iterator:
        """``steps`` batches of ``loader``, re-iterated as often as needed.

        With worker processes (``num_workers > 0``) and a map-style dataset, the next pass's
        iterator is started when the current pass hands out its last batch (and more steps
        follow): its workers fork, seed and load their first batches while that batch is being
        trained on, instead of the training loop waiting for them. Both passes draw from the
        loader's generator (worker base seed, then the sampler's permutation) when their
        iterator is created, so the draws and the batches are the same as without look-ahead.
        """
        ahead = getattr(loader, "num_workers", 0) > 0 and not isinstance(
            getattr(loader, "dataset", None), IterableDataset
        )
        size = len(loader) if ahead else None
        given, current = 0, iter(loader)
        while True:
            yielded, following = 0, None
            for batch in current:
                yielded += 1
                given += 1
                if ahead and yielded == size and given < steps:
                    following = iter(loader)  # the next pass's workers start now
                yield batch
            if not yielded:
                raise RuntimeError(f"loader {loader!r} yielded no batch")
            current = following if following is not None else iter(loader)

    def __iter__(self) -> Iterator[dict]:
        labeled = self._endless(self.labeled_loader, self.epoch_length)
        if self.unlabeled_loader is None:
            for _ in range(self.epoch_length):
                yield {LABELED: next(labeled)}
            return
        unlabeled = self._endless(self.unlabeled_loader, self.epoch_length)
        for _ in range(self.epoch_length):
            yield {LABELED: next(labeled), UNLABELED: next(unlabeled)}

    def set_epoch(self, epoch: int) -> None:
        """Reseed both streams' samplers, loader generators and random transforms for ``epoch``."""
        for offset, loader in enumerate((self.labeled_loader, self.unlabeled_loader)):
            if loader is None:
                continue
            stream_seed = self.seed + 2 * int(epoch) + offset
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)  # same seed on all ranks: disjoint shards
            elif getattr(sampler, "generator", None) is not None:
                sampler.generator.manual_seed(stream_seed)
            local_seed = stream_seed + 100_003 * _rank()  # augmentations differ across ranks
            if getattr(loader, "generator", None) is not None:
                loader.generator.manual_seed(local_seed)  # worker seeds (num_workers > 0)
            if getattr(loader, "dataset", None) is not None:
                set_rnd(loader.dataset, local_seed)  # transforms (num_workers == 0)


def _stream_loader(dataset, batch_size, num_workers, seed, distributed) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        generator=generator,
    )


def build_two_stream_loader(
    labeled_dataset,
    unlabeled_dataset,
    labeled_batch_size: int,
    unlabeled_batch_size: int,
    epoch_length: int,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
) -> EpochTwoStreamLoader:
    """Two MONAI DataLoaders (own sampler each, ``drop_last``) zipped in an
    ``EpochTwoStreamLoader``.

    The labeled stream is seeded with ``seed``, the unlabeled one with ``seed + 1``; samplers are
    ``RandomSampler`` with their own ``torch.Generator``, or ``DistributedSampler`` when
    ``distributed``. The loader is set to epoch 0, so it is reproducible before any ``set_epoch``.
    ``unlabeled_batch_size == 0`` builds the labeled stream only (seeded as above), so a supervised
    baseline draws the same labeled samples without loading unlabeled images it would discard.
    """
    for name, dataset, batch_size in (
        (LABELED, labeled_dataset, labeled_batch_size),
        (UNLABELED, unlabeled_dataset, unlabeled_batch_size),
    ):
        if name == UNLABELED and batch_size == 0:
            continue
        assert batch_size > 0, f"{name} batch size must be positive, got {batch_size}"
        assert (
            len(dataset) >= batch_size
        ), f"the {name} dataset has {len(dataset)} items, fewer than its batch size {batch_size}"
    loader = EpochTwoStreamLoader(
        _stream_loader(labeled_dataset, labeled_batch_size, num_workers, seed, distributed),
        (
            None
            if unlabeled_batch_size == 0
            else _stream_loader(
                unlabeled_dataset, unlabeled_batch_size, num_workers, seed + 1, distributed
            )
        ),
        epoch_length=epoch_length,
        seed=seed,
    )
    loader.set_epoch(0)
    return loader


def labeled_prepare_batch(batchdata: dict, *args, **kwargs):
    """``prepare_batch`` of a one-network trainer fed by an ``EpochTwoStreamLoader``.

    Passes the ``"labeled"`` part of a two-stream step to MONAI's ``default_prepare_batch`` (the
    other arguments unchanged: device, non_blocking, ...), so a supervised baseline
    (``SupervisedTrainer``) trains on exactly the labeled draws of the semi-supervised run.
    Returns ``(image, label)`` as ``default_prepare_batch``.
    """
    if LABELED not in batchdata:
        raise KeyError(f"a two-stream batch has the key {LABELED!r}; got keys {sorted(batchdata)}")
    return default_prepare_batch(batchdata[LABELED], *args, **kwargs)


class TwoStreamEpochSeeder:
    """Ignite handler: ``loader.set_epoch(engine.state.epoch)`` when each epoch starts."""

    def __init__(self, loader: EpochTwoStreamLoader):
        self.loader = loader

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loader.set_epoch(engine.state.epoch)
