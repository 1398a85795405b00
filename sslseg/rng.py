"""``RNGState``: the process's random generators as a checkpointable object.

Shared by both frameworks: MONAI bundles put it in a ``CheckpointSaver``/``CheckpointLoader``
``save_dict``/``load_dict`` under the key ``"rng"``, Detectron2 trainers in a hook
(``d2ext.engine.RNGStateHook``), so a resumed run continues the python ``random``, numpy and
torch (CPU and, when present, CUDA) random streams where the checkpoint left them. All entries
are tensors, ints, floats and strings, so MONAI's ``CheckpointLoader``
(``torch.load(..., weights_only=True)``) accepts them.
"""

from __future__ import annotations

import random

import numpy as np
import torch


class RNGState:
    """``state_dict()`` snapshots the global RNGs; ``load_state_dict()`` restores them."""

    def state_dict(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_torch(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        missing = {"python", "numpy", "torch"} - set(state_dict)
        assert not missing, f"RNG state lacks {sorted(missing)}; has {sorted(state_dict)}"
        random.setstate(_as_python_state(state_dict["python"]))
        np.random.set_state(_numpy_state_from_torch(state_dict["numpy"]))
        torch.set_rng_state(torch.as_tensor(state_dict["torch"], dtype=torch.uint8).cpu())
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in states])


def _as_python_state(state) -> tuple:
    """``random.setstate`` needs tuples; a deserialised state may hold lists instead."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _numpy_state_to_torch(state: tuple) -> tuple:
    """numpy's ('MT19937', keys uint32 (624,), pos, has_gauss, cached) with keys as int64 tensor."""
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_torch(state: tuple) -> tuple:
    """Inverse of ``_numpy_state_to_torch``."""
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached
