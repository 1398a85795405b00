"""Two-stream (labeled + unlabeled) training loader for semi-supervised detection.

Each stream is an ordinary detectron2 train loader (``build_detection_train_loader``: its own
dataset, its own ``TrainingSampler`` and seed, aspect-ratio grouping and batching); the two are
zipped so every step yields ``(labeled_batch, unlabeled_batch)``.
"""

import logging
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from detectron2.config import configurable
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts

from .resumable import resumable_loader_kwargs

logger = logging.getLogger(__name__)


def split_batch_size(total: int, unlabeled_ratio: float) -> Tuple[int, int]:
    """Split ``total`` images per step into ``(labeled, unlabeled)`` with unlabeled/labeled ~ ratio.

    ``labeled = floor(total / (1 + ratio) + 0.5)``, ``unlabeled = total - labeled``: at 1:1 an odd
    total gives the extra image to the labeled stream (3 -> 2 + 1). Both must end up >= 1.
    """
    assert unlabeled_ratio > 0, f"DATALOADER.UNLABELED_RATIO must be > 0, got {unlabeled_ratio}"
    labeled = int(total / (1.0 + unlabeled_ratio) + 0.5)
    unlabeled = total - labeled
    assert labeled >= 1 and unlabeled >= 1, (
        f"SOLVER.IMS_PER_BATCH={total} with DATALOADER.UNLABELED_RATIO={unlabeled_ratio} gives "
        f"{labeled} labeled + {unlabeled} unlabeled images per step; both streams need >= 1"
    )
    return labeled, unlabeled


class ResumableTwoStreamLoader:
    """Iterable over ``(labeled: list[dict], unlabeled: list[dict] | None)``, one pair per step.

    Both loaders are infinite (TrainingSampler), so the pairs never run out. ``unlabeled_gate``,
    when set, is asked before every step; while it returns False the unlabeled stream is not
    drawn from (nothing loaded or augmented) and the pair holds ``None`` (e.g. MMT-PSM's
    labeled-only burn-in).

    Resumes by skipping: on ``--resume`` the trainer sets ``skip`` of ``samplers`` (the two
    :class:`~d2ext.data.ResumableTrainingSampler`) to the images each stream already drew, so the
    continued run sees the images the uninterrupted one would have seen. The MONAI side's
    ``monai_bundles.common.two_stream.EpochTwoStreamLoader`` differs on purpose: it yields dicts
    ``{"labeled": ..., "unlabeled": ...}`` in fixed-length epochs (ignite's unit) and resumes by
    reseeding both streams from ``(seed, epoch)`` when each epoch starts, not by skipping.
    """

    def __init__(
        self,
        labeled: Iterable[List[Dict]],
        unlabeled: Iterable[List[Dict]],
        unlabeled_gate: Optional[Callable[[], bool]] = None,
    ):
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.unlabeled_gate = unlabeled_gate

    def __iter__(self) -> Iterator[Tuple[List[Dict], Optional[List[Dict]]]]:
        labeled = iter(self.labeled)
        unlabeled = None
        for batch in labeled:
            if self.unlabeled_gate is not None and not self.unlabeled_gate():
                yield batch, None
                continue
            if unlabeled is None:
                unlabeled = iter(self.unlabeled)
            other = next(unlabeled, None)
            if other is None:  # a finite unlabeled stream ends the pairs, as zip would
                return
            yield batch, other


def _two_stream_loader_from_config(cfg, mapper=None, unlabeled_mapper=None):
    assert len(cfg.DATASETS.TRAIN_UNLABELED), (
        "build_two_stream_train_loader: cfg.DATASETS.TRAIN_UNLABELED is empty; name at least one "
        "unlabeled dataset (e.g. synthetic_cells_unlabeled)"
    )
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler", (
        f"build_two_stream_train_loader: DATALOADER.SAMPLER_TRAIN is "
        f"{cfg.DATALOADER.SAMPLER_TRAIN!r}; both streams use a (resumable) TrainingSampler"
    )
    labeled_bs, unlabeled_bs = split_batch_size(
        cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.UNLABELED_RATIO
    )
    labeled_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    unlabeled_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN_UNLABELED, filter_empty=False)
    # own samplers (continued on resume) and own generators for the DataLoaders' base seeds:
    # creating an iterator (e.g. the unlabeled one, first used after a burn-in) then does not
    # consume the global torch RNG
    labeled = resumable_loader_kwargs(cfg, mapper, labeled_dicts)
    unlabeled = resumable_loader_kwargs(
        cfg,
        unlabeled_mapper if unlabeled_mapper is not None else DatasetMapper(cfg, True),
        unlabeled_dicts,
        seed_offset=cfg.DATALOADER.UNLABELED_SEED_OFFSET,
    )
    logger.info(
        f"Two-stream loader: {labeled_bs} labeled ({len(labeled_dicts)} images) + "
        f"{unlabeled_bs} unlabeled ({len(unlabeled_dicts)} images) per step"
    )
    labeled["total_batch_size"] = labeled_bs
    unlabeled["total_batch_size"] = unlabeled_bs
    return {"labeled": labeled, "unlabeled": unlabeled}


@configurable(from_config=_two_stream_loader_from_config)
def build_two_stream_train_loader(*, labeled: Dict, unlabeled: Dict) -> ResumableTwoStreamLoader:
    """Build the labeled and unlabeled detectron2 train loaders and zip them.

    Called as ``build_two_stream_train_loader(cfg, mapper=None, unlabeled_mapper=None)``:
    datasets from ``DATASETS.TRAIN`` / ``DATASETS.TRAIN_UNLABELED``, per-step batch sizes from
    ``SOLVER.IMS_PER_BATCH`` split by ``DATALOADER.UNLABELED_RATIO`` (see :func:`split_batch_size`;
    each stream's batch must be divisible by the number of processes), samplers seeded from
    ``SEED`` and ``SEED + DATALOADER.UNLABELED_SEED_OFFSET``. The unlabeled mapper defaults to
    ``DatasetMapper(cfg, is_train=True)``, which maps dicts without ``annotations`` to images only.

    Args:
        labeled, unlabeled: keyword arguments of ``build_detection_train_loader`` per stream.

    Returns:
        ResumableTwoStreamLoader yielding ``(labeled, unlabeled)`` lists of mapped dicts (each with
        ``image``: uint8 tensor (C, H, W); labeled ones also ``instances``).
    """
    loader = ResumableTwoStreamLoader(
        build_detection_train_loader(**labeled), build_detection_train_loader(**unlabeled)
    )
    # the samplers, so a trainer can continue their sequences on resume (``skip``)
    loader.samplers = (labeled["sampler"], unlabeled["sampler"])
    return loader
