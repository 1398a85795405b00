"""What several bundles share, written once; bundle configs name these by full path in `_target_`.

- ``readers.H5Reader``: MONAI ``ImageReader`` for the project's h5 files.
- ``datalist.datalist_split``: one split of a datalist json as a list of dicts with absolute paths.
- ``case_metrics.CaseMetricsWriter``: per-case Dice/Jaccard/HD95/ASD of an evaluator -> JSON + CSV.
- ``meta_schema.json``: local schema for ``monai.bundle verify_metadata --filepath`` (offline).

Modules are not imported here, so importing one does not pull in the others' dependencies.
"""
