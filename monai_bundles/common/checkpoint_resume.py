"""Which checkpoint a bundle training run resumes from, and whether it may write its ``ckpt_dir``.

The training configs call, before anything is built::

    "resume_checkpoint": "$select_resume_checkpoint(@ckpt_dir, @resume, @resume_from)",
    "run": ["$check_ckpt_dir(@ckpt_dir, resuming=bool(@resume_checkpoint), overwrite=@overwrite)",
            ...]

- ``--resume_from FILE``: that file; missing or unreadable is an error naming it.
- ``--resume true``: ``find_resume_checkpoint(ckpt_dir)``, the newest intact training checkpoint
  (ordered by the trainer iteration stored in it, never by mtime); unreadable ones are skipped
  with a warning naming them and the one used; nothing to resume is an error naming ``ckpt_dir``.
- otherwise a new run, and ``check_ckpt_dir`` stops it when ``ckpt_dir`` holds another run's
  files (``checkpoint*.pt``, ``model.pt``) unless ``--overwrite true`` (they are then removed).
"""

import logging
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch

from sslseg.errors import InputError, MissingInputError, UnreadableInputError
from sslseg.io import remove_stale_temp_files

__all__ = [
    "RUN_FILE_PATTERNS",
    "as_flag",
    "load_checkpoint",
    "find_resume_checkpoint",
    "select_resume_checkpoint",
    "check_ckpt_dir",
]

logger = logging.getLogger(__name__)

# what a bundle training run writes into ckpt_dir (epoch/iteration/final checkpoints, best model)
RUN_FILE_PATTERNS = ("checkpoint*.pt", "model.pt", "model.pt.score.json")

OPTIONS = (
    "pass --resume true to continue that run, --overwrite true to replace it, or another "
    "--ckpt_dir (or --output_root) for a new run"
)


def as_flag(value: Union[bool, int, str], key: str) -> bool:
    """A bundle flag given as a bool or as text from the command line ('true', 'False', '0')."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise InputError(f"--{key} {value!r}: expected true or false")


def load_checkpoint(path: Union[str, Path]) -> dict:
    """``torch.load`` as MONAI's ``CheckpointLoader`` does; an unreadable file names itself."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError, RuntimeError (zip), UnpicklingError, ...
        size, why = Path(path).stat().st_size, type(e).__name__ + (
            f": {str(e)[:200]}" if str(e) else ""
        )
        raise UnreadableInputError(
            f"checkpoint {path} ({size} bytes) cannot be loaded, it is truncated or corrupt ({why})"
        ) from e


def _order(path: Path, state: dict) -> Tuple[int, float]:
    """(trainer iteration stored in the checkpoint, the number in its name; final = last)."""
    numbers = re.findall(r"=(\d+)", path.name)
    return int(state["trainer"]["iteration"]), float(numbers[-1]) if numbers else float("inf")


def find_resume_checkpoint(ckpt_dir: Union[str, Path]) -> Optional[Path]:
    """The newest intact training checkpoint (``checkpoint*.pt`` holding a trainer state) in
    ``ckpt_dir``, ordered by the trainer iteration it holds; None when there is none at all.

    Unreadable candidates are skipped with a warning naming each and the checkpoint used; when
    every candidate is unreadable the error names them all.
    """
    intact: List[Tuple[Tuple[int, float], Path]] = []
    unreadable: List[str] = []
    for path in sorted(Path(ckpt_dir).glob("checkpoint*.pt")):
        try:
            state = load_checkpoint(path)
        except UnreadableInputError as e:
            unreadable.append(str(e))
            continue
        if not isinstance(state, dict) or "iteration" not in state.get("trainer", {}):
            logger.warning(f"{path} holds no trainer state: not a training checkpoint, skipped")
            continue
        intact.append((_order(path, state), path))
    if not intact:
        if unreadable:
            raise UnreadableInputError(
                f"no intact checkpoint to resume from in ckpt_dir {ckpt_dir}: "
                + "; ".join(unreadable)
            )
        return None
    newest = max(intact)[1]
    for message in unreadable:
        logger.warning(f"{message}: skipped, resuming from {newest} instead")
    return newest


def select_resume_checkpoint(
    ckpt_dir: Union[str, Path], resume: Union[bool, str] = False, resume_from: str = ""
) -> str:
    """The checkpoint the run resumes from ('' for a new run), checked loadable.

    Args:
        ckpt_dir: the run's checkpoint folder, searched when ``resume`` is true.
        resume: resume from ``find_resume_checkpoint(ckpt_dir)``; an error when there is none.
        resume_from: an explicit checkpoint file; wins over ``resume``.
    """
    if resume_from:
        path = Path(resume_from)
        if not path.is_file():
            raise MissingInputError(f"--resume_from {resume_from}: no such checkpoint file")
        load_checkpoint(path)
        logger.info(f"resuming from {path}")
        return str(path)
    if as_flag(resume, "resume"):
        found = find_resume_checkpoint(ckpt_dir)
        if found is None:
            raise MissingInputError(
                f"--resume true: ckpt_dir {ckpt_dir} holds no checkpoint to resume from "
                f"(checkpoint*.pt); start a new run without --resume, or pass --resume_from FILE"
            )
        logger.info(f"resuming from {found} (the newest intact checkpoint in {ckpt_dir})")
        return str(found)
    return ""


def _matching(folder: Path, patterns) -> List[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def check_ckpt_dir(
    ckpt_dir: Union[str, Path], resuming: bool = False, overwrite: Union[bool, str] = False
) -> None:
    """Stop a new run from replacing another run's files in ``ckpt_dir``.

    A new run (``resuming`` false) into a folder holding ``RUN_FILE_PATTERNS`` files is an error
    naming the folder, the files and the options; ``overwrite`` true removes those files first.
    Temporary files of an interrupted save are removed in every case that goes on.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return
    existing = _matching(folder, RUN_FILE_PATTERNS)
    if existing and not resuming:
        names = ", ".join(p.name for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        if not as_flag(overwrite, "overwrite"):
            raise InputError(
                f"ckpt_dir {folder} holds another run's checkpoints ({names}); a new run would "
                f"replace them: {OPTIONS}"
            )
        logger.warning(f"--overwrite true: removing the previous run's {names} from {folder}")
        for path in existing:
            path.unlink(missing_ok=True)
    remove_stale_temp_files(folder, RUN_FILE_PATTERNS, logger.warning)
