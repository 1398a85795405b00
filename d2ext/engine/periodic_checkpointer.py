"""``PeriodicCheckpointer`` hook that keeps only the last ``SOLVER.CHECKPOINTS_TO_KEEP`` periodic
checkpoints (258-389 MB each for a Mask R-CNN R-18), across ``--resume`` too.

detectron2's ``DefaultTrainer`` builds the hook without fvcore's ``max_to_keep``, so every
``model_<iter>.pth`` stays. fvcore's ``max_to_keep`` deletes the oldest of the checkpoints the
hook saved itself; here it also counts those of the interrupted run a resumed run continues (the
periodic checkpoints before its start iteration). ``model_final.pth`` is never deleted.
"""

import os

from detectron2.engine import hooks

from .checkpoint import periodic_checkpoints

__all__ = ["KeepLastPeriodicCheckpointer"]


class KeepLastPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's hook with ``max_to_keep`` (``None`` = keep all) counted across resumes."""

    def before_train(self):
        super().before_train()
        if self.max_to_keep is None:
            return
        start = self.trainer.start_iter
        self.recent_checkpoints = [
            p
            for p in periodic_checkpoints(self.checkpointer.save_dir)
            if int(os.path.basename(p)[len("model_") : -len(".pth")]) < start
        ]
