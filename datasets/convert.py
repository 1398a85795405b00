#!/usr/bin/env python
"""Convert public datasets to the project's formats (same as the ``sslseg-convert`` command).

See ``datasets/README.md`` or ``python datasets/convert.py --help``.
"""

import sys

from sslseg.datasets.cli import main

if __name__ == "__main__":
    sys.exit(main())
