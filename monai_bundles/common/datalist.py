"""Datalist splits for the bundles (docs/data_formats.md: keys labeled/unlabeled/validation/test).

``datalist_split`` is what a bundle config calls to turn ``@datalist`` + a split name into the list
of ``{"image": abs_path, "label": abs_path}`` dicts a MONAI ``Dataset`` takes. ``@datalist`` is a
json file (a user's own) or a dict in memory (the bundles' default, built by
``sslseg.datasets.datalists.la_datalist`` / ``acdc_datalist``: resolving a config writes no file).
It fails early, naming the datalist, when the split or a referenced file is missing, instead of
failing later inside a DataLoader worker. ``inference_items`` also takes a folder of h5 images.
"""

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from sslseg.errors import InputError, InputKeyError, MissingInputError

from .readers import read_array

logger = logging.getLogger(__name__)

SPLITS = ("labeled", "unlabeled", "validation", "test")
PATH_KEYS = ("image", "label")  # the keys resolved against base_dir, as load_decathlon_datalist


def _read(datalist: Union[str, Mapping]) -> tuple:
    """``(content, name for messages)`` of a datalist given as a json path or a dict."""
    if isinstance(datalist, Mapping):
        return datalist, f"<in-memory datalist: {datalist.get('description', 'no description')}>"
    if not os.path.isfile(datalist):
        raise MissingInputError(f"datalist {datalist!r} does not exist")
    with open(datalist) as f:
        try:
            content = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"datalist {datalist!r} is not valid json: {e}") from e
    if not isinstance(content, Mapping):
        raise InputError(
            f"datalist {datalist!r} holds a json {type(content).__name__}, not an object of "
            f"splits ({', '.join(SPLITS)})"
        )
    return content, repr(datalist)


def _resolve(path, base_dir: str):
    """``path`` (or a list of paths) joined to ``base_dir``, as ``load_decathlon_datalist``."""
    if isinstance(path, (list, tuple)):
        return [_resolve(p, base_dir) for p in path]
    return os.path.normpath(os.path.join(base_dir, path))


def datalist_split(
    datalist: Union[str, Mapping],
    split: str,
    base_dir: str,
    keys: Sequence[str] = ("image", "label"),
    allow_empty: bool = False,
    num_classes: Optional[int] = None,
    min_items: int = 1,
    accept_255: bool = False,
) -> List[Dict[str, str]]:
    """One split of a datalist with paths resolved against ``base_dir``.

    Args:
        datalist: path of the datalist json, or the datalist itself (a dict of splits).
        split: one of ``labeled``, ``unlabeled``, ``validation``, ``test``.
        base_dir: directory that relative paths in the datalist are relative to (``dataset_dir``).
        keys: keys every item must have, each pointing to an existing file (``("image",)`` for
            inference or unlabeled data).
        allow_empty: return ``[]`` for an empty split instead of raising.
        num_classes: when given, every item's ``label`` file is read (h5 dataset ``label`` or
            NIfTI) and checked now, before any training: values outside ``0..num_classes-1``
            (or not whole numbers) raise ``InputError`` naming the files and values; labels
            that are all background (0) are counted in one warning.
        min_items: fewest items the split must have, e.g. the number of processes of a
            distributed run (each needs one validation item).
        accept_255: with ``num_classes == 2``, also accept {0, 255} masks (binary PNG masks as
            many tools save them; ``readers.BinaryMaskd`` maps 255 to 1 when loading).

    Returns:
        list of dicts, one per case, with absolute paths for ``keys``; other keys are kept.
    """
    content, name = _read(datalist)
    if split not in content:
        raise InputKeyError(f"datalist {name} has no split {split!r}; it has {sorted(content)}")
    if not content[split]:
        if allow_empty:
            return []
        raise InputError(f"split {split!r} of datalist {name} is empty")
    if len(content[split]) < min_items:
        raise InputError(
            f"split {split!r} of datalist {name} has {len(content[split])} item(s), fewer than "
            f"the {min_items} needed (one per process of a distributed run): add items to the "
            f"split or run fewer processes"
        )
    items = [
        {k: _resolve(v, base_dir) if k in PATH_KEYS else v for k, v in item.items()}
        for item in content[split]
    ]
    for i, item in enumerate(items):
        for key in keys:
            if key not in item:
                raise InputKeyError(f"item {i} of split {split!r} in {name} has no {key!r}: {item}")
            if not os.path.isfile(item[key]):
                raise MissingInputError(
                    f"{key} file {item[key]!r} (item {i} of split {split!r} in {name}, "
                    f"base_dir {base_dir!r}) does not exist"
                )
    if num_classes is not None:
        check_labels(items, num_classes, f"split {split!r} of datalist {name}", accept_255)
    return items


def check_labels(
    items: Sequence[Mapping], num_classes: int, where: str, accept_255: bool = False
) -> None:
    """Check the ``label`` file of each item: class values in ``0..num_classes-1`` (with
    ``accept_255`` and two classes, {0, 255} as well: one file holds {0, 1} or {0, 255}).

    Raises ``InputError`` naming (up to 5 of) the files with other values and those values;
    logs one warning with the count of labels that are all background (0), which train nothing
    and score Dice 0 in validation.
    """
    bad, empty, n = [], 0, 0
    for item in items:
        if "label" not in item:
            continue
        n += 1
        arr = read_array(item["label"], "label")
        values = np.unique(arr)
        wrong = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
        if accept_255 and num_classes == 2 and set(values.tolist()) <= {0, 255}:
            wrong = values[:0]
        if wrong.size:
            shown = ", ".join(f"{v:g}" for v in wrong[:8]) + (" ..." if wrong.size > 8 else "")
            bad.append(f"{item['label']} holds {shown}")
        elif values.max(initial=0) == 0:
            empty += 1
    if bad:
        more = f" (and {len(bad) - 5} more files)" if len(bad) > 5 else ""
        raise InputError(
            f"{where}: {len(bad)} label file(s) hold values outside the {num_classes} classes "
            f"0..{num_classes - 1} (num_classes"
            + (", or {0, 255} masks" if accept_255 and num_classes == 2 else "")
            + "): "
            + "; ".join(bad[:5])
            + more
        )
    if empty:
        logger.warning(
            f"{where}: {empty} of {n} label files are all background (0); they train no "
            f"foreground and score Dice 0 in validation"
        )


def inference_items(
    datalist: Union[str, Mapping], split: str, base_dir: str, pattern: str = "*.h5"
) -> List[Dict[str, str]]:
    """The images an inference config predicts, as ``[{"image": abs_path}, ...]``.

    ``datalist`` is a folder (every file matching ``pattern`` under it, recursively, sorted;
    ``split`` and ``base_dir`` are then unused), or a datalist json / dict (its ``split``, paths
    relative to ``base_dir``, as :func:`datalist_split` with ``keys=("image",)``).
    """
    if isinstance(datalist, (str, Path)) and os.path.isdir(datalist):
        files = sorted(str(p.resolve()) for p in Path(datalist).rglob(pattern) if p.is_file())
        if not files:
            raise MissingInputError(f"no {pattern} file under the image folder {datalist!r}")
        return [{"image": f} for f in files]
    items = datalist_split(datalist, split, base_dir, keys=("image",))
    return [{"image": item["image"]} for item in items]
