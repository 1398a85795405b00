#!/usr/bin/env python
"""Write seeded synthetic data (``sslseg.datasets.synthetic``).

    python datasets/make_synthetic.py {cells,unlabeled_cells,patches,slices,volumes} --out DIR \
        [--num N --seed S --size PX --depth D --shape H W D --num-labeled K]
"""

import sys

from sslseg.datasets.cli import main

if __name__ == "__main__":
    sys.exit(main(["synthetic"] + sys.argv[1:]))
