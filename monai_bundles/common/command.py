"""The ``python -m monai.bundle run`` command line, built in one place (tests, demo, benchmarks)."""

import sys
from typing import Mapping, Optional, Sequence


def bundle_run_command(
    config_files: Sequence[str],
    overrides: Optional[Mapping[str, object]] = None,
    launcher: Sequence[str] = (sys.executable,),
) -> list:
    """``[*launcher, -m, monai.bundle, run, --config_file, F, --key, value, ...]``.

    Several config files are passed as MONAI's list syntax (later files override earlier ones).
    ``monai.bundle`` parses override values as Python literals (via ``fire``), so lists, tuples
    and dicts are written with ``repr`` and everything else with ``str`` (``True``, not ``true``).
    """
    files = [str(f) for f in config_files]
    assert files, "bundle_run_command: no config file"
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", cfg]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", repr(value) if isinstance(value, (list, tuple, dict)) else str(value)]
    return cmd
