"""Detectron2 evaluators over the shared metrics in :mod:`sslseg.metrics`."""

from .cell_evaluation import CellInstanceEvaluator, build_cell_evaluators

__all__ = ["CellInstanceEvaluator", "build_cell_evaluators"]
