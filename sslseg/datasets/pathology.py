"""Datalists for 2D pathology segmentation (CDMA bundle): GlaS and DigestPath 2019.

Both give RGB uint8 PNG images with a uint8 {0, 1} PNG mask of the same size ("PNG patch sets" in
``docs/data_formats.md``), split into ``labeled`` / ``unlabeled`` / ``validation`` / ``test``.

- ``glas_datalist``: the staged GlaS folder (``train/<name>.png`` + ``<name>_mask.png``,
  ``testB/...``, ``grade.csv``); ``labeled`` training images drawn by a seeded permutation
  stratified by benign/malignant, the other training images unlabeled, ``testB`` as validation
  and test (whole images, scored by sliding window).
- ``convert_digestpath``: a user's DigestPath 2019 tissue images + the reference code's split
  lists (``train_5.csv`` ...) -> 256 px tiles (non-overlapping, the last window shifted to fit,
  near-white tiles dropped), as the reference ``utils/slide_window.py``; the test images whole.
Command line: ``sslseg-convert glas|digestpath ...``.
"""

import csv
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from sslseg.errors import InputError, MissingInputError

from .io_utils import PathLike, read_image, write_datalist, write_png

logger = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"


def _glas_images(folder: Path) -> List[str]:
    if not folder.is_dir():
        raise MissingInputError(f"GlaS folder {folder} does not exist")
    names = sorted(
        p.stem for p in folder.glob("*.png") if not p.stem.endswith(MASK_SUFFIX)
    )  # sorted by name: train_1, train_10, ... (a fixed order; the permutation does the rest)
    if not names:
        raise MissingInputError(f"GlaS folder {folder} holds no <name>.png image")
    missing = [n for n in names if not (folder / f"{n}{MASK_SUFFIX}.png").is_file()]
    if missing:
        raise MissingInputError(
            f"GlaS folder {folder}: {len(missing)} image(s) without a mask "
            f"<name>{MASK_SUFFIX}.png, e.g. {missing[0]}.png"
        )
    return names


def _glas_grades(csv_path: Path) -> Dict[str, str]:
    if not csv_path.is_file():
        raise MissingInputError(f"GlaS grade file {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # tolerate a byte-order mark
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if len(header) < 3 or header[0] != "name":
        raise InputError(
            f"{csv_path}: expected the GlaS Grade.csv header 'name,patient ID, grade (GlaS),...', "
            f"got {rows[0] if rows else 'an empty file'}"
        )
    return {r[0].strip(): r[2].strip().lower() for r in rows[1:] if len(r) >= 3}


def stratified_choice(names: Sequence[str], groups: Dict[str, str], n: int, seed: int) -> List[str]:
    """``n`` of ``names`` by a seeded permutation per group, group sizes proportional to the
    groups' shares (largest remainder). Returns the chosen names in ``names`` order."""
    by_group: Dict[str, List[str]] = {}
    for name in names:
        by_group.setdefault(groups[name], []).append(name)
    keys = sorted(by_group)
    exact = {k: n * len(by_group[k]) / len(names) for k in keys}
    take = {k: int(np.floor(exact[k])) for k in keys}
    for k in sorted(keys, key=lambda k: (take[k] - exact[k], k))[: n - sum(take.values())]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    chosen = set()
    for k in keys:
        perm = rng.permutation(len(by_group[k]))
        chosen.update(by_group[k][i] for i in perm[: take[k]])
    return [name for name in names if name in chosen]


def glas_datalist(
    src_dir: PathLike, labeled: Union[int, str] = 8, seed: int = 0, test_split: str = "testB"
) -> Dict[str, Any]:
    """GlaS datalist: ``labeled`` of the 85 training images (stratified by benign/malignant from
    ``grade.csv``, seeded), the other training images ``unlabeled``; ``validation`` and ``test``
    = every image of ``test_split`` (``testB``; ``testA`` for users who have it).

    ``labeled="all"`` labels every training image (the fully supervised upper bound; then
    ``unlabeled`` is empty). Returns the datalist in memory (nothing is written); paths are
    relative to ``src_dir``.
    """
    src_dir = Path(src_dir)
    train = _glas_images(src_dir / "train")
    grades = _glas_grades(src_dir / "grade.csv")
    no_grade = [n for n in train if n not in grades]
    if no_grade:
        raise InputError(
            f"{src_dir / 'grade.csv'} has no row for {len(no_grade)} training image(s), "
            f"e.g. {no_grade[0]}"
        )
    n = len(train) if labeled == "all" else labeled
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(train):
        raise InputError(
            f"labeled must be 'all' or an int in 1..{len(train)} (images in "
            f"{src_dir / 'train'}), got {labeled!r}"
        )
    chosen = stratified_choice(train, grades, n, seed)
    test = _glas_images(src_dir / test_split)

    def pair(split: str, name: str) -> Dict[str, str]:
        return {"image": f"{split}/{name}.png", "label": f"{split}/{name}{MASK_SUFFIX}.png"}

    test_items = [pair(test_split, t) for t in test]
    logger.info(f"GlaS: {n} labeled, {len(train) - n} unlabeled, {len(test)} {test_split} images")
    return dict(
        labeled=[pair("train", c) for c in chosen],
        unlabeled=[{"image": f"train/{t}.png"} for t in train if t not in set(chosen)],
        validation=test_items,
        test=test_items,
        description=f"GlaS, {n} labeled (seed {seed}, stratified by grade), from {src_dir}",
    )


def make_glas_datalist(
    src_dir: PathLike, out_json: PathLike, labeled: Union[int, str] = 8, seed: int = 0
) -> str:
    """Write :func:`glas_datalist` to ``out_json``; returns the path of the json."""
    return str(write_datalist(out_json, **glas_datalist(src_dir, labeled, seed)))


# ----------------------------------------------------------------------------- DigestPath
def window_starts(size: int, window: int, overlap: float = 0.0) -> List[int]:
    """Starts of the windows of ``window`` along an axis of ``size``, as MONAI's
    ``dense_patch_slices``: interval ``int(window * (1 - overlap))``, the last window shifted back
    to end at ``size``; ``[0]`` when ``size <= window``. ``overlap=0`` is the reference's tiling
    (``slide_window.py``); ``overlap=0.25`` its sliding-window test (stride 192 for 256)."""
    if size <= window:
        return [0]
    interval = max(1, int(window * (1 - overlap)))
    steps = math.ceil((size - window) / interval) + 1
    return sorted({min(i * interval, size - window) for i in range(steps)})


def tile_starts(length: int, tile: int) -> List[int]:
    """Non-overlapping tiles: :func:`window_starts` with no overlap."""
    return window_starts(length, tile, 0.0)


def is_blank_tile(tile: np.ndarray, low: float = 200.0) -> bool:
    """Reference background filter: every channel's mean in [``low``, 255] (near white)."""
    means = tile.reshape(-1, tile.shape[-1]).mean(axis=0)
    return bool((means >= low).all())


def _read_rgb(path: Path) -> np.ndarray:
    img = read_image(path)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image {path} has shape {img.shape}; expected an RGB (H, W, 3) image")
    return img


def _read_mask01(path: Path, shape) -> np.ndarray:
    mask = read_image(path)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise InputError(f"mask {path} has size {mask.shape}, its image {tuple(shape)}")
    return (mask > (128 if mask.max() > 1 else 0)).astype(np.uint8)


def convert_digestpath(
    src_dir: PathLike,
    lists_dir: PathLike,
    out_dir: PathLike,
    labeled_list: str = "train_5.csv",
    tile: int = 256,
    blank_low: float = 200.0,
) -> str:
    """DigestPath 2019 -> PNG tiles + datalist, as the reference code prepares it.

    Args:
        src_dir: folder with the tissue images ``<name>.jpg`` and masks ``<name>_mask.jpg``
            (``tissue-train-pos-v1``; masks 0/255, thresholded at 128).
        lists_dir: folder with the reference split lists (``train_5.csv``, ``train_10.csv``,
            ``train_100.csv``, ``valid.csv``, ``test.csv``: a header line, then file names).
        out_dir: where ``tiles/``, ``images/`` and ``datalist.json`` are written.
        labeled_list: which list's images are labeled (their tiles with masks); the other images
            of ``train_100.csv`` give unlabeled tiles.
        tile: tile size; ``blank_low``: the near-white filter's threshold (tiles dropped).

    Validation and test images are written whole (sliding-window evaluation). Returns the path
    of ``<out_dir>/datalist.json``.
    """
    src_dir, lists_dir, out_dir = Path(src_dir), Path(lists_dir), Path(out_dir)

    def names(csv_name: str) -> List[str]:
        path = lists_dir / csv_name
        if not path.is_file():
            raise MissingInputError(f"DigestPath split list {path} does not exist")
        lines = [ln.strip() for ln in path.read_text().splitlines()[1:] if ln.strip()]
        return [Path(ln).stem for ln in lines]

    def source(name: str, mask: bool) -> Path:
        stem = f"{name}{MASK_SUFFIX}" if mask else name
        for ext in (".jpg", ".png", ".jpeg"):
            if (src_dir / f"{stem}{ext}").is_file():
                return src_dir / f"{stem}{ext}"
        raise MissingInputError(
            f"DigestPath {'mask' if mask else 'image'} {stem}.jpg not in {src_dir}"
        )

    labeled_names = set(names(labeled_list))
    splits: Dict[str, List[dict]] = {"labeled": [], "unlabeled": []}
    for name in names("train_100.csv"):
        img = _read_rgb(source(name, False))
        mask = _read_mask01(source(name, True), img.shape[:2]) if name in labeled_names else None
        for y in tile_starts(img.shape[0], tile):
            for x in tile_starts(img.shape[1], tile):
                patch = img[y : y + tile, x : x + tile]
                if is_blank_tile(patch, blank_low):
                    continue
                rel = f"tiles/{name}_{y}_{x}.png"
                write_png(out_dir / rel, patch)
                if mask is None:
                    splits["unlabeled"].append({"image": rel})
                    continue
                write_png(
                    out_dir / f"tiles/{name}_{y}_{x}{MASK_SUFFIX}.png",
                    mask[y : y + tile, x : x + tile],
                )
                splits["labeled"].append(
                    {"image": rel, "label": f"tiles/{name}_{y}_{x}{MASK_SUFFIX}.png"}
                )
    for split, csv_name in (("validation", "valid.csv"), ("test", "test.csv")):
        splits[split] = []
        for name in names(csv_name):
            img = _read_rgb(source(name, False))
            write_png(out_dir / f"images/{name}.png", img)
            write_png(
                out_dir / f"images/{name}{MASK_SUFFIX}.png",
                _read_mask01(source(name, True), img.shape[:2]),
            )
            splits[split].append(
                {"image": f"images/{name}.png", "label": f"images/{name}{MASK_SUFFIX}.png"}
            )
    if not splits["labeled"]:
        raise InputError(f"no labeled tile: every tile of the {labeled_list} images is blank")
    logger.info(
        "DigestPath: "
        + ", ".join(f"{len(v)} {k}" for k, v in splits.items())
        + f" ({tile} px tiles; validation/test whole images)"
    )
    return str(
        write_datalist(
            out_dir / "datalist.json",
            description=f"DigestPath 2019 tiles, labeled = {labeled_list}, from {src_dir}",
            **splits,
        )
    )
