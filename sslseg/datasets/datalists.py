"""Datalists (``load_decathlon_datalist`` format) for ACDC, LA and NIfTI image/label pairs.

All four split keys are present (``labeled``, ``unlabeled``, ``validation``, ``test``); paths are
relative to the dataset directory that was read (the bundles' ``dataset_dir``). ``acdc_datalist``
and ``la_datalist`` build a datalist in memory (the bundles' default ``datalist``: resolving a
config writes nothing); ``make_*_datalist`` write one to a json file.
Command line: ``sslseg-convert acdc|la|nifti ...``.
"""

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from sslseg.errors import InputError, MissingInputError

from .io_utils import PathLike, check_exists, read_list_file, write_datalist

logger = logging.getLogger(__name__)

LA_CASE_DIR = "2018LA_Seg_Training Set"
LA_FILE = "mri_norm2.h5"


def _patient_of(slice_name: str) -> str:
    """``patient099_frame01_slice_15`` -> ``patient099``."""
    return slice_name.split("_", 1)[0]


def make_acdc_datalist(
    src_dir: PathLike, out_json: PathLike, labeled_patients: Union[int, str] = 3
) -> str:
    """Write :func:`acdc_datalist` to ``out_json``; returns the path of the json."""
    return str(write_datalist(out_json, **acdc_datalist(src_dir, labeled_patients)))


def acdc_datalist(src_dir: PathLike, labeled_patients: Union[int, str] = 3) -> Dict[str, Any]:
    """ACDC (SSL4MIS layout) datalist: labeled / unlabeled slices, validation / test volumes.

    ``labeled`` = the slices of the first ``labeled_patients`` patients of
    ``train_slices.list`` (3 patients = its first 68 lines, 7 = 136, as in the published
    protocol; ``"all"`` = all 70 patients), ``unlabeled`` = the other slices
    (``data/slices/<name>.h5``); ``validation`` = ``val.list`` volumes (``data/<name>.h5``);
    ``test`` = the ``test.list`` volumes present (the 40 test volumes are not shipped with the
    repository's data: a warning gives the number missing). Every training/validation file must
    exist.

    Returns:
        the datalist (in memory, nothing is written): the four split keys and a description.
    """
    src_dir = Path(src_dir)
    slices = read_list_file(src_dir / "train_slices.list")
    patients = list(dict.fromkeys(_patient_of(s) for s in slices))  # order of first appearance
    if labeled_patients == "all":
        n = len(patients)
    elif isinstance(labeled_patients, int) and 1 <= labeled_patients <= len(patients):
        n = labeled_patients
    else:
        raise InputError(
            f"labeled_patients must be 'all' or an int in 1..{len(patients)} "
            f"(patients in {src_dir / 'train_slices.list'}), got {labeled_patients!r}"
        )
    chosen = set(patients[:n])
    rel = {s: f"data/slices/{s}.h5" for s in slices}
    check_exists([src_dir / p for p in rel.values()], "ACDC slice", src_dir / "train_slices.list")
    val = [f"data/{v}.h5" for v in read_list_file(src_dir / "val.list")]
    check_exists([src_dir / p for p in val], "ACDC validation", src_dir / "val.list")
    test_all = [f"data/{t}.h5" for t in read_list_file(src_dir / "test.list")]
    test = [p for p in test_all if (src_dir / p).is_file()]
    if len(test) < len(test_all):
        logger.warning(
            f"ACDC: {len(test_all) - len(test)} of {len(test_all)} test volumes of "
            f"{src_dir / 'test.list'} are missing; the test split lists {len(test)}"
        )
    labeled = [{"image": rel[s], "label": rel[s]} for s in slices if _patient_of(s) in chosen]
    unlabeled = [{"image": rel[s]} for s in slices if _patient_of(s) not in chosen]
    logger.info(f"ACDC: {n} labeled patients = {len(labeled)} slices, {len(unlabeled)} unlabeled")
    return dict(
        labeled=labeled,
        unlabeled=unlabeled,
        validation=[{"image": p, "label": p} for p in val],
        test=[{"image": p, "label": p} for p in test],
        description=f"ACDC, {n} labeled patients, from {src_dir}",
    )


def make_la_datalist(
    src_dir: PathLike, out_json: PathLike, labeled: int = 8, require_all: bool = False
) -> str:
    """Write :func:`la_datalist` to ``out_json``; returns the path of the json."""
    return str(write_datalist(out_json, **la_datalist(src_dir, labeled, require_all)))


def la_datalist(src_dir: PathLike, labeled: int = 8, require_all: bool = False) -> Dict[str, Any]:
    """Left Atrium (UA-MT layout) datalist from ``train.list`` / ``test.list``.

    ``labeled`` = the first ``labeled`` cases of ``train.list`` (must exist); ``unlabeled`` = the
    other train cases present on disk; ``test`` = the ``test.list`` cases present, and
    ``validation`` the same cases (the LA protocol evaluates on the test list). Files are
    ``2018LA_Seg_Training Set/<case>/mri_norm2.h5``. Absent cases are logged, or raise when
    ``require_all``.

    Returns:
        the datalist (in memory, nothing is written): the four split keys and a description.
    """
    src_dir = Path(src_dir)
    train = read_list_file(src_dir / "train.list")
    test_cases = read_list_file(src_dir / "test.list")
    if not 1 <= labeled <= len(train):
        raise InputError(
            f"labeled must be in 1..{len(train)} (cases in {src_dir / 'train.list'}), "
            f"got {labeled}"
        )

    def rel(case: str) -> str:
        return f"{LA_CASE_DIR}/{case}/{LA_FILE}"

    check_exists([src_dir / rel(c) for c in train[:labeled]], "LA labeled", src_dir / "train.list")
    splits = {}
    for name, cases, list_file in (
        ("unlabeled", train[labeled:], "train.list"),
        ("test", test_cases, "test.list"),
    ):
        present = [c for c in cases if (src_dir / rel(c)).is_file()]
        missing = len(cases) - len(present)
        if missing and require_all:
            check_exists([src_dir / rel(c) for c in cases], f"LA {name}", src_dir / list_file)
        if missing:
            logger.warning(
                f"LA: {missing} of {len(cases)} {name} cases of {src_dir / list_file} "
                f"are absent; using the {len(present)} present"
            )
        splits[name] = present
    test = [{"image": rel(c), "label": rel(c)} for c in splits["test"]]
    return dict(
        labeled=[{"image": rel(c), "label": rel(c)} for c in train[:labeled]],
        unlabeled=[{"image": rel(c)} for c in splits["unlabeled"]],
        validation=test,
        test=test,
        description=f"LA, {labeled} labeled cases, from {src_dir}",
    )


def _nifti_shape(path: Path) -> Tuple[int, ...]:
    import nibabel as nib

    if not path.is_file():
        raise MissingInputError(f"NIfTI file {path} does not exist")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"{path} is not a NIfTI file (.nii / .nii.gz)")
    try:
        return tuple(nib.load(str(path)).shape[:3])
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError...
        raise InputError(f"cannot read NIfTI header of {path}: {e}") from e


def make_nifti_datalist(
    pairs: Sequence[Tuple[PathLike, PathLike]],
    out_json: PathLike,
    base_dir: Optional[PathLike] = None,
    num_validation: int = 0,
    num_test: int = 0,
    unlabeled: Sequence[PathLike] = (),
) -> str:
    """Datalist of NIfTI (image, label) pairs, e.g. ``totalseg_ct`` CT + pancreas mask.

    The pairs are split in order: the last ``num_test`` go to ``test``, the ``num_validation``
    before them to ``validation``, the rest to ``labeled``; ``unlabeled`` lists image-only files.
    Each image and its label must have the same (first three) dimensions. Paths are written
    relative to ``base_dir`` (default: the common parent folder of all files).

    Returns:
        path of the datalist json.
    """
    pairs = [(Path(i).resolve(), Path(lab).resolve()) for i, lab in pairs]
    images_only = [Path(u).resolve() for u in unlabeled]
    if not pairs:
        raise InputError(f"{out_json}: no (image, label) pairs given")
    if num_validation < 0 or num_test < 0 or len(pairs) - num_validation - num_test < 1:
        raise InputError(
            f"{out_json}: {len(pairs)} pairs cannot give {num_validation} "
            f"validation + {num_test} test and keep a labeled one"
        )
    for img, lab in pairs:
        si, sl = _nifti_shape(img), _nifti_shape(lab)
        if si != sl:
            raise InputError(f"label {lab} has shape {sl} but image {img} has {si}")
    for img in images_only:
        _nifti_shape(img)
    all_files = [p for pair in pairs for p in pair] + images_only
    base = Path(base_dir).resolve() if base_dir else Path(os.path.commonpath(all_files))
    if base.is_file():
        base = base.parent

    def rel(p: Path) -> str:
        return os.path.relpath(p, base)

    items: List[dict] = [{"image": rel(i), "label": rel(lab)} for i, lab in pairs]
    n_lab = len(items) - num_validation - num_test
    return str(
        write_datalist(
            out_json,
            labeled=items[:n_lab],
            unlabeled=[{"image": rel(u)} for u in images_only],
            validation=items[n_lab : n_lab + num_validation],
            test=items[n_lab + num_validation :],
            description=f"NIfTI pairs relative to {base}",
            base_dir=str(base),
        )
    )
