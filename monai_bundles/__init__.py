"""MONAI bundles in model-zoo layout (one folder each) and ``common``, what several share."""

import sslseg as _sslseg  # noqa: F401  (applies SSLSEG_DETERMINISTIC, see sslseg.determinism)
from sslseg.errors import install_excepthook as _install_excepthook

_install_excepthook()  # a bundle run ends with the InputError's message (sslseg.errors)
