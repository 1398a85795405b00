"""Train loaders whose image sequence continues on ``--resume`` (exact resume).

Detectron2 restarts the ``TrainingSampler`` from its seed when training resumes, so a resumed
run sees the first images of the epoch again. ``ResumableTrainingSampler`` can start ``skip``
indices into its stream; the trainers set ``skip`` from the checkpoint's iteration before the
loader is first iterated. With ``DATALOADER.ASPECT_RATIO_GROUPING`` and images of both
orientations the grouping buffers images between batches, so the continued sequence is exact
only when all images fall in one aspect-ratio group (as in the cell datasets here) or the
grouping is off. Each loader also gets its own seeded generator for the DataLoader's base seed,
so creating an iterator does not consume the global torch RNG (which ``RNGStateHook``
checkpoints).
"""

import itertools
import logging
from typing import Optional

from detectron2.config import configurable
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "build_resumable_train_loader", "resumable_loader_kwargs"]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` that can start ``skip`` indices into its (per-process) stream.

    Detectron2 restarts the sampler from its seed on ``--resume``; setting ``skip`` to the number
    of images this process already drew, before the loader is first iterated, continues the same
    sequence instead.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)


def _stream_seed(seed: int, offset: int) -> Optional[int]:
    # cfg.SEED < 0: TrainingSampler draws its own shared random seed (each call a new one).
    return seed + offset if seed >= 0 else None


def resumable_loader_kwargs(cfg, mapper, dataset_dicts, seed_offset: int = 0) -> dict:
    """``build_detection_train_loader`` keyword arguments for ``dataset_dicts`` with a
    :class:`ResumableTrainingSampler` and DataLoader generator seeded ``cfg.SEED + seed_offset``
    (mapper ``None``: detectron2's ``DatasetMapper(cfg, True)``)."""
    seed = _stream_seed(cfg.SEED, seed_offset)
    kwargs = _train_loader_from_config(
        cfg,
        mapper,
        dataset=dataset_dicts,
        sampler=ResumableTrainingSampler(len(dataset_dicts), seed=seed),
    )
    kwargs["seed"] = seed
    return kwargs


def _resumable_loader_from_config(cfg, mapper=None):
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler", (
        f"build_resumable_train_loader: DATALOADER.SAMPLER_TRAIN is "
        f"{cfg.DATALOADER.SAMPLER_TRAIN!r}; only TrainingSampler can continue on resume"
    )
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    return {"loader": resumable_loader_kwargs(cfg, mapper, dicts)}


@configurable(from_config=_resumable_loader_from_config)
def build_resumable_train_loader(*, loader: dict):
    """Detectron2's train loader over ``DATASETS.TRAIN`` with a :class:`ResumableTrainingSampler`.

    Called as ``build_resumable_train_loader(cfg, mapper=None)``. The returned loader has
    ``samplers = (sampler,)`` so a trainer can set ``skip`` on resume.

    Returns:
        iterable of lists of mapped dicts (``image``: uint8 tensor (C, H, W), ``instances``).
    """
    data_loader = build_detection_train_loader(**loader)
    data_loader.samplers = (loader["sampler"],)
    return data_loader
