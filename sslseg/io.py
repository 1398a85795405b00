"""Atomic file writing, used for everything the project writes that a later step reads back
(checkpoints, converted json, datalists, metrics, benchmark results).

A file appears under its final name only once complete (temp file in the same folder, flushed and
fsynced, then ``os.replace``), so an interrupted run never leaves a truncated file behind.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open`` for writing whose result replaces ``path`` only when the block succeeds."""
    assert "w" in mode, f"atomic_open is for writing, got mode {mode!r}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj: Any, path: PathLike, indent: Optional[int] = None) -> Path:
    """Write ``obj`` as json to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)
