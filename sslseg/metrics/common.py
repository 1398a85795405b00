"""Small helpers shared by the metric modules."""

import math
import warnings
from typing import Sequence

import numpy as np


def nanmean(values: Sequence[float]) -> float:
    """Mean skipping NaN; NaN (without a warning) when empty or all NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def nan_to_none(obj):
    """Recursively replace float NaN by None (dicts, lists, tuples) so json is standard."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj
