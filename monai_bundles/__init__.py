"""MONAI bundles in model-zoo layout (one folder each) and ``common``, what several share."""

import sslseg as _sslseg  # noqa: F401  (applies SSLSEG_DETERMINISTIC, see sslseg.determinism)
