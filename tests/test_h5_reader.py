"""H5Reader in LoadImaged and the CheckSameShaped checks."""

import h5py
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from monai_bundles.common.readers import CheckSameShaped, H5Reader


def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return str(path)


def _loader(image_ds="image", label_ds="label"):
    """The pipeline a bundle uses; ``Compose`` wraps errors, so failure tests use ``_apply``."""
    return Compose(_transforms(image_ds, label_ds))


def _apply(data):
    """Run the transforms one by one so the reader's own exception reaches pytest.raises."""
    for t in _transforms():
        data = t(data)
    return data


def _transforms(image_ds="image", label_ds="label"):
    return [
        LoadImaged(keys="image", reader=H5Reader(dataset=image_ds)),
        LoadImaged(keys="label", reader=H5Reader(dataset=label_ds), dtype=None),
        EnsureChannelFirstd(keys=("image", "label")),
        CheckSameShaped(keys=("image", "label")),
    ]


def test_load_volume(tmp_path):
    img = np.random.default_rng(0).random((5, 12, 10)).astype(np.float32)
    lab = (img > 0.5).astype(np.uint8)
    f = _h5(tmp_path / "vol.h5", image=img, label=lab)
    d = _loader()({"image": f, "label": f})
    assert tuple(d["image"].shape) == (1, 5, 12, 10) and d["image"].dtype.is_floating_point
    assert str(d["label"].dtype) == "torch.uint8"
    np.testing.assert_array_equal(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    assert d["image"].meta["filename_or_obj"] == f
    assert list(d["image"].meta["spatial_shape"]) == [5, 12, 10]


def test_reader_direct_and_dtype(tmp_path):
    f = _h5(tmp_path / "s.hdf5", label=np.ones((4, 6), np.uint8))
    reader = H5Reader(dataset="label", dtype=np.float32)
    assert reader.verify_suffix(f) and not reader.verify_suffix("x.nii.gz")
    arr, meta = reader.get_data(reader.read(f))
    assert (
        arr.shape == (4, 6) and arr.dtype == np.float32 and np.isnan(meta["original_channel_dim"])
    )


def test_missing_dataset_names_file_and_keys(tmp_path):
    f = _h5(tmp_path / "only_img.h5", image=np.zeros((4, 4), np.float32), extra=np.zeros(2))
    with pytest.raises(KeyError) as err:
        _apply({"image": f, "label": f})
    assert "only_img.h5" in str(err.value) and "['extra', 'image']" in str(err.value)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match="broken.h5"):
        LoadImaged(keys="image", reader=H5Reader())({"image": str(bad)})


def test_shape_mismatch(tmp_path):
    f = _h5(tmp_path / "img.h5", image=np.zeros((4, 4), np.float32))
    g = _h5(tmp_path / "lab.h5", label=np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"spatial shapes differ.*img\.h5.*lab\.h5"):
        _apply({"image": f, "label": g})


def test_nan_image(tmp_path):
    img = np.zeros((4, 4), np.float32)
    img[1, 2] = np.nan
    f = _h5(tmp_path / "nan.h5", image=img, label=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"nan\.h5 holds 1 NaN"):
        _apply({"image": f, "label": f})


def test_compose_keeps_the_cause(tmp_path):
    f = _h5(tmp_path / "img.h5", image=np.zeros((4, 4), np.float32))
    g = _h5(tmp_path / "lab.h5", label=np.zeros((3, 4), np.uint8))
    with pytest.raises(RuntimeError) as err:
        _loader()({"image": f, "label": g})
    assert "lab.h5" in str(err.value.__cause__)
