"""The output folder of a ``tools/train_net.py`` run: what a new run, ``--resume`` and
``--eval-only`` may find there and where they write.

- A new training run (no ``--resume``) into an OUTPUT_DIR holding another run's checkpoints
  (``model_*.pth`` or ``last_checkpoint``) stops (:class:`OutputDirInUseError`), unless
  ``--overwrite`` (:func:`check_train_dir`), which then deletes that run's checkpoints, metrics,
  event files and ``inference/`` (:func:`clear_previous_run`).
- ``--resume`` into an OUTPUT_DIR without ``last_checkpoint`` stops (:class:`NothingToResumeError`).
- ``--eval-only`` loads ``MODEL.WEIGHTS``, or with ``--resume`` the checkpoint OUTPUT_DIR's
  ``last_checkpoint`` names; with neither it stops (:class:`NoWeightsError`). It writes its log,
  config, ``final_metrics.json`` and ``inference/`` into ``OUTPUT_DIR/eval/<weights file stem>/``
  (:func:`eval_output_dir`), beside the training run's own files, never over them.
"""

import glob
import logging
import os
import shutil
from typing import List, Tuple

from sslseg.errors import InputError, MissingInputError

__all__ = [
    "NoWeightsError",
    "NothingToResumeError",
    "OutputDirInUseError",
    "eval_output_dir",
    "eval_weights",
    "check_train_dir",
    "clear_previous_run",
    "previous_run_files",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
# a previous training run's outputs, relative to OUTPUT_DIR; the first two mark a run
_CHECKPOINT_GLOBS = ("model_*.pth", LAST_CHECKPOINT)
_RUN_OUTPUT_GLOBS = _CHECKPOINT_GLOBS + (
    "metrics.json",
    "final_metrics.json",
    "events.out.tfevents.*",
    "inference",
)
EVAL_SUBDIR = "eval"


class OutputDirInUseError(InputError, FileExistsError):
    """A new training run into a folder that holds another run's checkpoints."""


class NothingToResumeError(MissingInputError):
    """``--resume`` into a folder without a checkpoint."""


class NoWeightsError(InputError):
    """``--eval-only`` with neither ``MODEL.WEIGHTS`` nor a checkpoint to resume."""


def _matches(output_dir: str, patterns: Tuple[str, ...]) -> List[str]:
    found = {p for pattern in patterns for p in glob.glob(os.path.join(output_dir, pattern))}
    return sorted(found)


def previous_run_files(output_dir: str) -> List[str]:
    """The checkpoints of an earlier training run in ``output_dir`` (``model_*.pth``,
    ``last_checkpoint``); empty when there is none."""
    return _matches(output_dir, _CHECKPOINT_GLOBS)


def check_train_dir(output_dir: str, *, resume: bool, overwrite: bool = False) -> None:
    """Check ``output_dir`` for a training run (see the module docstring); reads only.

    Raises:
        ValueError: both ``resume`` and ``overwrite``.
        NothingToResumeError: ``resume`` and no ``last_checkpoint`` in ``output_dir``.
        OutputDirInUseError: not ``resume`` nor ``overwrite`` and an earlier run's checkpoints
            are there.
    """
    if resume and overwrite:
        raise ValueError(
            f"--resume continues the run in OUTPUT_DIR {output_dir} and --overwrite deletes it: "
            "pass one of them"
        )
    if resume:
        if not os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)):
            raise NothingToResumeError(
                f"--resume: OUTPUT_DIR {output_dir} holds no checkpoint to continue (no "
                f"{LAST_CHECKPOINT} file); set OUTPUT_DIR to the folder of the run to continue, "
                "or leave out --resume to start a new run"
            )
        return
    previous = previous_run_files(output_dir)
    if previous and not overwrite:
        shown = ", ".join(os.path.basename(p) for p in previous[:4])
        more = f" and {len(previous) - 4} more" if len(previous) > 4 else ""
        raise OutputDirInUseError(
            f"OUTPUT_DIR {output_dir} holds another run's checkpoints ({shown}{more}); to "
            "continue that run pass --resume, to discard it pass --overwrite (deletes its "
            "checkpoints, metrics and inference/), or set OUTPUT_DIR to another folder"
        )


def clear_previous_run(output_dir: str) -> List[str]:
    """Delete an earlier run's checkpoints, ``metrics.json``, ``final_metrics.json``, event
    files and ``inference/`` from ``output_dir`` (``--overwrite``), logging each; returns them.
    The user's other files (and ``eval/``, ``log.txt``) stay."""
    removed = _matches(output_dir, _RUN_OUTPUT_GLOBS)
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        logger.info(f"--overwrite: removed {path}")
    return removed


def eval_weights(output_dir: str, weights: str, *, resume: bool) -> str:
    """The checkpoint ``--eval-only`` evaluates: with ``resume`` the one ``output_dir``'s
    ``last_checkpoint`` names, if any, else ``weights`` (``MODEL.WEIGHTS``).

    Raises:
        NoWeightsError: neither gives a checkpoint (it would score a randomly initialised model).
    """
    last = os.path.join(output_dir, LAST_CHECKPOINT)
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(output_dir, f.read().strip())
    if weights:
        return weights
    where = (
        f"and OUTPUT_DIR {output_dir} has no {LAST_CHECKPOINT} for --resume"
        if resume
        else "(or pass --resume to evaluate the newest checkpoint in OUTPUT_DIR)"
    )
    raise NoWeightsError(
        f"--eval-only needs a model to evaluate: MODEL.WEIGHTS is empty; set it to a checkpoint, "
        f"e.g. MODEL.WEIGHTS {os.path.join(output_dir, 'model_final.pth')} {where}"
    )


def eval_output_dir(output_dir: str, weights: str) -> str:
    """``output_dir/eval/<stem of the weights file>``: where ``--eval-only`` writes."""
    stem = os.path.splitext(os.path.basename(weights.split("?")[0].rstrip("/")))[0]
    return os.path.join(output_dir, EVAL_SUBDIR, stem or "weights")
