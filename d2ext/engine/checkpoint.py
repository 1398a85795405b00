"""Checkpointer whose files are written atomically (temp file in the same folder + os.replace).

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``<name>.pth`` and then
rewrites ``last_checkpoint`` in place, so a run killed mid-save leaves a truncated file that
``--resume`` would try to load. Here both files appear only once complete.
"""

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from sslseg.io import atomic_open


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and ``tag_last_checkpoint`` (local paths)."""

    def save(self, name: str, **kwargs: Any) -> None:
        """Same as ``Checkpointer.save``: model + checkpointables + ``kwargs`` to ``<name>.pth``."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.path_manager.get_local_path(self.save_dir), basename)
        assert os.path.basename(save_file) == basename, f"bad checkpoint name {name!r}"
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.path_manager.get_local_path(self.save_dir), "last_checkpoint")
        with atomic_open(save_file, "w") as f:
            f.write(last_filename_basename)
