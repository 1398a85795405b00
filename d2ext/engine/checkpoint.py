"""Checkpointer whose files are written atomically (temp file in the same folder + os.replace).

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``<name>.pth`` and then
rewrites ``last_checkpoint`` in place, so a run killed mid-save leaves a truncated file that
``--resume`` would try to load. Here both files appear only once complete; what a killed save
leaves is its ``.<name>.pth.<random>.tmp``, which :meth:`remove_stale_temp_files` deletes at the
start of the next run. A checkpoint that cannot be read (truncated or corrupt, e.g. copied
partially) raises :class:`CheckpointReadError` naming the file, and ``resume_or_load`` then falls
back to the newest intact periodic checkpoint with a warning naming both.
"""

import os
import pickle
import re
import zipfile
from typing import Any, Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer

from sslseg.errors import UnreadableInputError
from sslseg.io import atomic_open, remove_stale_temp_files

__all__ = ["AtomicDetectionCheckpointer", "CheckpointReadError", "periodic_checkpoints"]

# "model_0000123.pth": a periodic checkpoint of iteration 123 (fvcore's PeriodicCheckpointer)
_PERIODIC = re.compile(r"model_(\d{7})\.pth")
# files whose atomic_open temp files a killed save may leave (".model_0000123.pth.x1y2.tmp")
_SAVED_GLOBS = ("*.pth", "last_checkpoint")
# what torch.load raises for a truncated, empty or garbled file
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


class CheckpointReadError(UnreadableInputError, RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def periodic_checkpoints(folder: str) -> List[str]:
    """Paths of the periodic checkpoints ``model_<7 digits>.pth`` in ``folder``, oldest first."""
    names = (
        [n for n in os.listdir(folder) if _PERIODIC.fullmatch(n)] if os.path.isdir(folder) else []
    )
    return [os.path.join(folder, n) for n in sorted(names)]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and ``tag_last_checkpoint`` (local paths),
    a clear error for an unreadable file, and resume falling back past an unreadable newest
    checkpoint (see the module docstring)."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """``DetectionCheckpointer.load``, left ready for another ``load`` when it raises
        (detectron2 resets its per-load url state only on success)."""
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except _UNREADABLE as e:
            raise CheckpointReadError(
                f"checkpoint {filename} cannot be read (truncated or corrupt?): "
                f"{type(e).__name__}: {e}"
            ) from e

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As fvcore's: with ``resume`` and a ``last_checkpoint`` here, load the checkpoint it
        names with all checkpointables, else only the model from ``path``. When that newest
        checkpoint is missing or unreadable, load the newest readable periodic checkpoint
        ``model_<iter>.pth`` before it instead, with a warning naming both; when none is
        readable, raise :class:`CheckpointReadError` naming them."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        newest = self.get_checkpoint_file()
        older = [p for p in reversed(periodic_checkpoints(self.save_dir)) if p != newest]
        if _PERIODIC.fullmatch(os.path.basename(newest)):  # only those before the newest
            older = [p for p in older if os.path.basename(p) < os.path.basename(newest)]
        failed = []
        for candidate in [newest, *older]:
            if not os.path.isfile(candidate):
                failed.append(f"{candidate}: missing")
                continue
            try:
                data = self.load(candidate)
            except CheckpointReadError as e:
                failed.append(str(e))
                continue
            if candidate != newest:
                self.logger.warning(
                    f"Resuming from {candidate} instead of the newest checkpoint {newest}, which "
                    f"cannot be used ({'; '.join(failed)})"
                )
            return data
        raise CheckpointReadError(
            f"--resume: no readable checkpoint in {self.save_dir} (last_checkpoint names "
            f"{os.path.basename(newest)}): " + "; ".join(failed)
        )

    def remove_stale_temp_files(self) -> List[str]:
        """Delete the temp files that saves killed mid-write left in ``save_dir``
        (``.<name>.pth.<random>.tmp``, ``.last_checkpoint.<random>.tmp``), each with an INFO
        line; returns their paths. Call it at the start of a run, before any save."""
        if not self.save_dir:
            return []
        folder = self.path_manager.get_local_path(self.save_dir)
        return [str(p) for p in remove_stale_temp_files(folder, _SAVED_GLOBS, self.logger.info)]

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
