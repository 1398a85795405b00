"""``RNGStateHook``: the global random generators in detectron2 checkpoints (exact resume).

Detectron2 saves the ``state_dict()`` of every hook with the trainer in each checkpoint and gives
it back to the hook on ``--resume``. Saving the python/numpy/torch RNG states there means a
resumed run draws the same augmentations (in the main process, ``DATALOADER.NUM_WORKERS 0``) and
the same RoI samples as the run that was interrupted.
"""

from detectron2.engine import HookBase

from sslseg.rng import RNGState

__all__ = ["RNGStateHook"]


class RNGStateHook(HookBase):
    """Checkpointable global RNG state; does nothing during training."""

    def __init__(self):
        self._rng = RNGState()

    def state_dict(self) -> dict:
        return self._rng.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng.load_state_dict(state_dict)
