"""ATSO datalists: the reference set's ground truth as ``reference_label`` (read only for @R).

The project's LA and ACDC datalists list unlabeled items as ``{"image": ...}``; their h5 files
still hold a ``label`` dataset. ``with_reference_labels`` names it under ``reference_label``, a
key no training dataset reads, so the pseudo labels' Dice on R (the paper's @R) can be measured
while training sees only pseudo labels.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping

import h5py

from sslseg.datasets.datalists import acdc_datalist, la_datalist


def with_reference_labels(datalist: Mapping, dataset_dir: str, split: str = "unlabeled") -> Dict:
    """A copy of ``datalist`` whose ``split`` items carry ``reference_label`` = their image file
    where that h5 file holds a ``label`` dataset (items that already name one keep it)."""
    out: Dict[str, Any] = copy.deepcopy(dict(datalist))
    for item in out.get(split, []):
        if "reference_label" in item or "label" in item:
            continue
        path = os.path.join(dataset_dir, item["image"])
        if path.endswith((".h5", ".hdf5")) and os.path.isfile(path):
            with h5py.File(path, "r") as f:
                if "label" in f:
                    item["reference_label"] = item["image"]
    return out


def la_atso_datalist(dataset_dir: str, labeled: int = 2) -> Dict:
    """LA: the first ``labeled`` cases of train.list as S, the other staged training cases as
    R (with their ground truth for @R), the staged test cases as the test split."""
    return with_reference_labels(la_datalist(dataset_dir, labeled=labeled), dataset_dir)


def acdc_atso_datalist(dataset_dir: str, labeled_patients: int = 3) -> Dict:
    """ACDC: the slices of the first ``labeled_patients`` patients as S, the other patients'
    slices as R (folds split by patient), the 20 validation volumes as the test split (the 40
    test volumes are not staged)."""
    datalist = with_reference_labels(
        acdc_datalist(dataset_dir, labeled_patients=labeled_patients), dataset_dir
    )
    datalist["test"] = datalist["validation"]
    return datalist
