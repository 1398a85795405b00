"""ATSO's three-view pieces (``monai_bundles.common.multiview``): context channels, view fusion
(RSTN F1/F2/F3 and majority vote), the batched ``MultiViewInferer`` against the plain per-slice
loop, and the random training slabs of ``RandViewSlabsd``.
"""

import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.data.utils import set_rnd

from monai_bundles.common.inferers import ProbabilityNet, SliceVolumeInferer
from monai_bundles.common.multiview import (
    FUSION_MODES,
    MultiViewInferer,
    RandViewSlabsd,
    context_channels,
    fuse_views,
    per_slice_loop_inference,
)
from sslseg.errors import InputError

AFFINE = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))


class CentreChannel(torch.nn.Module):
    """``(N, C * context, h, w)`` -> ``(N, 1, h, w)``: the centre context channel of image
    channel 0, clamped to [0, 1]: gives the input slice back for an input in [0, 1]."""

    def __init__(self, context: int = 3) -> None:
        super().__init__()
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.context // 2
        return x[:, c : c + 1].clamp(0.0, 1.0)


def _conv_nets(in_channels: int, out_channels: int, n: int) -> torch.nn.ModuleList:
    """``n`` tiny random 2D nets wrapped in ``ProbabilityNet``; zero padding makes the output
    depend on the window position, so misplaced windows or slices would show."""
    torch.manual_seed(0)
    return torch.nn.ModuleList(
        ProbabilityNet(
            torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, 4, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(4, out_channels, 3, padding=1),
            )
        ).eval()
        for _ in range(n)
    )


# ---------------------------------------------------------------- context_channels


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_context_channels_clamps_edges_channel_major(axis):
    x = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(1, 2, 4, 5, 6)
    out = context_channels(x, axis, 3)
    assert out.shape == (1, 6, 4, 5, 6)
    size = x.shape[2 + axis]
    for s in (0, 1, size - 1):  # edges and an inner slice
        for c in range(2):
            for j, src in enumerate((max(s - 1, 0), s, min(s + 1, size - 1))):
                got = out[0, 3 * c + j].select(axis, s)
                want = x[0, c].select(axis, src)
                assert torch.equal(got, want), f"axis {axis} slice {s} channel {c} offset {j}"


def test_context_channels_five_and_one_and_meta():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1, 1)
    out = context_channels(x, 0, 5)
    assert out[0, :, 0, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert out[0, :, 5, 0, 0].tolist() == [3, 4, 5, 5, 5]
    assert context_channels(x, 0, 1) is x
    meta = MetaTensor(torch.rand(1, 2, 3, 4, 5), affine=AFFINE)
    out = context_channels(meta, 2, 3)
    assert isinstance(out, MetaTensor) and out.shape == (1, 6, 3, 4, 5)
    assert torch.equal(out.affine, AFFINE.double())
    with pytest.raises(InputError, match="context_slices"):
        context_channels(x, 0, 2)


# ---------------------------------------------------------------- fuse_views


def _three_views(shape=(1, 1, 6, 7, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    "mode, threshold", [("mean_prob", 1.5), ("union", 0.5), ("intersection", 2.5)]
)
def test_fuse_views_rstn_f1_f2_f3(mode, threshold):
    views = _three_views()
    # exact thresholds on some voxels
    views[0][0, 0, 0, 0, :3], views[1][0, 0, 0, 0, :3] = 0.5, 0.5
    views[2][0, 0, 0, 0, :3] = torch.tensor([threshold - 1.0, 0.0, 1.0]).clamp(0, 1)
    fused = fuse_views(views, mode)
    assert fused.shape == views[0].shape
    assert fused.min() >= 0 and fused.max() <= 1
    total = torch.stack(views).sum(0)
    assert torch.equal(fused >= 0.5, total >= threshold)


def test_fuse_views_vote_differs_from_mean():
    views = [torch.full((1, 1, 1, 1, 1), p) for p in (0.9, 0.45, 0.4)]
    assert fuse_views(views, "mean_prob").item() == pytest.approx(1.75 / 3)
    assert fuse_views(views, "mean_prob").item() >= 0.5
    assert fuse_views(views, "vote").item() == pytest.approx(1 / 3)
    views = [torch.full((1, 1, 1), p) for p in (0.9, 0.6, 0.1)]
    assert fuse_views(views, "vote").item() == pytest.approx(2 / 3)


def test_fuse_views_vote_binary_majority_and_even_tie():
    views = _three_views(seed=1)
    votes = (torch.stack(views) >= 0.5).sum(0)
    assert torch.equal(fuse_views(views, "vote") >= 0.5, votes >= 2)
    two = [torch.tensor([[[0.9, 0.9, 0.1]]]), torch.tensor([[[0.8, 0.2, 0.3]]])]
    assert (fuse_views(two, "vote") >= 0.5).tolist() == [[[True, False, False]]]


def test_fuse_views_multiclass():
    g = torch.Generator().manual_seed(0)
    views = [torch.softmax(torch.randn(2, 4, 5, 6, 3, generator=g), 1) for _ in range(3)]
    mean = fuse_views(views, "mean_prob")
    assert torch.equal(mean.argmax(1), torch.stack(views).mean(0).argmax(1))
    vote = fuse_views(views, "vote")
    assert vote.min() >= 0 and vote.max() <= 1
    torch.testing.assert_close(vote.sum(1), torch.ones(2, 5, 6, 3))
    # plurality of the argmaxes; all three different: the mean probability decides
    a = torch.tensor([0.5, 0.3, 0.2, 0.0]).view(1, 4, 1)
    b = torch.tensor([0.0, 0.6, 0.0, 0.4]).view(1, 4, 1)
    c = torch.tensor([0.0, 0.1, 0.0, 0.9]).view(1, 4, 1)
    assert fuse_views([a, b, b], "vote").argmax(1).item() == 1
    assert fuse_views([a, b, c], "vote").argmax(1).item() == 3  # mean: 0.17, 0.33, 0.07, 0.43
    assert fuse_views([a, b, c], "mean_prob").argmax(1).item() == 3
    for mode in ("union", "intersection"):
        with pytest.raises(InputError, match="fusion"):
            fuse_views(views, mode)


def test_fuse_views_one_view_and_bad_input():
    view = torch.rand(1, 1, 3, 4, 5)
    for mode in FUSION_MODES:
        assert fuse_views([view], mode) is view
    with pytest.raises(InputError, match="fusion"):
        fuse_views([view, view], "max")
    with pytest.raises(InputError, match="fusion"):
        fuse_views([view, view[..., :4]])
    with pytest.raises(InputError, match="fusion"):
        fuse_views([])


# ---------------------------------------------------------------- MultiViewInferer


def test_inferer_identity_network_gives_input_back():
    vol = torch.rand(2, 1, 12, 10, 7)
    nets = torch.nn.ModuleList(CentreChannel() for _ in range(3))
    for axis in range(3):
        inferer = MultiViewInferer(views=(axis,), roi_size=(8, 8), sw_batch_size=5)
        torch.testing.assert_close(inferer(vol, nets[:1]), vol)
    for fusion in ("mean_prob", "vote"):
        out = MultiViewInferer(roi_size=(8, 8), fusion=fusion)(vol, nets)
        assert out.shape == vol.shape
        if fusion == "mean_prob":
            torch.testing.assert_close(out, vol)
        else:
            assert torch.equal(out >= 0.5, vol >= 0.5)


def test_inferer_resize_mode_is_slice_volume_inferer_per_view():
    vol = torch.rand(1, 1, 12, 10, 7)
    nets = _conv_nets(3, 1, 3)
    with torch.no_grad():
        out = MultiViewInferer(roi_size=(8, 8), slice_mode="resize")(vol, nets)
        per_view = [
            SliceVolumeInferer((8, 8), spatial_dim=axis)(context_channels(vol, axis, 3), net)
            for axis, net in enumerate(nets)
        ]
    torch.testing.assert_close(out, torch.stack(per_view).mean(0))


def test_inferer_anisotropic_volume_and_meta():
    vol = MetaTensor(torch.rand(1, 1, 37, 29, 11), affine=AFFINE)
    nets = torch.nn.ModuleList(CentreChannel() for _ in range(3))
    out = MultiViewInferer(roi_size=(16, 16), overlap=0.5)(vol, nets)
    assert isinstance(out, MetaTensor) and out.shape == (1, 1, 37, 29, 11)
    assert torch.equal(out.affine, AFFINE.double())
    torch.testing.assert_close(out.as_tensor(), vol.as_tensor())


@pytest.mark.parametrize("out_channels, fusion", [(1, "mean_prob"), (3, "vote")])
def test_inferer_matches_per_slice_loop(out_channels, fusion):
    torch.manual_seed(1)
    vol = torch.randn(1, 2, 13, 20, 9)
    nets = _conv_nets(2 * 3, out_channels, 3)
    inferer = MultiViewInferer(roi_size=(8, 12), sw_batch_size=7, overlap=0.25, fusion=fusion)
    with torch.no_grad():
        ours = inferer(vol, nets)
    ref = per_slice_loop_inference(nets, vol, (0, 1, 2), 3, (8, 12), 0.25, fusion)
    assert ours.shape == ref.shape == (1, out_channels, 13, 20, 9)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_inferer_2d_input_single_view():
    x = MetaTensor(torch.rand(2, 1, 20, 14), affine=AFFINE)
    nets = _conv_nets(3, 4, 1)
    with torch.no_grad():
        out = MultiViewInferer(views=(0,), roi_size=(16, 16))(x, nets)
        ref = per_slice_loop_inference(nets, x.as_tensor()[:, :, None], (0,), 3, (16, 16))
    assert isinstance(out, MetaTensor) and out.shape == (2, 4, 20, 14)
    torch.testing.assert_close(out.as_tensor(), ref[:, :, 0], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="views"):
        MultiViewInferer(views=(0, 1), roi_size=(16, 16))(x, _conv_nets(3, 4, 2))


def test_inferer_rejects_bad_arguments():
    for kwargs, key in [
        ({"views": ()}, "views"),
        ({"views": (0, 0)}, "views"),
        ({"views": (3,)}, "views"),
        ({"roi_size": (96, 96, 96)}, "slice_size"),
        ({"context": 2}, "context_slices"),
        ({"context": 0}, "context_slices"),
        ({"fusion": "max"}, "fusion"),
        ({"slice_mode": "tile"}, "slice_mode"),
    ]:
        with pytest.raises(InputError, match=key):
            MultiViewInferer(**kwargs)
    with pytest.raises(InputError, match="one network per view"):
        MultiViewInferer()(torch.rand(1, 1, 4, 4, 4), torch.nn.ModuleList([CentreChannel()]))
    with pytest.raises(InputError, match="one network per view"):
        MultiViewInferer()(torch.rand(1, 1, 4, 4, 4), CentreChannel())
    with pytest.raises(InputError, match="one network per view"):
        seq = torch.nn.Sequential(CentreChannel(), torch.nn.Identity(), torch.nn.Identity())
        MultiViewInferer()(torch.rand(1, 1, 4, 4, 4), seq)


# ---------------------------------------------------------------- RandViewSlabsd


def _coordinate_volume(shape):
    """(3, X, Y, Z) image whose channels are the voxel's x, y, z index (+1, so 0 = padding)."""
    grids = torch.meshgrid(
        *(torch.arange(1, n + 1, dtype=torch.float32) for n in shape), indexing="ij"
    )
    return torch.stack(grids)


def _blob_label(shape, corner=(3, 4, 2), size=(2, 2, 2)):
    label = torch.zeros(1, *shape, dtype=torch.int64)
    label[(0, *(slice(c, c + s) for c, s in zip(corner, size)))] = 2
    return label


def test_slabs_shapes_and_centre_label_slice():
    shape, size = (14, 12, 9), (6, 8)
    data = {"image": _coordinate_volume(shape), "label": _blob_label(shape), "name": "case1"}
    t = RandViewSlabsd(
        views=(0, 1, 2), context=3, slice_size=size, num_samples=4, pos_ratio=1.0, window="centred"
    )
    t.set_random_state(0)
    samples = t(data)
    assert isinstance(samples, list) and len(samples) == 4
    for sample in samples:
        assert sample["name"] is data["name"] and "image" not in sample and "label" not in sample
        for axis in range(3):
            img, lab = sample[f"image_v{axis}"], sample[f"label_v{axis}"]
            assert type(img) is torch.Tensor and img.dtype == lab.dtype == torch.float32
            assert img.shape == (9, *size) and lab.shape == (1, *size)
            assert lab.sum() > 0, "pos_ratio 1: the centre voxel is foreground"
            # the slab's channels: coordinate c at slice offsets -1, 0, +1 (channel-major)
            s = int(img[3 * axis + 1, 0, 0]) - 1  # the centre slice index along axis
            n = shape[axis]
            for j, src in enumerate((max(s - 1, 0), s, min(s + 1, n - 1))):
                assert torch.all(img[3 * axis + j] == src + 1)
            # the label is the label of the centre slice at the window's in-plane coordinates
            others = [d for d in range(3) if d != axis]
            p = img[3 * others[0] + 1].long() - 1
            q = img[3 * others[1] + 1].long() - 1
            index = [None, None, None]
            index[axis], index[others[0]], index[others[1]] = torch.full_like(p, s), p, q
            assert torch.equal(lab[0], data["label"][0][tuple(index)].float())
    batch = list_data_collate([samples[:2], samples[2:]])
    assert batch["image_v1"].shape == (4, 9, *size) and batch["label_v2"].shape == (4, 1, *size)


def test_slabs_random_window_on_positive_slices():
    """``window="random"`` (the default): the slab's slice holds foreground (pos_ratio 1), the
    in-plane window lies anywhere inside the slice, not only around the foreground."""
    shape, size = (14, 12, 9), (6, 5)
    label = _blob_label(shape)
    data = {"image": _coordinate_volume(shape), "label": label}
    t = RandViewSlabsd(views=(0, 1, 2), context=1, slice_size=size, num_samples=40)
    t.set_random_state(1)
    starts = {a: set() for a in range(3)}
    for sample in t(data):
        for axis in range(3):
            img = sample[f"image_v{axis}"]
            s = int(img[axis, 0, 0]) - 1  # the slice index along the axis
            assert torch.movedim(label[0], axis, 0)[s].sum() > 0, "a slice with the organ"
            others = [d for d in range(3) if d != axis]
            starts[axis].add((int(img[others[0], 0, 0]) - 1, int(img[others[1], 0, 0]) - 1))
    assert all(len(v) > 5 for v in starts.values()), starts
    with pytest.raises(InputError, match="slice_window"):
        RandViewSlabsd(window="middle")


def test_slabs_reproducible_with_set_random_state():
    shape = (10, 11, 12)
    data = {"image": torch.rand(1, *shape), "label": _blob_label(shape)}
    t = RandViewSlabsd(slice_size=(5, 5), num_samples=3, pos_ratio=0.5)
    outs = []
    for _ in range(2):
        set_rnd(t, 7)
        outs.append([t(data) for _ in range(3)])
    for a, b in zip(*outs):
        for sa, sb in zip(a, b):
            for key in sa:
                assert torch.equal(sa[key], sb[key]), key
    t.set_random_state(8)
    other = t(data)
    assert any(not torch.equal(x[k], y[k]) for x, y in zip(outs[0][0], other) for k in x)


def test_slabs_pad_small_volume_and_context_one():
    image = torch.ones(1, 3, 4, 5)
    label = torch.ones(1, 3, 4, 5)
    t = RandViewSlabsd(views=(0, 2), context=1, slice_size=(8, 7))
    sample = t(
        {"image": MetaTensor(image, affine=AFFINE), "label": MetaTensor(label, affine=AFFINE)}
    )[0]
    img0, lab0 = sample["image_v0"], sample["label_v0"]
    assert type(img0) is torch.Tensor and img0.shape == lab0.shape == (1, 8, 7)
    # (4, 5) slice padded symmetrically to (8, 7): rows 2..5, columns 1..5
    want = torch.zeros(8, 7)
    want[2:6, 1:6] = 1
    assert torch.equal(img0[0], want) and torch.equal(lab0[0], want)
    want = torch.zeros(8, 7)
    want[2:5, 1:5] = 1  # the (3, 4) slice of axis 2
    assert torch.equal(sample["image_v2"][0], want)


def test_slabs_2d_slice_input():
    image = torch.rand(2, 20, 16)
    label = torch.zeros(1, 20, 16, dtype=torch.uint8)
    label[0, 5:7, 9:11] = 3
    t = RandViewSlabsd(views=(0,), slice_size=(8, 8), num_samples=2, window="centred")
    for sample in t({"image": image, "label": label}):
        img, lab = sample["image_v0"], sample["label_v0"]
        assert img.shape == (6, 8, 8) and lab.shape == (1, 8, 8) and lab.sum() > 0
        # one slice: the three context channels of each image channel are the same
        assert torch.equal(img[0], img[1]) and torch.equal(img[3], img[5])
    with pytest.raises(InputError, match="views"):
        RandViewSlabsd(views=(0, 1))({"image": image, "label": label})


def test_slabs_empty_label_fallback_and_bad_arguments():
    shape = (6, 7, 8)
    data = {"image": torch.rand(1, *shape), "label": torch.zeros(1, *shape)}
    t = RandViewSlabsd(slice_size=(4, 4), num_samples=2, pos_ratio=1.0)
    samples = t(data)
    assert len(samples) == 2 and t.empty_fallbacks == 6
    assert all(s[f"label_v{a}"].sum() == 0 for s in samples for a in range(3))
    t = RandViewSlabsd(keys=("image", "label"), slice_size=(4, 4), allow_missing_keys=True)
    sample = t({"image": data["image"]})[0]
    assert set(sample) == {"image_v0", "image_v1", "image_v2"} and t.empty_fallbacks == 0
    for kwargs, key in [
        ({"views": (0, 4)}, "views"),
        ({"context": 4}, "context_slices"),
        ({"slice_size": (4,)}, "slice_size"),
        ({"slice_size": (4, 0)}, "slice_size"),
        ({"num_samples": 0}, "num_samples"),
        ({"pos_ratio": 1.5}, "slice_pos_ratio"),
    ]:
        with pytest.raises(InputError, match=key):
            RandViewSlabsd(**kwargs)
    with pytest.raises(InputError, match="label"):
        RandViewSlabsd(slice_size=(4, 4))({"image": data["image"], "label": torch.zeros(1, 6, 7)})


def test_inferer_volume_mode_is_one_3d_sliding_window():
    """``slice_mode="volume"``: one 3D network by SlidingWindowInferer (the 3D option)."""
    from monai.inferers import SlidingWindowInferer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.Softmax(dim=1)).eval()
    x = torch.rand(1, 1, 20, 18, 9)
    inferer = MultiViewInferer(views=(0,), context=1, roi_size=(8, 8, 8), slice_mode="volume")
    with torch.no_grad():
        got = inferer(x, torch.nn.ModuleList([net]))
        want = SlidingWindowInferer((8, 8, 8), sw_batch_size=16, overlap=0.25)(x, net)
    torch.testing.assert_close(got, want)
    with pytest.raises(InputError, match="views"):
        MultiViewInferer(views=(0, 1), context=1, roi_size=(8, 8, 8), slice_mode="volume")
    with pytest.raises(InputError, match="slice_size"):
        MultiViewInferer(views=(0,), context=1, roi_size=(8, 8), slice_mode="volume")
