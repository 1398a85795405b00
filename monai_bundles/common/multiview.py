"""Three orthogonal 2D views of a 3D volume (ATSO self-training, RSTN-style inference).

The RSTN pipeline (Yu et al., "Recurrent Saliency Transformation Network", CVPR 2018), which
ATSO ("Asynchronous Teacher-Student Optimization", Ke et al.) uses as its segmentation model:

- one 2D network per view, i.e. per spatial axis of the volume (0, 1, 2: the three orthogonal
  slicings);
- the input of a 2D network is a slab of ``context`` adjacent slices (3 in RSTN) stacked as
  channels, ``[slice s-1, slice s, slice s+1]`` per image channel (:func:`context_channels`,
  edges replicated); its target is the label of the centre slice (:class:`RandViewSlabsd`
  draws such slabs for training, centred on foreground voxels with probability ``pos_ratio``);
- at test time each view's network predicts every slice of the volume along its axis, and the
  three probability volumes are fused voxel by voxel (:func:`fuse_views`): RSTN's F2 (the mean
  probability, foreground where the sum of the three is >= 1.5) is ``"mean_prob"``; its F1
  (union, sum >= 0.5) and F3 (intersection, sum >= 2.5) are ``"union"`` and ``"intersection"``;
  ``"vote"`` is the majority of the binarised views.

:class:`MultiViewInferer` runs this with MONAI's ``SliceInferer``: a sliding window whose roi is
one slice thick, so its window batches (``sw_batch_size``) take the 2D windows of many slices at
once instead of one network call per slice. :func:`per_slice_loop_inference` is the plain
slice-by-slice loop it must match (the reference for tests and benchmarks).
"""

import numbers
from typing import Any, Dict, Hashable, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer, sliding_window_inference
from monai.transforms import MapTransform, Randomizable
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_dst_type

from monai_bundles.common.inferers import SliceVolumeInferer
from sslseg.errors import InputError

__all__ = [
    "FUSION_MODES",
    "SLICE_MODES",
    "WINDOW_MODES",
    "context_channels",
    "fuse_views",
    "MultiViewInferer",
    "RandViewSlabsd",
    "per_slice_loop_inference",
]

FUSION_MODES = ("mean_prob", "vote", "union", "intersection")
WINDOW_MODES = ("random", "centred")
SLICE_MODES = ("sliding_window", "resize", "volume")
_BINARY_ONLY = ("union", "intersection")


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MetaTensor meta (a plain ``torch.Tensor`` sharing the data)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_context(context: Any) -> int:
    if not _is_int(context) or context < 1 or context % 2 == 0:
        raise InputError(
            f"context_slices {context!r}: must be an odd positive number of slices (1, 3, 5, ...)"
        )
    return int(context)


def _check_views(views: Any) -> Tuple[int, ...]:
    try:
        got = tuple(views)
    except TypeError:
        got = ()
    if (
        not got
        or not all(_is_int(v) and 0 <= v <= 2 for v in got)
        or len(set(int(v) for v in got)) != len(got)
    ):
        raise InputError(
            f"views {views!r}: must be a non-empty list of distinct spatial axes among 0, 1, 2"
        )
    return tuple(int(v) for v in got)


def _check_slice_size(slice_size: Any, dims: int = 2) -> Tuple[int, ...]:
    try:
        got = tuple(slice_size)
    except TypeError:
        got = ()
    if len(got) != dims or not all(_is_int(s) and s > 0 for s in got):
        what = "two positive sizes (h, w)" if dims == 2 else f"{dims} positive sizes"
        raise InputError(f"slice_size {slice_size!r}: must be {what}")
    return tuple(int(s) for s in got)


def _check_fusion(fusion: Any) -> str:
    if fusion not in FUSION_MODES:
        raise InputError(f"fusion {fusion!r}: must be one of {', '.join(FUSION_MODES)}")
    return fusion


def _clamped_offsets(centre: torch.Tensor, size: int, context: int) -> torch.Tensor:
    """``centre + [-r, ..., r]`` (``r = context // 2``) clamped to ``0..size-1``:
    ``(len(centre), context)`` indices (``centre`` a 1D long tensor)."""
    r = context // 2
    offsets = torch.arange(-r, r + 1, device=centre.device)
    return (centre[:, None] + offsets[None, :]).clamp(0, size - 1)


def context_channels(x: torch.Tensor, axis: int, context: int) -> torch.Tensor:
    """Each slice along a spatial axis with its ``context // 2`` neighbours per side as channels.

    Args:
        x: ``(B, C, X, Y, Z)`` volume (a ``MetaTensor`` keeps its meta).
        axis: the slice axis among the spatial dims (0, 1, 2; tensor dim ``2 + axis``).
        context: odd number of slices per slab (3: ``[s-1, s, s+1]``); 1 returns ``x``.

    Returns:
        ``(B, C * context, X, Y, Z)``: channel ``c * context + j`` at slice ``s`` is channel ``c``
        of ``x`` at slice ``clamp(s + j - context // 2, 0, S - 1)`` (channel-major; edge slices
        replicated).
    """
    context = _check_context(context)
    if x.ndim != 5:
        raise ValueError(f"context_channels: expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"context_channels: axis must be 0, 1 or 2, got {axis!r}")
    if context == 1:
        return x
    plain, dim = _plain(x), 2 + axis
    size = plain.shape[dim]
    centres = torch.arange(size, device=plain.device)
    index = _clamped_offsets(centres, size, context)  # (S, context)
    # (B, C, ..., S * context, ...) with the context index fastest, then (B, C, ..., S, ctx, ...)
    gathered = plain.index_select(dim, index.reshape(-1))
    shape = list(plain.shape)
    shape[dim : dim + 1] = [size, context]
    gathered = gathered.reshape(shape)
    # context dim next to the channels: (B, C, context, X, Y, Z) -> (B, C * context, X, Y, Z)
    out = torch.movedim(gathered, dim + 1, 2)
    b, c = plain.shape[:2]
    out = out.reshape(b, c * context, *plain.shape[2:])
    return convert_to_dst_type(out, x, dtype=out.dtype)[0]


def fuse_views(probs: Sequence[torch.Tensor], mode: str = "mean_prob") -> torch.Tensor:
    """Fuse the probability maps of several views into one map.

    Args:
        probs: one ``(B, K, *spatial)`` probability map per view, all of one shape: ``K == 1``
            a sigmoid foreground probability, ``K > 1`` softmax over the classes.
        mode: one of :data:`FUSION_MODES` (``n`` views, ``S`` the sum of their probabilities):

            - ``"mean_prob"``: the mean probability (RSTN F2: foreground where ``S >= n / 2``,
              1.5 for 3 views; multi-class: argmax of the mean);
            - ``"vote"``: binary: the fraction of views with probability >= 0.5, a tie (half the
              views, even ``n``) just below 0.5 so that it is background (foreground needs more
              than half: 2 of 3); multi-class: plurality of the views' argmaxes, a tie broken by
              the mean probability (``(votes + 1e-3 * mean) / (n + 1e-3)``, summing to 1 over K);
            - ``"union"`` (binary only, RSTN F1): ``clamp(S, 0, 1)``, foreground where
              ``S >= 0.5``;
            - ``"intersection"`` (binary only, RSTN F3): ``clamp(S - (n - 1), 0, 1)``,
              foreground where ``S >= n - 0.5``.

    Returns:
        ``(B, K, *spatial)`` in [0, 1] whose threshold at 0.5 (``K == 1``, foreground where
        ``>= 0.5``) or argmax over K is the fused segmentation; of the first view's type (a
        ``MetaTensor`` keeps its meta). One view is returned unchanged.
    """
    mode = _check_fusion(mode)
    probs = list(probs)
    if not probs:
        raise InputError(f"fusion {mode!r}: no view probabilities to fuse")
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1:
        raise InputError(
            f"fusion {mode!r}: the views' probability maps differ in shape: "
            f"{[tuple(p.shape) for p in probs]}"
        )
    if probs[0].ndim < 2:
        raise InputError(
            f"fusion {mode!r}: expected (B, K, *spatial) maps, got shape {tuple(probs[0].shape)}"
        )
    k = probs[0].shape[1]
    if mode in _BINARY_ONLY and k != 1:
        raise InputError(
            f"fusion {mode!r}: binary only (1 foreground channel), the views have {k} channels; "
            f"use mean_prob or vote"
        )
    n = len(probs)
    if n == 1:
        return probs[0]
    stack = torch.stack([_plain(p) for p in probs]).float()  # (n, B, K, *spatial)
    if mode == "mean_prob":
        out = stack.mean(dim=0)
    elif mode == "union":
        out = stack.sum(dim=0).clamp(0.0, 1.0)
    elif mode == "intersection":
        out = (stack.sum(dim=0) - (n - 1)).clamp(0.0, 1.0)
    elif k == 1:  # binary vote
        votes = (stack >= 0.5).sum(dim=0).float()
        out = votes / n
        # a tie (exactly half the views, even n) halfway between 0.5 and the next lower fraction
        out = torch.where(2 * votes == n, torch.full_like(out, 0.5 - 0.5 / n), out)
    else:  # multi-class plurality vote, ties broken by the mean probability
        labels = stack.argmax(dim=2)  # (n, B, *spatial)
        votes = F.one_hot(labels, k).sum(dim=0).movedim(-1, 1).float()  # (B, K, *spatial)
        eps = 1e-3
        out = (votes + eps * stack.mean(dim=0)) / (n + eps)
    return convert_to_dst_type(out, probs[0], dtype=out.dtype)[0]


class MultiViewInferer(Inferer):
    """One 2D network per view (spatial axis), each over all slices of its axis, fused.

    Args:
        views: the slice axes among the spatial dims, one per network (default all three).
        context: odd number of adjacent slices stacked as input channels (:func:`context_channels`).
        roi_size: in-plane ``(h, w)`` of the 2D windows (``"sliding_window"``) or of the resized
            slices (``"resize"``); the network's training slice size.
        sw_batch_size: 2D windows (of any slices) per network call.
        overlap: in-plane overlap of the sliding windows.
        mode: blending of overlapping windows (``"constant"``: plain mean, or ``"gaussian"``).
        fusion: how the views' probabilities are fused, one of :data:`FUSION_MODES`.
        slice_mode: ``"sliding_window"``: MONAI's ``SliceInferer`` (2D windows of ``roi_size``
            over each slice, zero-padded where the slice is smaller); ``"resize"``: whole slices
            resized to ``roi_size`` and the probabilities back (:class:`SliceVolumeInferer`);
            ``"volume"``: one 3D network (``views == (0,)``, ``context == 1``, a 3D
            ``roi_size``) by MONAI's ``SlidingWindowInferer`` (the 3D option).

    ``__call__(inputs, network)``: ``inputs`` ``(B, C, X, Y, Z)`` (a MONAI ``MetaTensor`` or a
    plain tensor), or ``(B, C, H, W)`` 2D slices with ``views == (0,)`` (treated as
    ``(B, C, 1, H, W)``); ``network`` a sequence (e.g. ``torch.nn.ModuleList``) of one network
    per view, in the order of ``views``, each mapping ``(N, C * context, h, w)`` to
    probabilities ``(N, K, h, w)`` (e.g. ``ProbabilityNet``). Returns the fused ``(B, K, X, Y,
    Z)`` (``(B, K, H, W)`` for 2D input) probability map (:func:`fuse_views`), a ``MetaTensor``
    with the input's meta when the input is one (as ``SlidingWindowInferer``).
    """

    def __init__(
        self,
        views: Sequence[int] = (0, 1, 2),
        context: int = 3,
        roi_size: Sequence[int] = (96, 96),
        sw_batch_size: int = 16,
        overlap: float = 0.25,
        mode: str = "constant",
        fusion: str = "mean_prob",
        slice_mode: str = "sliding_window",
    ) -> None:
        super().__init__()
        self.views = _check_views(views)
        self.context = _check_context(context)
        if slice_mode not in SLICE_MODES:
            raise InputError(f"slice_mode {slice_mode!r}: must be one of {', '.join(SLICE_MODES)}")
        if slice_mode == "volume" and (self.views != (0,) or self.context != 1):
            raise InputError(
                f"slice_mode 'volume' (one 3D network) takes views [0] and context_slices 1, "
                f"got views {list(self.views)} and context_slices {self.context}"
            )
        self.roi_size = _check_slice_size(roi_size, 3 if slice_mode == "volume" else 2)
        self.fusion = _check_fusion(fusion)
        if not _is_int(sw_batch_size) or sw_batch_size < 1:
            raise InputError(f"sw_batch_size {sw_batch_size!r}: must be a positive integer")
        if not 0 <= float(overlap) < 1:
            raise InputError(f"overlap {overlap!r}: must be in [0, 1)")
        self.slice_mode = slice_mode
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.inferers = [self._slice_inferer(a) for a in self.views]

    def _slice_inferer(self, axis: int) -> Inferer:
        if self.slice_mode == "volume":
            return SlidingWindowInferer(
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                overlap=self.overlap,
                mode=self.mode,
                progress=False,
            )
        if self.slice_mode == "resize":
            return SliceVolumeInferer(
                self.roi_size, spatial_dim=axis, sw_batch_size=self.sw_batch_size
            )
        return SliceInferer(
            roi_size=self.roi_size,
            spatial_dim=axis,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
            progress=False,
            padding_mode="constant",
        )

    def __call__(
        self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        networks = _networks_per_view(network, self.views)
        x, is_2d = _as_volume(_plain(inputs), self.views)
        probs = []
        for axis, inferer, net in zip(self.views, self.inferers, networks):
            x_ctx = context_channels(x, axis, self.context)  # (B, C * context, X, Y, Z)
            probs.append(_plain(inferer(x_ctx, net, *args, **kwargs)))  # (B, K, X, Y, Z)
        out = fuse_views(probs, self.fusion)
        if is_2d:
            out = out.squeeze(2)  # (B, K, H, W)
        return convert_to_dst_type(out, inputs, dtype=out.dtype, device=out.device)[0]


def _networks_per_view(network: Any, views: Tuple[int, ...]) -> list:
    """``network`` as a list of one network per view, or ``InputError``."""
    nets = None
    # a Sequential is one network (iterable over its layers), a ModuleList holds networks
    single = isinstance(network, torch.nn.Module) and not isinstance(network, torch.nn.ModuleList)
    if not single:
        try:
            nets = list(network)
        except TypeError:
            pass
    if nets is None or len(nets) != len(views):
        got = f"{len(nets)} networks" if nets is not None else f"one {type(network).__name__}"
        raise InputError(
            f"views {views!r}: MultiViewInferer needs one network per view ({len(views)}, e.g. "
            f"a torch.nn.ModuleList in the order of views), got {got}"
        )
    return nets


def _as_volume(x: torch.Tensor, views: Tuple[int, ...]) -> Tuple[torch.Tensor, bool]:
    """``(B, C, X, Y, Z)`` as is, ``(B, C, H, W)`` as ``(B, C, 1, H, W)`` (``views == (0,)``
    only); the flag says whether a slice dim was added."""
    if x.ndim == 5:
        return x, False
    if x.ndim == 4:
        if views != (0,):
            raise InputError(
                f"views {views!r}: 2D input {tuple(x.shape)} (B, C, H, W) has only the slice "
                f"view 0; set views to [0]"
            )
        return x.unsqueeze(2), True
    raise InputError(
        f"MultiViewInferer: expected (B, C, X, Y, Z) or (B, C, H, W) input, got shape "
        f"{tuple(x.shape)}"
    )


def per_slice_loop_inference(
    networks: Sequence[Any],
    volume: torch.Tensor,
    views: Sequence[int],
    context: int,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    fusion: str = "mean_prob",
) -> torch.Tensor:
    """The plain reference of :class:`MultiViewInferer` (``slice_mode="sliding_window"``,
    ``mode="constant"``): one slice at a time, for benchmarks and tests.

    For each view ``i`` (axis ``views[i]``) and each slice index ``s`` along that axis, the
    ``(1, C * context, h0, w0)`` slab of slices ``clamp(s - r .. s + r)`` (channel-major, as
    :func:`context_channels`) is built by indexing, predicted with MONAI's 2D
    ``sliding_window_inference(slab, roi_size, 1, networks[i], overlap, mode="constant")`` and
    written into the view's output volume; the views are then fused (:func:`fuse_views`).

    Args:
        networks: one network per view, ``(N, C * context, h, w)`` -> probabilities
            ``(N, K, h, w)``.
        volume: ``(1, C, X, Y, Z)`` (a batch of several volumes works the same way).

    Returns:
        ``(1, K, X, Y, Z)`` fused probabilities (a plain tensor).
    """
    views, context = _check_views(views), _check_context(context)
    roi_size, fusion = _check_slice_size(roi_size), _check_fusion(fusion)
    volume = _plain(volume)
    if volume.ndim != 5:
        raise ValueError(
            f"per_slice_loop_inference: expected (1, C, X, Y, Z), got {tuple(volume.shape)}"
        )
    nets = _networks_per_view(networks, views)
    b, c = volume.shape[:2]
    probs = []
    with torch.no_grad():
        for axis, net in zip(views, nets):
            v = torch.movedim(volume, 2 + axis, 2)  # (B, C, S, h0, w0)
            size, h0, w0 = v.shape[2:]
            out = None
            for s in range(size):
                idx = [min(max(s + j - context // 2, 0), size - 1) for j in range(context)]
                slab = v[:, :, idx].reshape(b, c * context, h0, w0)  # channel-major
                pred = sliding_window_inference(
                    slab, roi_size, 1, net, overlap=overlap, mode="constant"
                )
                if out is None:
                    out = pred.new_zeros((b, pred.shape[1], size, h0, w0))
                out[:, :, s] = pred
            probs.append(torch.movedim(out, 2, 2 + axis))  # (B, K, X, Y, Z)
    return fuse_views(probs, fusion)


class RandViewSlabsd(Randomizable, MapTransform, MultiSampleTrait):
    """Random training slabs of the views of a volume: ``context`` slices as channels, the
    centre slice's label as target.

    Args:
        keys: ``(image_key, label_key)`` (or just the image key): the image ``(C, X, Y, Z)``
            and the integer label ``(1, X, Y, Z)`` (foreground: label > 0). A ``(C, H, W)``
            image / ``(1, H, W)`` label (a 2D slice, e.g. ACDC) is taken as ``(C, 1, H, W)``, with
            ``views == (0,)`` only.
        views: slice axes among the spatial dims; every output dict has one slab per view.
        context: odd number of adjacent slices per slab (edge slices replicated).
        slice_size: in-plane ``(h, w)`` of the slabs.
        num_samples: number of output dicts per input dict.
        pos_ratio: probability that a slab's centre voxel is drawn among the foreground voxels
            (else among all voxels): with 1.0 every slab's slice holds the organ (RSTN trains on
            such slices only).
        window: where the in-plane window lies in that slice: ``"random"`` (uniformly among the
            positions inside the slice, so the periphery of positive slices is seen too; RSTN
            trains on whole slices) or ``"centred"`` (on the centre voxel, shifted inside).
        allow_missing_keys: a missing label key is allowed (centres drawn among all voxels, no
            label outputs).

    ``__call__(data)`` returns a list of ``num_samples`` dicts (MONAI's multi-sample convention;
    ``list_data_collate`` flattens them), each with, for every view ``a``:

    - ``f"{image_key}_v{a}"``: ``(C * context, h, w)`` float32 plain tensor (channel-major as
      :func:`context_channels`);
    - ``f"{label_key}_v{a}"``: ``(1, h, w)`` float32, the label of the slab's centre slice;

    and the other entries of ``data`` (not the image or label) by reference. Per sample and per
    view the centre voxel is drawn independently: with probability ``pos_ratio`` uniformly among
    the foreground voxels, else (or where the label has no foreground: counted in
    ``self.empty_fallbacks``, per process, e.g. per DataLoader worker) uniformly among all. The
    slab's in-plane window (the two other axes, in their order) of ``slice_size`` lies at a
    uniformly random position inside the slice (``window="random"``), or is centred on the centre
    voxel and shifted to lie inside it (``"centred"``); a slice smaller than ``slice_size`` is
    zero-padded symmetrically (image and label). All randomness comes from ``self.R``
    (``set_random_state``, ``monai.data.utils.set_rnd``).
    """

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        views: Sequence[int] = (0, 1, 2),
        context: int = 3,
        slice_size: Sequence[int] = (96, 96),
        num_samples: int = 1,
        pos_ratio: float = 1.0,
        window: str = "random",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if window not in WINDOW_MODES:
            raise InputError(f"slice_window {window!r}: must be one of {WINDOW_MODES}")
        self.window = window
        if len(self.keys) not in (1, 2):
            raise InputError(f"keys {tuple(self.keys)!r}: must be (image_key, label_key)")
        self.views = _check_views(views)
        self.context = _check_context(context)
        self.slice_size = _check_slice_size(slice_size)
        if not _is_int(num_samples) or num_samples < 1:
            raise InputError(f"num_samples {num_samples!r}: must be an integer >= 1")
        if not isinstance(pos_ratio, numbers.Real) or not 0.0 <= float(pos_ratio) <= 1.0:
            raise InputError(f"slice_pos_ratio {pos_ratio!r}: must be in [0, 1]")
        self.num_samples = int(num_samples)
        self.pos_ratio = float(pos_ratio)
        self.empty_fallbacks = 0
        self._centres: List[List[Tuple[int, int, int]]] = []

    def randomize(self, data: Tuple[Tuple[int, int, int], np.ndarray, bool]) -> None:
        """Draw the centre voxels ``self._centres[sample][view]`` from
        ``(spatial_shape, foreground flat indices, whether a label was given)``."""
        shape, foreground, labelled = data
        total = int(np.prod(shape))
        self._centres = []
        for _ in range(self.num_samples):
            centres = []
            for _ in self.views:
                positive = self.R.rand() < self.pos_ratio
                if positive and len(foreground):
                    flat = int(foreground[self.R.randint(len(foreground))])
                else:
                    if positive and labelled:
                        self.empty_fallbacks += 1
                    flat = int(self.R.randint(total))
                centre = tuple(int(i) for i in np.unravel_index(flat, shape))
                centres.append((centre, tuple(self.R.rand(2))))  # window position in [0, 1)^2
            self._centres.append(centres)

    def _volumes(self, data: Mapping) -> Tuple[torch.Tensor, Any]:
        """The image ``(C, X, Y, Z)`` and label ``(1, X, Y, Z)`` (or None) as plain tensors."""
        image_key = self.keys[0]
        label_key = self.keys[1] if len(self.keys) == 2 else None
        if image_key not in data:
            raise InputError(f"{image_key}: missing from the data dict (keys {list(data)})")
        image = _plain(torch.as_tensor(data[image_key]))
        label = None
        if label_key is not None:
            if label_key in data:
                label = _plain(torch.as_tensor(data[label_key]))
            elif not self.allow_missing_keys:
                raise InputError(f"{label_key}: missing from the data dict (keys {list(data)})")
        if image.ndim == 3:  # a 2D slice (C, H, W)
            if self.views != (0,):
                raise InputError(
                    f"views {self.views!r}: 2D {image_key} {tuple(image.shape)} (C, H, W) has "
                    f"only the slice view 0; set views to [0]"
                )
            image = image.unsqueeze(1)
            label = label.unsqueeze(1) if label is not None and label.ndim == 3 else label
        if image.ndim != 4:
            raise InputError(
                f"{image_key}: expected (C, X, Y, Z) or (C, H, W), got shape {tuple(image.shape)}"
            )
        if label is not None and (label.ndim != 4 or label.shape[1:] != image.shape[1:]):
            raise InputError(
                f"{label_key}: expected (1, *spatial) matching {image_key} "
                f"{tuple(image.shape)}, got shape {tuple(label.shape)}"
            )
        return image, label

    def _window(self, centre: int, size: int, want: int, u: float) -> Tuple[int, int, int, int]:
        """``(start, stop, pad_before, pad_after)`` of a ``want``-wide window: at relative
        position ``u`` in [0, 1) of the possible starts (``random``) or at ``centre``."""
        if size >= want:
            if self.window == "random":
                start = min(int(u * (size - want + 1)), size - want)
            else:
                start = min(max(centre - want // 2, 0), size - want)
            return start, start + want, 0, 0
        before = (want - size) // 2
        return 0, size, before, want - size - before

    def _slab(
        self, image: torch.Tensor, label: Any, axis: int, draw: Tuple[Tuple[int, ...], tuple]
    ) -> Tuple[torch.Tensor, Any]:
        """``(C * context, h, w)`` image slab and ``(1, h, w)`` centre label slice (or None);
        ``draw`` = (centre voxel, in-plane window position in [0, 1)^2)."""
        centre, position = draw
        v = torch.movedim(image, 1 + axis, 1)  # (C, S, P, Q), P and Q in their original order
        size = v.shape[1]
        idx = _clamped_offsets(torch.tensor([centre[axis]]), size, self.context)[0]
        in_plane = [centre[d] for d in range(3) if d != axis]
        (p0, p1, pb, pa), (q0, q1, qb, qa) = (
            self._window(c, n, w, u)
            for c, n, w, u in zip(in_plane, v.shape[2:], self.slice_size, position)
        )
        pad = (qb, qa, pb, pa)
        slab = v[:, idx, p0:p1, q0:q1].to(torch.float32)  # (C, context, h', w')
        slab = F.pad(slab, pad).reshape(-1, *self.slice_size).clone()
        if label is None:
            return slab, None
        lab = torch.movedim(label, 1 + axis, 1)[:, centre[axis], p0:p1, q0:q1]  # (1, h', w')
        return slab, F.pad(lab.to(torch.float32), pad).clone()

    def __call__(self, data: Mapping[Hashable, Any]) -> List[Dict[Hashable, Any]]:
        image, label = self._volumes(data)
        shape = tuple(image.shape[1:])
        foreground = (
            np.flatnonzero(label[0].cpu().numpy() > 0)
            if label is not None
            else np.empty(0, dtype=np.int64)
        )
        self.randomize((shape, foreground, label is not None))
        image_key = self.keys[0]
        label_key = self.keys[1] if len(self.keys) == 2 else None
        rest = {k: v for k, v in data.items() if k not in self.keys}
        samples = []
        for centres in self._centres:
            out = dict(rest)
            for axis, centre in zip(self.views, centres):
                slab, lab = self._slab(image, label, axis, centre)
                out[f"{image_key}_v{axis}"] = slab
                if lab is not None:
                    out[f"{label_key}_v{axis}"] = lab
            samples.append(out)
        return samples
