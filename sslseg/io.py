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
from typing import IO, Any, Callable, Iterator, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


_TMP_SUFFIX = ".tmp"  # atomic_open's temp file for <name>: ".<name>.<random>.tmp"


def remove_stale_temp_files(
    folder: PathLike, name_globs: Sequence[str], log: Callable[[str], Any]
) -> List[Path]:
    """Delete the temp files of :func:`atomic_open` that a killed save left in ``folder`` for
    the files matching ``name_globs`` (e.g. ``"*.pth"``), calling ``log`` with a line naming
    each; returns their paths. Call it at the start of a run, before anything is saved."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted({p for g in name_globs for p in folder.glob(f".{g}.*{_TMP_SUFFIX}")})
    for path in stale:
        path.unlink(missing_ok=True)
        log(f"Removed {path}: the partial file of a save that was killed")
    return stale


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
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


def write_png_atomic(image_bgr: Any, path: PathLike) -> Path:
    """Encode ``image_bgr`` ((H, W) gray or (H, W, 3) BGR, OpenCV's order) as PNG and write it
    to ``path`` atomically; returns the path. Raises ``OSError`` naming ``path`` on failure."""
    import cv2  # only the PNG writers need it

    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise OSError(f"cannot encode PNG {path}")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())
    return Path(path)


def write_json_atomic(obj: Any, path: PathLike, indent: Optional[int] = None) -> Path:
    """Write ``obj`` as json to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)
