"""Per-case Dice / Jaccard / HD95 / ASD for a MONAI evaluator, written as JSON and CSV.

``CaseMetricsWriter`` is an ignite handler for any MONAI ``Evaluator`` whose decollated output
items hold a prediction and a label. It computes the project's shared metrics
(``sslseg.metrics.semantic``, medpy-style HD95) per case and, when the evaluation epoch ends,
writes ``<output_dir>/<stem>.json`` (``{"cases": [...], "mean": {...}}``, NaN as null) and
``<output_dir>/<stem>.csv`` (one row per case and a ``mean`` row) with
``sslseg.metrics.semantic.write_case_table``.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from sslseg.metrics.semantic import aggregate_cases, compute_case_metrics, write_case_table

logger = logging.getLogger(__name__)


def to_label_map(x: torch.Tensor) -> np.ndarray:
    """Turn one decollated item into an integer label map.

    Args:
        x: ``(C, *spatial)`` scores / one-hot with ``C > 1`` (argmaxed over C), or ``(1, *spatial)``
            class indices.

    Returns:
        ``(*spatial)`` int64 array.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(
            f"expected a (C, *spatial) tensor, got {type(x).__name__} "
            f"with shape {tuple(getattr(x, 'shape', ()))}"
        )
    x = x.detach()
    x = x.argmax(dim=0) if x.shape[0] > 1 else x[0]
    return x.cpu().numpy().astype(np.int64)


def case_name(item: Dict[str, Any], name_key: str, index: int) -> str:
    """File name (without folders) of ``item[name_key]``'s source, else ``case_<index>``."""
    meta = getattr(item.get(name_key), "meta", None) or item.get(f"{name_key}_meta_dict") or {}
    src = meta.get("filename_or_obj")
    return os.path.basename(str(src)) if src else f"case_{index:04d}"


class CaseMetricsWriter:
    """Ignite handler: per-case semantic metrics of an evaluator, saved when its epoch completes.

    Args:
        output_dir: where ``<stem>.json`` and ``<stem>.csv`` are written (created if needed).
        num_classes: number of classes including background.
        spacing: voxel spacing per spatial axis for HD95/ASD (``None``: voxel units).
        include_background: also score class 0.
        pred_key, label_key: keys of the decollated output items; each ``(C, *spatial)``.
        name_key: key whose ``meta["filename_or_obj"]`` names the case.
        stem: output file name without extension.

    With ``torch.distributed`` initialised, rows of all ranks are gathered and rank 0 writes.
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int,
        spacing: Optional[Sequence[float]] = None,
        include_background: bool = False,
        pred_key: str = "pred",
        label_key: str = "label",
        name_key: str = "image",
        stem: str = "metrics",
    ) -> None:
        self.output_dir = str(output_dir)
        self.num_classes = int(num_classes)
        self.spacing = spacing
        self.include_background = include_background
        self.pred_key, self.label_key, self.name_key = pred_key, label_key, name_key
        self.stem = stem
        self.rows: List[Dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Optional[Engine] = None) -> None:
        self.rows = []

    def update(self, engine: Engine) -> None:
        """Score every item of ``engine.state.output`` (a dict or a list of decollated dicts)."""
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        for item in items:
            for key in (self.pred_key, self.label_key):
                if key not in item:
                    raise KeyError(
                        f"CaseMetricsWriter: evaluator output has no {key!r} "
                        f"(keys: {sorted(item)}); is the evaluator's decollate on?"
                    )
            self.add_case(
                item[self.pred_key],
                item[self.label_key],
                case_name(item, self.name_key, len(self.rows)),
            )

    def add_case(self, pred: torch.Tensor, label: torch.Tensor, name: str) -> Dict[str, Any]:
        """Score one case: ``pred`` and ``label`` are ``(C, *spatial)`` (see ``to_label_map``)."""
        p, lab = to_label_map(pred), to_label_map(label)
        if p.shape != lab.shape:
            raise ValueError(f"case {name}: prediction shape {p.shape} != label shape {lab.shape}")
        row = {"case": name}
        row.update(
            compute_case_metrics(
                p,
                lab,
                self.num_classes,
                spacing=self.spacing,
                include_background=self.include_background,
            )
        )
        self.rows.append(row)
        return row

    def _all_rows(self) -> Optional[List[Dict[str, Any]]]:
        """Rows of every rank on rank 0 (``None`` on other ranks)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.rows
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.rows)
        return [r for rows in gathered for r in rows] if dist.get_rank() == 0 else None

    def write(self, engine: Optional[Engine] = None) -> Optional[Dict[str, Any]]:
        """Write ``<stem>.json`` and ``<stem>.csv``; returns the aggregate (``None`` off rank 0)."""
        rows = self._all_rows()
        if rows is None:
            return None
        if not rows:
            raise RuntimeError("CaseMetricsWriter: no case was scored; is the dataset empty?")
        json_path, csv_path = write_case_table(rows, self.output_dir, self.stem)
        summary = aggregate_cases(rows)
        logger.info(f"CaseMetricsWriter: {len(rows)} cases -> {json_path}, {csv_path}")
        logger.info(f"CaseMetricsWriter: mean {summary}")
        return summary
