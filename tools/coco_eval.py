#!/usr/bin/env python
"""COCO mAP and cell metrics (AJI, matched AJI, object Dice, LACSS AP) of a COCO results file.

    python tools/coco_eval.py --gt gt.json --pred predictions.json [--max-dets 1000] [--out m.json]

Thin wrapper of ``sslseg.metrics.cli`` (also installed as ``sslseg-coco-eval``).
"""

import sys

from sslseg.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
