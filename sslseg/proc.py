"""``run_logged``: run a command with its output in a log file, failing loudly (demo, bench)."""

import os
import subprocess
import time
from pathlib import Path
from typing import Sequence


class CommandFailed(RuntimeError):
    """A command run by :func:`run_logged` exited non-zero; the message ends with its log's tail."""


def run_logged(
    cmd: Sequence, log: Path, cwd: Path, tag: str = "run", tail_lines: int = 40
) -> float:
    """Run ``cmd`` (items converted to str) in ``cwd`` with stdout+stderr to ``log``.

    The environment is the caller's plus ``HF_HUB_OFFLINE=1`` and ``PYTHONUNBUFFERED=1``.
    Returns the wall time in seconds; raises :class:`CommandFailed` (exit code, the last
    ``tail_lines`` lines of ``log``) on failure.
    """
    cmd = [str(c) for c in cmd]
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{tag}] $ {' '.join(cmd)}\n[{tag}]   (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(
            cmd,
            cwd=cwd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        )
    dt = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(open(log).readlines()[-tail_lines:])
        raise CommandFailed(
            f"[{tag}] command failed (exit {rc}) after {dt:.0f} s; end of {log}:" f"\n{tail}"
        )
    return dt
