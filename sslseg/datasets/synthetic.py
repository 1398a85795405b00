"""Seeded synthetic data in exactly the formats of ``docs/data_formats.md``.

Small stand-ins for the real sets, used by the demo and the tests:

- :func:`make_cells` / :func:`make_unlabeled_cells`: overlapping cervical cells (ISBI 2014-like),
  COCO json with categories 1 cytoplasm / 2 nuclei, RLE masks and one point per instance.
- :func:`make_binary_patches`: H&E-like RGB patches with a {0, 1} nuclei label (CDMA).
- :func:`make_slices`: ACDC-like 2D slices + validation/test volumes in h5 (DMD-2D, ATSO).
- :func:`make_volumes`: LA-like 3D volumes in h5 (DMD-3D).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives identical files.
"""

from pathlib import Path
from typing import Optional, Tuple

import cv2
import h5py
import numpy as np

from .coco_utils import CERVICAL_CATEGORIES, image_record, mask_to_annotation, write_coco
from .io_utils import PathLike, write_datalist, write_png

__all__ = [
    "make_cells",
    "make_unlabeled_cells",
    "make_binary_patches",
    "make_slices",
    "make_volumes",
]


def _ellipse(shape: Tuple[int, int], cy, cx, ay, ax, theta=0.0) -> np.ndarray:
    """(H, W) bool mask of an ellipse with centre (cy, cx), semi-axes (ay, ax), rotation theta."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    y, x = yy + 0.5 - cy, xx + 0.5 - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _write_h5(path: Path, **arrays) -> str:
    """Write arrays as (uncompressed) h5 datasets, without timestamps so bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=False) as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, track_times=False)
    return str(path)


# ----------------------------------------------------------------------------- cervical cells
def _draw_cell_image(rng: np.random.Generator, size: int):
    """One grayscale image of 3-8 overlapping semi-transparent cells, each with a dark nucleus.

    Returns:
        image (H, W) uint8, cells [(H, W) bool], nuclei [(H, W) bool] (nucleus i inside cell i).
    """
    num = int(rng.integers(3, 9))
    img = np.full((size, size), 215.0) + rng.normal(0, 4, (size, size))
    cells, nuclei, centres = [], [], []
    for i in range(num):
        ax, ay = rng.uniform(0.08, 0.15, 2) * size
        r = max(ax, ay)
        if i == 0:
            cy, cx = rng.uniform(0.35, 0.65, 2) * size
        else:  # place next to an existing cell so that the two overlap
            py, px, pr = centres[int(rng.integers(len(centres)))]
            ang, dist = rng.uniform(0, 2 * np.pi), (pr + r) * rng.uniform(0.35, 0.7)
            cy, cx = py + dist * np.sin(ang), px + dist * np.cos(ang)
        cy, cx = np.clip([cy, cx], r + 2, size - r - 2)
        theta = rng.uniform(0, np.pi)
        cell = _ellipse((size, size), cy, cx, ay, ax, theta)
        nr = min(ax, ay) * rng.uniform(0.25, 0.4)
        off = rng.normal(0, 0.1 * min(ax, ay), 2)
        nucleus = (
            _ellipse(
                (size, size),
                cy + off[0],
                cx + off[1],
                nr * rng.uniform(0.8, 1.2),
                nr,
                rng.uniform(0, np.pi),
            )
            & cell
        )
        alpha = rng.uniform(0.3, 0.45)  # semi-transparent: overlaps are darker
        img[cell] = (1 - alpha) * img[cell] + alpha * rng.uniform(110, 150)
        cells.append(cell)
        nuclei.append(nucleus)
        centres.append((cy, cx, r))
    for nucleus in nuclei:
        img[nucleus] = 0.3 * img[nucleus] + 0.7 * rng.uniform(40, 70)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 3, (size, size))
    return _to_uint8(img), cells, nuclei


def _write_cell_set(out_dir, json_name, image_dir, num_images, size, seed, labeled):
    out_dir = Path(out_dir)
    image_root = out_dir / image_dir
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        img, cells, nuclei = _draw_cell_image(rng, size)
        file_name = f"{i:04d}.png"
        write_png(image_root / file_name, img)
        images.append(image_record(i + 1, file_name, size, size))
        if not labeled:
            continue
        for cat_id, masks in ((1, cells), (2, nuclei)):
            for m in masks:
                anns.append(
                    mask_to_annotation(
                        m, cat_id, len(anns) + 1, i + 1, source=f"synthetic image {file_name}"
                    )
                )
    json_path = write_coco(
        out_dir / json_name,
        images,
        anns,
        CERVICAL_CATEGORIES,
        description=f"synthetic cervical cells, seed {seed}",
    )
    return str(json_path), str(image_root)


def make_cells(out_dir: PathLike, num_images: int = 8, size: int = 256, seed: int = 0):
    """Labeled synthetic cervical-cell set (ISBI 2014-like), COCO json.

    Each (size, size) grayscale PNG holds 3-8 overlapping elliptical cells; annotations are one
    cytoplasm (category 1, the full ellipse, so cytoplasm masks overlap) and one nucleus
    (category 2, inside its cell) per cell, as compressed RLE with bbox, area and the centroid
    point.

    Returns:
        (json_path, image_root): ``<out_dir>/cells.json`` and ``<out_dir>/images``.
    """
    return _write_cell_set(out_dir, "cells.json", "images", num_images, size, seed, True)


def make_unlabeled_cells(out_dir: PathLike, num_images: int, size: int = 256, seed: int = 1):
    """Unlabeled synthetic cells (same kind of images), COCO json with ``annotations: []``.

    Returns:
        (json_path, image_root): ``<out_dir>/unlabeled_cells.json``, ``<out_dir>/unlabeled_images``.
    """
    return _write_cell_set(
        out_dir, "unlabeled_cells.json", "unlabeled_images", num_images, size, seed, False
    )


# ----------------------------------------------------------------------------- H&E patches
def _split_counts(n: int, num_labeled: Optional[int]) -> Tuple[int, int, int, int]:
    """(labeled, unlabeled, validation, test) counts for ``n`` items; each split non-empty."""
    n_eval = max(1, n // 8)
    n_train = n - 2 * n_eval
    n_lab = max(1, n_train // 4) if num_labeled is None else int(num_labeled)
    if n_train < 2 or not 1 <= n_lab < n_train:
        raise ValueError(
            f"cannot split {n} items into labeled ({n_lab}) / unlabeled / "
            f"validation ({n_eval}) / test ({n_eval}): use more items"
        )
    return n_lab, n_train - n_lab, n_eval, n_eval


def make_binary_patches(
    out_dir: PathLike,
    num: int = 16,
    size: int = 128,
    seed: int = 0,
    num_labeled: Optional[int] = None,
) -> str:
    """H&E-like RGB patches with blob nuclei and a {0, 1} label PNG (CDMA-style data).

    Files: ``images/patch_XXXX.png`` (size, size, 3) uint8 and ``labels/patch_XXXX.png``
    (size, size) uint8 in {0, 1}. Datalist splits: ``num // 8`` validation and test patches each,
    of the rest ``num_labeled`` (default a quarter) labeled and the remainder unlabeled.

    Returns:
        path of ``<out_dir>/datalist.json`` (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    n_lab, n_unl, n_val, _ = _split_counts(num, num_labeled)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(num):
        label = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(5, 16))):
            cy, cx = rng.uniform(0, size, 2)
            ay, ax = rng.uniform(0.03, 0.08, 2) * size
            label |= _ellipse((size, size), cy, cx, ay, ax, rng.uniform(0, np.pi))
        stroma = np.array([235.0, 185.0, 215.0]) + rng.normal(0, 8, 3)
        nucleus = np.array([95.0, 55.0, 145.0]) + rng.normal(0, 8, 3)
        texture = cv2.GaussianBlur(rng.normal(0, 12, (size, size)), (0, 0), 2.0)[..., None]
        img = np.where(label[..., None], nucleus, stroma) + texture
        img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.normal(0, 4, (size, size, 3))
        name = f"patch_{i:04d}.png"
        write_png(out_dir / "images" / name, _to_uint8(img))
        write_png(out_dir / "labels" / name, label.astype(np.uint8))
        items.append({"image": f"images/{name}", "label": f"labels/{name}"})
    n_train = n_lab + n_unl
    return str(
        write_datalist(
            out_dir / "datalist.json",
            labeled=items[:n_lab],
            unlabeled=[{"image": it["image"]} for it in items[n_lab:n_train]],
            validation=items[n_train : n_train + n_val],
            test=items[n_train + n_val :],
            description=f"synthetic H&E patches, seed {seed}",
        )
    )


# ----------------------------------------------------------------------------- ACDC-like slices
def _heart_volume(rng: np.random.Generator, depth: int, size: int, num_classes: int):
    """ACDC-like (D, H, W) volume: RV crescent = 1, myocardium ring = 2, LV disk = 3.

    Returns:
        image (D, H, W) float32 in [0, 1], label (D, H, W) uint8 in [0, num_classes).
    """
    yy, xx = np.mgrid[:size, :size] + 0.5
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    r_lv, wall = rng.uniform(0.1, 0.14) * size, rng.uniform(0.04, 0.06) * size
    rv_ang, rv_r = rng.uniform(0, 2 * np.pi), rng.uniform(0.14, 0.2) * size
    label = np.zeros((depth, size, size), np.uint8)
    for z in range(depth):
        s = 1.0 - 0.5 * z / max(depth - 1, 1)  # base -> apex: the heart shrinks
        d = np.hypot(yy - cy, xx - cx)
        lv, myo = d <= r_lv * s, (d > r_lv * s) & (d <= (r_lv + wall) * s)
        ry = cy + (r_lv + wall) * s * np.sin(rv_ang)
        rx = cx + (r_lv + wall) * s * np.cos(rv_ang)
        rv = (np.hypot(yy - ry, xx - rx) <= rv_r * s) & (d > (r_lv + wall) * s + 1)
        label[z][rv], label[z][myo], label[z][lv] = 1, 2, 3
    label = np.minimum(label, num_classes - 1).astype(np.uint8)
    means = np.array([0.2, 0.75, 0.35, 0.85])
    img = means[np.minimum(label, 3)] if num_classes == 4 else means[np.where(label > 0, 3, 0)]
    img = img + rng.normal(0, 0.05, img.shape)
    img = np.stack([cv2.GaussianBlur(s_, (0, 0), 0.8) for s_ in img])
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32), label


def make_slices(
    out_dir: PathLike,
    num_volumes: int = 6,
    depth: int = 8,
    size: int = 64,
    num_classes: int = 4,
    seed: int = 0,
    num_labeled: int = 2,
) -> str:
    """ACDC-like data in the SSL4MIS layout (nested rings: LV disk 3, Myo ring 2, RV crescent 1).

    ``num_volumes // 6`` (at least 1) volumes each go to validation and test, stored whole as
    ``data/vol_XXX.h5`` with ``image`` (D, H, W) float32 in [0, 1] and ``label`` (D, H, W) uint8.
    The training volumes are stored as slices ``data/slices/vol_XXX_slice_K.h5`` with (H, W)
    datasets: ``labeled`` = the slices of the first ``num_labeled`` training volumes,
    ``unlabeled`` = the slices of the others. ``num_classes`` < 4 merges the highest labels.

    Returns:
        path of ``<out_dir>/datalist.json`` (paths relative to ``out_dir``).
    """
    if not 2 <= num_classes <= 4:
        raise ValueError(f"make_slices: num_classes must be in 2..4, got {num_classes}")
    out_dir = Path(out_dir)
    n_eval = max(1, num_volumes // 6)
    n_train = num_volumes - 2 * n_eval
    if not 1 <= num_labeled < n_train:
        raise ValueError(
            f"make_slices: {num_volumes} volumes leave {n_train} for training, "
            f"need num_labeled ({num_labeled}) >= 1 and < {n_train}"
        )
    rng = np.random.default_rng(seed)
    split = {"labeled": [], "unlabeled": [], "validation": [], "test": []}
    for v in range(num_volumes):
        img, lab = _heart_volume(rng, depth, size, num_classes)
        if v < n_train:
            key = "labeled" if v < num_labeled else "unlabeled"
            for k in range(depth):
                rel = f"data/slices/vol_{v:03d}_slice_{k}.h5"
                _write_h5(out_dir / rel, image=img[k], label=lab[k])
                split[key].append(
                    {"image": rel, "label": rel} if key == "labeled" else {"image": rel}
                )
        else:
            rel = f"data/vol_{v:03d}.h5"
            _write_h5(out_dir / rel, image=img, label=lab)
            key = "validation" if v < n_train + n_eval else "test"
            split[key].append({"image": rel, "label": rel})
    return str(
        write_datalist(
            out_dir / "datalist.json",
            **split,
            description=f"synthetic ACDC-like slices, seed {seed}",
        )
    )


# ----------------------------------------------------------------------------- LA-like volumes
def _atrium_volume(rng: np.random.Generator, shape: Tuple[int, int, int]):
    """LA-like (H, W, D) volume: ellipsoid body plus a tubular appendage.

    Returns:
        image (H, W, D) float32, z-score normalised; label (H, W, D) uint8 in {0, 1}.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij"), -1)
    shp = np.asarray(shape, float)
    centre = rng.uniform(0.4, 0.6, 3) * shp
    radii = rng.uniform(0.18, 0.26, 3) * shp
    body = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
    # appendage: a tube from the body centre outwards in the H-W plane, tilted a little in D
    ang = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(ang), np.sin(ang), rng.uniform(-0.3, 0.3)])
    direction /= np.linalg.norm(direction)
    length = 1.6 * radii[:2].max()
    rel = grid - centre
    t = np.clip(rel @ direction, 0, length)
    dist = np.linalg.norm(rel - t[..., None] * direction, axis=-1)
    tube = dist <= rng.uniform(0.03, 0.05) * shp[:2].min()
    label = (body | tube).astype(np.uint8)
    img = 0.3 + 0.5 * label + rng.normal(0, 0.12, shape)
    img = cv2.GaussianBlur(img.reshape(shape[0], -1), (0, 0), 0.7).reshape(shape)
    img = (img - img.mean()) / img.std()
    return img.astype(np.float32), label


def make_volumes(
    out_dir: PathLike,
    num: int = 6,
    shape: Tuple[int, int, int] = (96, 96, 64),
    seed: int = 0,
    num_labeled: int = 2,
) -> str:
    """LA-like 3D set: ``volumes/case_XXX.h5`` with ``image`` (H, W, D) float32 (z-scored) and
    ``label`` (H, W, D) uint8 {0, 1}.

    ``num // 6`` (at least 1) cases form the test split (``validation`` lists the same cases, as
    in the LA protocol which evaluates on the test list); of the rest the first ``num_labeled``
    are labeled, the others unlabeled.

    Returns:
        path of ``<out_dir>/datalist.json`` (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    n_test = max(1, num // 6)
    n_train = num - n_test
    if not 1 <= num_labeled < n_train:
        raise ValueError(
            f"make_volumes: {num} cases leave {n_train} for training, "
            f"need num_labeled ({num_labeled}) >= 1 and < {n_train}"
        )
    rng = np.random.default_rng(seed)
    items = []
    for i in range(num):
        img, lab = _atrium_volume(rng, tuple(int(s) for s in shape))
        rel = f"volumes/case_{i:03d}.h5"
        _write_h5(out_dir / rel, image=img, label=lab)
        items.append({"image": rel, "label": rel})
    return str(
        write_datalist(
            out_dir / "datalist.json",
            labeled=items[:num_labeled],
            unlabeled=[{"image": it["image"]} for it in items[num_labeled:n_train]],
            validation=items[n_train:],
            test=items[n_train:],
            description=f"synthetic LA-like volumes, seed {seed}",
        )
    )
