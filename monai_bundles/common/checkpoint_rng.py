"""``TransformRNGState``: the random states of a dataset's random transforms, checkpointable.

MONAI's ``DataLoader`` with ``num_workers=0`` seeds the random transforms once, when it is built,
and their ``RandomState``\\ s then run on across epochs. A resumed run rebuilds them from the same
seed, so its epoch ``e`` would augment like epoch 1. Put a ``TransformRNGState(dataset)`` in the
checkpoint dict (next to ``RNGState``, which covers the global RNGs, hence shuffling and worker
seeds) and a resumed run continues the transforms' streams where the checkpoint left them.
Entries are tensors, ints, floats and strings, as ``CheckpointLoader`` (``weights_only``) needs.
"""

from typing import List

from monai.transforms import Randomizable, Transform

from sslseg.errors import InputError
from sslseg.rng import _numpy_state_from_torch, _numpy_state_to_torch

__all__ = ["TransformRNGState"]


def random_transforms(root) -> List[Randomizable]:
    """Every ``Randomizable`` reachable from ``root`` through transform attributes and lists
    (``Compose`` members, dictionary transforms' inner array transforms), in a fixed order."""
    found: List[Randomizable] = []
    seen = set()

    def visit(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)
        elif isinstance(obj, (Transform, Randomizable)):
            if isinstance(obj, Randomizable):
                found.append(obj)
            for item in vars(obj).values():
                visit(item)

    visit(root)
    return found


class TransformRNGState:
    """``state_dict()`` snapshots the random transforms of ``dataset.transform``;
    ``load_state_dict()`` restores them (the same transform pipeline is required)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def _transforms(self) -> List[Randomizable]:
        return random_transforms(getattr(self.dataset, "transform", None))

    def state_dict(self) -> dict:
        return {
            "states": [_numpy_state_to_torch(t.R.get_state()) for t in self._transforms()],
            "names": [type(t).__name__ for t in self._transforms()],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        transforms = self._transforms()
        names = [type(t).__name__ for t in transforms]
        if list(state_dict["names"]) != names:
            raise InputError(
                f"checkpoint's random transforms {list(state_dict['names'])} differ from this "
                f"run's {names}: resume with the configuration the checkpoint was trained with"
            )
        for transform, state in zip(transforms, state_dict["states"]):
            transform.R.set_state(_numpy_state_from_torch(state))
