#!/usr/bin/env python
"""Former name of ``tools/visualize.py`` (kept for existing commands): the same tool, the same
arguments. It visualises any shipped model; for MMT-PSM also the teacher, the student and the
teacher's pseudo-labels. See ``tools/visualize.py --help``."""

import os
import runpy

_TOOL = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "visualize.py"))
build_parser, main = _TOOL["build_parser"], _TOOL["main"]

if __name__ == "__main__":
    main()
