"""Metrics shared by the Detectron2 and MONAI sides (definitions: docs/metrics.md).

- :mod:`sslseg.metrics.semantic`: dice, jaccard, hd95, asd, compute_case_metrics,
  aggregate_cases, write_case_table (MONAI-based; imports torch and monai).
- :mod:`sslseg.metrics.instance`: aji, aji_matched, lacss_ap, instance_dice,
  pooled_instance_dice, loiap, coco_map (pycocotools-based).

Names are re-exported lazily so that importing one side does not import the other's libraries.
"""

import importlib

_EXPORTS = {
    "semantic": (
        "dice",
        "jaccard",
        "hd95",
        "asd",
        "surface_distances",
        "compute_case_metrics",
        "aggregate_cases",
        "write_case_table",
    ),
    "instance": (
        "to_rles",
        "aji",
        "aji_matched",
        "lacss_ap",
        "instance_dice",
        "pooled_instance_dice",
        "loiap",
        "coco_map",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
