"""MONAI readers and checks for the h5 files of the SSL4MIS / UA-MT layouts (and NIfTI).

``H5Reader(dataset="image")`` reads one dataset of an ``.h5`` file as a channel-less array, so
``LoadImaged(keys="image", reader=H5Reader(dataset="image"))`` followed by
``EnsureChannelFirstd`` gives (1, H, W) slices or (1, *spatial) volumes. NIfTI files
(``.nii``/``.nii.gz``, e.g. a datalist from ``sslseg-convert nifti``) are read by MONAI's
``NibabelReader`` in the same place, chosen by suffix, so a bundle takes either. ``CheckSameShaped``
fails loudly when an image and its label disagree or an image holds NaN/Inf.
"""

from __future__ import annotations

from typing import Any, Sequence

import h5py
import numpy as np
from monai.config import KeysCollection, PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from sslseg.errors import InputError, InputKeyError, UnreadableInputError

__all__ = ["H5Reader", "CheckSameShaped", "CheckChannelsd", "BinaryMaskd", "read_array"]

H5_SUFFIXES = ("h5", "hdf5")
NIFTI_SUFFIXES = ("nii", "nii.gz")
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "tif", "tiff")


class H5Reader(ImageReader):
    """Read one dataset (e.g. ``image`` or ``label``) of HDF5 files into numpy arrays; NIfTI
    files (by suffix) are read whole with MONAI's ``NibabelReader`` (float32 unless ``dtype``).

    Args:
        dataset: name of the h5 dataset to read (unused for NIfTI: image and label are files).
        dtype: optional numpy dtype to cast the array to (None keeps the stored dtype).
        kwargs: ignored extra reader arguments (kept for ``LoadImage`` compatibility).

    The returned array has the stored shape, e.g. (H, W) for a slice, (D, H, W) for an ACDC
    volume, (H, W, D) for LA; the meta dict has ``spatial_shape`` = that shape and
    ``original_channel_dim`` = NaN ("no_channel", as MONAI's own readers store it).
    """

    def __init__(self, dataset: str = "image", dtype: Any = None, **kwargs):
        super().__init__()
        self.dataset = dataset
        self.dtype = dtype
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file name ends with ``.h5`` or ``.hdf5`` (MONAI's automatic reader
        choice; given as ``LoadImage``'s reader, NIfTI files are read too)."""
        return is_supported_format(filename, H5_SUFFIXES)

    def _read_nifti(self, name: str) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` of a NIfTI file by ``NibabelReader`` (affine kept in ``meta``)."""
        reader = NibabelReader(**({} if self.dtype is None else {"dtype": self.dtype}))
        try:
            return reader.get_data(reader.read(name))
        except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError...
            raise UnreadableInputError(f"H5Reader: cannot read NIfTI file {name}: {e}") from e

    def _read_one(self, name: PathLike) -> np.ndarray:
        if not is_supported_format(str(name), H5_SUFFIXES):
            raise InputError(
                f"H5Reader: {name} is neither h5 (.h5/.hdf5) nor NIfTI (.nii/.nii.gz); "
                f"convert it (datasets/README.md, sslseg-convert)"
            )
        try:
            f = h5py.File(name, "r")
        except (OSError, ValueError) as e:
            raise UnreadableInputError(
                f"H5Reader: cannot open {name} (missing, corrupt or not HDF5): {e}"
            ) from e
        with f:
            if self.dataset not in f:
                raise InputKeyError(
                    f"H5Reader: {name} has no dataset '{self.dataset}'; "
                    f"datasets present: {sorted(f.keys())}"
                )
            try:
                arr = f[self.dataset][()]
            except (OSError, ValueError, TypeError) as e:
                raise UnreadableInputError(
                    f"H5Reader: cannot read dataset '{self.dataset}' of {name}: {e}"
                ) from e
        if not isinstance(arr, np.ndarray) or arr.ndim == 0:
            raise InputError(f"H5Reader: dataset '{self.dataset}' of {name} is not an array")
        return arr.astype(self.dtype) if self.dtype is not None else arr

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Return the file name(s); the arrays are read in :meth:`get_data`.

        Reading is deferred on purpose: ``LoadImage`` swallows exceptions raised in ``read`` and
        falls back to its default readers (PIL "opens" any HDF5 file and then fails with an
        unrelated message), whereas exceptions from ``get_data`` reach the user unchanged, so a
        missing dataset or a corrupt file is reported by this reader, naming the file.
        """
        names = tuple(str(n) for n in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Read the dataset of the file(s) from :meth:`read`.

        Returns:
            ``(array, meta)``: the stored array, e.g. (H, W), (D, H, W) or (H, W, D); several files
            are stacked on a new first (channel) dim.
        """
        arrays, meta = [], {}
        for name in ensure_tuple(img):
            if is_supported_format(str(name), NIFTI_SUFFIXES):
                arr, header = self._read_nifti(str(name))
            else:
                arr = self._read_one(name)
                header = {
                    MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape),
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
                    MetaKeys.SPACE: SpaceKeys.RAS,
                }
            arrays.append(arr)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta


def read_array(path: PathLike, dataset: str = "label") -> np.ndarray:
    """The array stored in one file, chosen by suffix: ``dataset`` of an h5 file, a NIfTI
    volume (``.nii``/``.nii.gz``, ``dataset`` unused) or a 2D image (PNG, JPEG, TIFF: read by
    PIL, (H, W[, C])). Raises ``InputError`` naming the file."""
    if is_supported_format(str(path), IMAGE_SUFFIXES):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return np.asarray(img)
        except (OSError, ValueError) as e:
            raise UnreadableInputError(f"cannot read image {path}: {e}") from e
    return H5Reader(dataset=dataset).get_data(str(path))[0]


def _source_name(data: dict, key: str) -> str:
    """The file a loaded item came from (MetaTensor meta), else the key."""
    value = data[key]
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict", {}) or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))


class CheckSameShaped(MapTransform):
    """Check that all ``keys`` share one spatial shape and that ``image_key`` is finite.

    Use after ``LoadImaged``/``EnsureChannelFirstd``. Raises ``ValueError`` naming the file(s):
    when spatial shapes (all dims after the first, channel dim) differ, or when the image holds
    NaN or Inf values.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        channel_first: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.channel_first = channel_first

    def __call__(self, data):
        d = dict(data)
        shapes = {}
        for key in self.key_iterator(d):
            shape = tuple(np.shape(d[key]))
            shapes[key] = shape[1:] if self.channel_first else shape
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{k} {s} from {_source_name(d, k)}" for k, s in shapes.items())
            raise InputError(f"CheckSameShaped: spatial shapes differ: {desc}")
        if self.image_key in d:
            img = d[self.image_key]
            arr = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise InputError(
                    f"CheckSameShaped: {_source_name(d, self.image_key)} holds "
                    f"{int(np.isnan(arr).sum())} NaN and {int(np.isinf(arr).sum())} "
                    f"Inf values"
                )
        return d


class CheckChannelsd(MapTransform):
    """Check that each of ``keys`` (channel-first, after ``EnsureChannelFirstd``) has
    ``channels`` channels, e.g. an RGB H&E image: a grayscale (1) or RGBA (4) file raises
    ``InputError`` naming the file and what to do, instead of a shape error inside the network.
    """

    def __init__(self, keys: KeysCollection = "image", channels: int = 3, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            found = int(np.shape(d[key])[0])
            if found != self.channels:
                kind = {1: "grayscale", 2: "grayscale + alpha", 4: "RGBA"}.get(found, "")
                raise InputError(
                    f"CheckChannelsd: {_source_name(d, key)} has {found} channel(s) "
                    f"{f'({kind}) ' if kind else ''}but {self.channels} are expected; convert it "
                    f"(e.g. PIL: Image.open(f).convert('RGB').save(f))"
                )
        return d


class BinaryMaskd(MapTransform):
    """Binary masks as {0, 1}: a {0, 1} mask is kept, a {0, 255} mask mapped to {0, 1}; any other
    values raise ``InputError`` naming the file and the values (use after ``LoadImaged``)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            values = set(np.unique(np.asarray(mask)).tolist())
            if values <= {0, 255} and 255 in values:
                d[key] = mask // 255
            elif not values <= {0, 1}:
                shown = ", ".join(f"{v:g}" for v in sorted(values)[:8])
                raise InputError(
                    f"BinaryMaskd: {_source_name(d, key)} holds {shown}; a binary mask holds "
                    f"{{0, 1}} or {{0, 255}}"
                )
        return d
