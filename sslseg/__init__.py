"""What both frameworks share: used by ``d2ext`` (Detectron2) and ``monai_bundles`` (MONAI).

- :mod:`sslseg.metrics`: the one metrics module (instance: COCO mAP, AJI, LACSS AP, instance Dice;
  semantic: Dice, Jaccard, HD95, ASD), its definitions in ``docs/metrics.md``; ``sslseg-coco-eval``.
- :mod:`sslseg.datasets`: converters from the public dataset formats (ISBI 2014, LIVECell, LA,
  ACDC, ...) to ``docs/data_formats.md``, MONAI datalists, the seeded synthetic generator;
  ``sslseg-convert``.
- :mod:`sslseg.paths`: the data root (``SSLSEG_DATA``) and the work folder (``SSLSEG_WORK``).
- :mod:`sslseg.io`: atomic file writes (checkpoints, json, results).
- :mod:`sslseg.rng`: ``RNGState``, the process's random generators as a checkpointable object.
- :mod:`sslseg.determinism`: ``SSLSEG_DETERMINISTIC=1`` turns on deterministic algorithms
  (applied on import, so every entry point honours it).
- :mod:`sslseg.bench`: the benchmark result schema (commit, date), ``results/summary.md``.
- :mod:`sslseg.proc`: ``run_logged``, subprocess runs with a log file (demo, benchmarks).
"""

from .determinism import apply_env as _apply_env

_apply_env()
