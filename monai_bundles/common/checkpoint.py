"""Crash-safe checkpoint saving for the bundles: ``SafeCheckpointSaver``.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver(atomic=False)``, and ignite's
``Checkpoint`` removes the file it replaces (``n_saved``, a fixed ``final_filename`` or
``key_metric_filename``) *before* writing the new one. A run killed while saving is then left
with a truncated file and nothing else (audit: a DMD 3D run SIGKILLed while writing
``checkpoint_epoch=3.pt`` left only that file, 0 bytes, and ``checkpoint_epoch=2.pt`` was gone).

``SafeCheckpointSaver`` is the same handler (same arguments, same files) with every save handler
swapped for ``SafeDiskSaver``: each file is written to a temporary file in the same folder and
renamed into place (``sslseg.io.atomic_open``), and the files ignite asks to remove are removed
only after the next save is in place. A kill at any moment leaves the previous checkpoint intact
(plus, at worst, a hidden ``.<name>.*.tmp``, which ``checkpoint_resume.check_ckpt_dir`` clears).

The best-model file (``key_metric_filename``, e.g. ``model.pt``) gets a sidecar
``<name>.score.json`` holding the score it was saved at; a resumed run reads it back, so its first
validation replaces ``model.pt`` only when it scores better than the interrupted run's best (the
score is not in the training checkpoint, whose keys the loader checks strictly).
"""

import json
import re
from pathlib import Path
from typing import List, Mapping, Optional

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from sslseg.io import atomic_open, write_json_atomic

__all__ = ["SafeDiskSaver", "SafeCheckpointSaver", "score_file"]


class SafeDiskSaver(BaseSaveHandler):
    """ignite save handler: atomic ``torch.save`` into ``dirname``, removals deferred.

    Args:
        dirname: the folder the checkpoints go to (created when missing).
        filename: a fixed file name used for every save (MONAI's ``final_filename`` /
            ``key_metric_filename``), or None for the name ignite's ``Checkpoint`` gives.
        save_on_rank: the process that writes (others do nothing), as ignite's ``DiskSaver``.
        record_score: also write ``<name>.score.json`` with the score (ignite's ``priority``)
            each file was saved at (the key-metric checkpoint's, read back on resume).
    """

    def __init__(
        self,
        dirname,
        filename: Optional[str] = None,
        save_on_rank: int = 0,
        record_score: bool = False,
    ):
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = save_on_rank
        self.record_score = record_score
        self._pending_removal: List[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Optional[Mapping] = None):
        name = self.filename or filename
        if idist.get_rank() == self.save_on_rank:
            with atomic_open(self.dirname / name, "wb") as f:
                torch.save(checkpoint, f)
            if self.record_score and metadata is not None:
                score = {"score_name": metadata.get("score_name"), "priority": metadata["priority"]}
                write_json_atomic(score, score_file(self.dirname / name))
            for old in self._pending_removal:
                if old != name:  # a fixed name was just replaced by the rename itself
                    (self.dirname / old).unlink(missing_ok=True)
        self._pending_removal = []

    def remove(self, filename: str) -> None:
        """Called by ignite just before the next save: remembered, done once that save is in."""
        self._pending_removal.append(self.filename or filename)


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments and files) writing through ``SafeDiskSaver``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (
            self._final_checkpoint,
            self._key_metric_checkpoint,
            self._interval_checkpoint,
        ):
            if checkpoint is not None:
                fixed_name = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = SafeDiskSaver(
                    self.save_dir,
                    filename=fixed_name,
                    record_score=checkpoint is self._key_metric_checkpoint,
                )

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._adopt_saved_checkpoints()
        self._adopt_best_score()

    def _adopt_best_score(self) -> None:
        """A resumed run's best-model file (and its score sidecar) in ``save_dir`` counts as
        this run's best so far: it is replaced only by a better score (ignite's comparison)."""
        checkpoint = self._key_metric_checkpoint
        if checkpoint is None or checkpoint.state_dict()["_saved"]:
            return
        if checkpoint.save_handler.filename is None:  # no fixed name: nothing to read back
            return
        best = Path(self.save_dir) / checkpoint.save_handler.filename
        sidecar = score_file(best)
        if best.is_file() and sidecar.is_file():
            priority = json.loads(sidecar.read_text())["priority"]
            checkpoint.load_state_dict({"_saved": [(priority, best.name)]})

    def _adopt_saved_checkpoints(self) -> None:
        """Count the interval checkpoints already in ``save_dir`` (a resumed run's) against
        ``n_saved``, so that they are replaced as this run saves instead of left behind."""
        checkpoint = self._interval_checkpoint
        if checkpoint is None or checkpoint.state_dict()["_saved"]:
            return
        name = "checkpoint" if len(self.save_dict) > 1 else next(iter(self.save_dict))
        prefix = f"{checkpoint.filename_prefix}_" if checkpoint.filename_prefix else ""
        pattern = re.compile(rf"{re.escape(prefix + name)}_{checkpoint.score_name}=(\d+)\.pt")
        matches = (pattern.fullmatch(n) for n in _names(self.save_dir))
        found = [(int(m.group(1)), m.group(0)) for m in matches if m]
        if found:
            checkpoint.load_state_dict({"_saved": sorted(found)})


def score_file(path: Path) -> Path:
    """The sidecar holding the score a best-model file was saved at."""
    return path.with_name(path.name + ".score.json")


def _names(folder) -> List[str]:
    return [p.name for p in Path(folder).iterdir()] if Path(folder).is_dir() else []
