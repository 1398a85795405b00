"""Datalist splits for the bundles (docs/data_formats.md: keys labeled/unlabeled/validation/test).

``datalist_split`` is what a bundle config calls to turn ``@datalist`` + a split name into the list
of ``{"image": abs_path, "label": abs_path}`` dicts a MONAI ``Dataset`` takes. It wraps
``monai.data.load_decathlon_datalist`` and fails early, naming the file, when the datalist, the
split or a referenced file is missing, instead of failing later inside a DataLoader worker.
"""
import json
import os
from typing import Dict, List, Sequence

from monai.data import load_decathlon_datalist

SPLITS = ("labeled", "unlabeled", "validation", "test")


def datalist_split(
    datalist: str,
    split: str,
    base_dir: str,
    keys: Sequence[str] = ("image", "label"),
    allow_empty: bool = False,
) -> List[Dict[str, str]]:
    """Load one split of a datalist json with paths resolved against ``base_dir``.

    Args:
        datalist: path of the datalist json.
        split: one of ``labeled``, ``unlabeled``, ``validation``, ``test``.
        base_dir: directory that relative paths in the datalist are relative to (``dataset_dir``).
        keys: keys every item must have, each pointing to an existing file (``("image",)`` for
            inference or unlabeled data).
        allow_empty: return ``[]`` for an empty split instead of raising.

    Returns:
        list of dicts, one per case, with absolute paths for ``keys``; other keys are kept.
    """
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist {datalist!r} does not exist")
    with open(datalist) as f:
        content = json.load(f)
    if split not in content:
        raise KeyError(f"datalist {datalist!r} has no split {split!r}; it has {sorted(content)}")
    if not content[split]:
        if allow_empty:
            return []
        raise ValueError(f"split {split!r} of datalist {datalist!r} is empty")
    items = load_decathlon_datalist(
        datalist, is_segmentation=True, data_list_key=split, base_dir=base_dir
    )
    for i, item in enumerate(items):
        for key in keys:
            if key not in item:
                raise KeyError(
                    f"item {i} of split {split!r} in {datalist!r} has no {key!r}: {item}"
                )
            if not os.path.isfile(item[key]):
                raise FileNotFoundError(
                    f"{key} file {item[key]!r} (item {i} of split {split!r} in {datalist!r}, "
                    f"base_dir {base_dir!r}) does not exist"
                )
    return items
