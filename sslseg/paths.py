"""One data root for the whole project.

Resolution order: an explicit argument (a config key such as ``DATASETS.DATA_ROOT`` or a bundle's
``dataset_dir``), then the environment variable ``SSLSEG_DATA``, then ``../shared/data`` beside the
repository (the layout CI uses). Derived files (converted COCO json, datalists, synthetic data) go
under the work directory: ``SSLSEG_WORK`` or ``<repo>/work``.
"""

import os
from pathlib import Path
from typing import Optional

from .errors import MissingInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_DATA = "SSLSEG_DATA"
ENV_WORK = "SSLSEG_WORK"


def data_root(explicit: Optional[str] = None, must_exist: bool = False) -> Optional[Path]:
    """Return the data root, or None when none is configured and the default folder is absent.

    An explicit argument or ``SSLSEG_DATA`` that names a missing folder is an error (a typo must
    not silently turn real-data tests into skips); the default ``../shared/data`` may be absent.
    """
    for source, cand in (("argument", explicit), (ENV_DATA, os.environ.get(ENV_DATA))):
        if cand:
            p = Path(cand).expanduser().resolve()
            if not p.is_dir():
                raise MissingInputError(f"data root {p} (from {source}) is not a directory")
            return p
    default = REPO_ROOT.parent / "shared" / "data"
    if default.is_dir():
        return default.resolve()
    if must_exist:
        raise MissingInputError(f"no data root: set {ENV_DATA} or put the data at {default}")
    return None


def work_dir(sub: str = "") -> Path:
    """Directory for derived files (created on demand)."""
    base = Path(os.environ.get(ENV_WORK, REPO_ROOT / "work")).expanduser().resolve()
    p = base / sub if sub else base
    p.mkdir(parents=True, exist_ok=True)
    return p
