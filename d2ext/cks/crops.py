"""Crop-window geometry of the LACSS segmentor: fixed S x S windows aligned to the stride-4 grid.

Coordinates are LACSS's (y, x) pixels, edge-indexed (pixel (r, c) covers [r, r+1) x [c, c+1)).
An instance at location (y, x) gets the window whose grid origin is
``(floor(y / 4) - P // 2, floor(x / 4) - P // 2)`` with ``P = S // 4`` cells, i.e. pixel rows
``4 * gy0 .. 4 * gy0 + S - 1`` (``lacss/modules/segmentor.py``). Windows may leave the image.

Canvas ops on one image (``paste_sum``, ``paste_max``, ``crop_from_image``, ``window_sum``) accept
any origin: indices are guarded (clamped into a padding of S, masked), never wrapped, so window
pixels outside the image are dropped (pastes) or read as ``fill`` (crops).
"""

from typing import Tuple

import torch

__all__ = [
    "crop_origins",
    "window_indices",
    "inside_mask",
    "crop_from_image",
    "paste_sum",
    "paste_max",
    "window_sum",
]


def crop_origins(locations: torch.Tensor, crop_size: int = 96, stride: int = 4) -> torch.Tensor:
    """Pixel origins (y0, x0) of the crop windows of ``locations``.

    Args:
        locations: (N, 2) float, (y, x) pixels.
        crop_size: S, a multiple of ``stride``.
        stride: the segmentor's feature stride.

    Returns:
        (N, 2) long: ``stride * (floor(loc / stride) - (S // stride) // 2)``.
    """
    assert crop_size % stride == 0, f"crop size {crop_size} is not a multiple of stride {stride}"
    half = (crop_size // stride) // 2
    grid = torch.div(locations, stride, rounding_mode="floor").long() - half
    return grid * stride


def window_indices(origins: torch.Tensor, crop_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel rows and columns of the crop windows.

    Args:
        origins: (N, 2) long, (y0, x0) pixels.
        crop_size: S.

    Returns:
        rows (N, S) and cols (N, S), long: ``y0 + [0, S)`` and ``x0 + [0, S)`` (unclipped).
    """
    ar = torch.arange(crop_size, device=origins.device)
    origins = origins.long()
    return origins[:, 0:1] + ar, origins[:, 1:2] + ar


def inside_mask(origins: torch.Tensor, crop_size: int, height: int, width: int) -> torch.Tensor:
    """(N, S, S) bool: which window pixels lie inside the H x W image."""
    rows, cols = window_indices(origins, crop_size)
    in_r = (rows >= 0) & (rows < height)
    in_c = (cols >= 0) & (cols < width)
    return in_r[:, :, None] & in_c[:, None, :]


def crop_from_image(
    image: torch.Tensor, origins: torch.Tensor, crop_size: int, fill: float = 0.0
) -> torch.Tensor:
    """The pixels of each window (LACSS: gather from the image padded with ``fill``).

    Args:
        image: (H, W), shared by all windows, or (N, H, W): window i reads ``image[i]``.
        origins: (N, 2) long, (y0, x0) pixels; any value (no wraparound).
        crop_size: S.
        fill: value of window pixels outside the image.

    Returns:
        (N, S, S), dtype of ``image``; differentiable w.r.t. ``image``.
    """
    height, width = image.shape[-2:]
    rows, cols = window_indices(origins, crop_size)
    inside = inside_mask(origins, crop_size, height, width)
    rr = rows.clamp(0, height - 1)[:, :, None]
    cc = cols.clamp(0, width - 1)[:, None, :]
    lin = rr * width + cc
    if image.dim() == 3:
        assert (
            image.shape[0] == origins.shape[0]
        ), f"image {tuple(image.shape)} needs one plane per window ({origins.shape[0]})"
        plane = torch.arange(origins.shape[0], device=image.device)[:, None, None]
        lin = lin + plane * (height * width)
    vals = _take(image.reshape(-1), lin)
    return torch.where(inside, vals, torch.full((), fill, dtype=vals.dtype, device=vals.device))


# Gathers and scatter-adds through index_select / index_add_ on flat tensors: advanced-index
# gathers accumulate their gradient (and index_put(accumulate=True) its sum) in a thread-dependent
# order on CPU; index_add_ is serial there, so training steps are bitwise reproducible (resume).
def _take(flat: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
    """``flat[lin]`` for a 1-D ``flat`` and long indices ``lin`` of any shape."""
    return flat.index_select(0, lin.reshape(-1)).view(lin.shape)


def _accumulate(values: torch.Tensor, lin: torch.Tensor, size: int) -> torch.Tensor:
    """1-D canvas of ``size`` with ``values`` summed at the flat indices ``lin`` (same shape)."""
    return values.new_zeros(size).index_add(0, lin.reshape(-1), values.reshape(-1))


def _padded_indices(origins: torch.Tensor, crop_size: int, height: int, width: int):
    """Window indices on an H x W canvas padded by S on each side; windows wholly outside the
    image are moved (clamped) into the padding, so every index is valid and nothing wraps."""
    S = crop_size
    oy = origins[:, 0].long().clamp(-S, height)
    ox = origins[:, 1].long().clamp(-S, width)
    rows, cols = window_indices(torch.stack([oy, ox], dim=1) + S, S)
    return rows[:, :, None], cols[:, None, :]


def paste_sum(values: torch.Tensor, origins: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum of the windows' values on the image (window parts outside the image are dropped).

    Args:
        values: (N, S, S).
        origins: (N, 2) long, (y0, x0) pixels; any value.
        height, width: image size.

    Returns:
        (H, W), differentiable w.r.t. ``values`` (``index_put(accumulate=True)`` on a canvas
        padded by S, as LACSS's ``.at[].add`` on its padded canvas).
    """
    S = values.shape[-1]
    rows, cols = _padded_indices(origins, S, height, width)
    wc = width + 2 * S
    canvas = _accumulate(values, rows * wc + cols, (height + 2 * S) * wc)
    return canvas.view(height + 2 * S, wc)[S : S + height, S : S + width]


def paste_max(
    values: torch.Tensor, origins: torch.Tensor, height: int, width: int, fill: float
) -> torch.Tensor:
    """Max over the windows covering each pixel, ``fill`` where no window covers it.

    Args:
        values: (N, S, S).
        origins: (N, 2) long, (y0, x0) pixels; any value.
        height, width: image size.
        fill: value of uncovered pixels (LACSS: -1e6 logits).

    Returns:
        (H, W), differentiable w.r.t. ``values`` (``scatter_reduce(amax, include_self=False)``;
        ties share the gradient evenly). Memory: one (N, S, S) long index.
    """
    S = values.shape[-1]
    rows, cols = _padded_indices(origins, S, height, width)
    wc = width + 2 * S
    flat = (rows * wc + cols).reshape(-1)
    canvas = values.new_full(((height + 2 * S) * wc,), fill)
    canvas = canvas.scatter_reduce(0, flat, values.reshape(-1), "amax", include_self=False)
    return canvas.view(height + 2 * S, wc)[S : S + height, S : S + width]


def window_sum(values: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
    """``Sigma_i(p) = sum_j values_j(p)`` read back on every window i, over an unbounded canvas
    (pixels outside the image included, as on LACSS's padded canvas in
    ``self_supervised_instance_loss``).

    Args:
        values: (N, S, S).
        origins: (N, 2) long, (y0, x0) pixels.

    Returns:
        (N, S, S), differentiable w.r.t. ``values`` (every window's own values included).
    """
    n, S = values.shape[0], values.shape[-1]
    if n == 0:
        return values * 1.0
    top_left = origins.long().min(dim=0).values
    extent = (origins.long().max(dim=0).values - top_left + S).tolist()
    rows, cols = window_indices(origins.long() - top_left, S)
    rows, cols = rows[:, :, None], cols[:, None, :]
    lin = rows * extent[1] + cols
    return _take(_accumulate(values, lin, extent[0] * extent[1]), lin)
