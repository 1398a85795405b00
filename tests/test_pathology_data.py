"""Pathology (CDMA) data: GlaS datalist and stratified draw, DigestPath tiling
(``sslseg.datasets.pathology``), PNG reading and checks (``monai_bundles.common.readers``,
``datalist.check_labels``) and overlays (``monai_bundles.common.overlay``)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from monai.data import PILReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from monai_bundles.common.datalist import check_labels, datalist_split
from monai_bundles.common.overlay import SaveOverlayd, overlay_rgb
from monai_bundles.common.readers import BinaryMaskd, CheckChannelsd, read_array
from sslseg.datasets.io_utils import read_image
from sslseg.datasets.pathology import (
    convert_digestpath,
    glas_datalist,
    is_blank_tile,
    stratified_choice,
    tile_starts,
)
from sslseg.errors import InputError, MissingInputError

GLAS_HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"


def _png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _load(path, keys=("image",)):
    """A PNG as the CDMA configs load it: ``LoadImaged(PILReader)`` + ``EnsureChannelFirstd``."""
    transform = Compose([LoadImaged(keys, reader=PILReader()), EnsureChannelFirstd(keys)])
    return transform({k: str(path) for k in keys})


# ----------------------------------------------------------------------------- GlaS
def test_stratified_choice_proportional_groups():
    names = [f"img_{i}" for i in range(85)]  # not in sorted order: img_10 < img_2
    groups = {n: "benign" if i % 7 < 3 else "malignant" for i, n in enumerate(names)}
    counts = {g: sum(v == g for v in groups.values()) for g in ("benign", "malignant")}
    assert counts == {"benign": 37, "malignant": 48}, f"fixture groups {counts}"
    chosen = stratified_choice(names, groups, 8, seed=0)
    got = {g: sum(groups[n] == g for n in chosen) for g in counts}
    # 8 * 37/85 = 3.48, 8 * 48/85 = 4.52: floors 3 + 4, the one left to the larger remainder
    assert got == {"benign": 3, "malignant": 5}, f"group sizes {got}"
    assert len(set(chosen)) == 8, f"chosen {chosen}"
    assert chosen == [n for n in names if n in set(chosen)], f"not in names order: {chosen}"
    assert chosen == stratified_choice(names, groups, 8, seed=0), "same seed, other result"
    assert chosen != stratified_choice(names, groups, 8, seed=1), "the seed is ignored"
    assert stratified_choice(names, groups, 85, seed=3) == names
    for n in (1, 17, 42):
        sizes = [
            sum(groups[c] == g for c in stratified_choice(names, groups, n, 0)) for g in counts
        ]
        exact = [n * counts[g] / 85 for g in counts]
        assert sum(sizes) == n and all(
            abs(s - e) < 1 for s, e in zip(sizes, exact)
        ), f"n={n}: sizes {sizes}, shares {exact}"


def _glas(root: Path, benign=6, malignant=4, test=3) -> Path:
    """A GlaS folder as staged: train/ and testB/ images with masks, grade.csv."""
    rows = [GLAS_HEADER]
    img = np.full((8, 12, 3), 128, np.uint8)
    mask = np.zeros((8, 12), np.uint8)
    for i in range(1, benign + malignant + 1):
        _png(root / "train" / f"train_{i}.png", img)
        _png(root / "train" / f"train_{i}_mask.png", mask)
        grade = " benign, healthy" if i <= benign else " malignant, adenocarcinoma"
        rows.append(f"train_{i},{i},{grade}")
    for i in range(1, test + 1):
        _png(root / "testB" / f"testB_{i}.png", img)
        _png(root / "testB" / f"testB_{i}_mask.png", mask)
        rows.append(f"testB_{i},{20 + i}, malignant, adenocarcinoma")
    (root / "grade.csv").write_text("\n".join(rows) + "\n")
    return root


def test_glas_datalist_splits(tmp_path):
    root = _glas(tmp_path / "glas")
    dl = glas_datalist(root, labeled=5, seed=0)
    assert set(dl) >= {"labeled", "unlabeled", "validation", "test"}, sorted(dl)
    assert (len(dl["labeled"]), len(dl["unlabeled"])) == (5, 5), {k: len(v) for k, v in dl.items()}
    labeled = [Path(d["image"]).stem for d in dl["labeled"]]
    unlabeled = [Path(d["image"]).stem for d in dl["unlabeled"]]
    assert not set(labeled) & set(unlabeled), f"in both: {set(labeled) & set(unlabeled)}"
    assert set(labeled) | set(unlabeled) == {f"train_{i}" for i in range(1, 11)}
    benign = sum(int(n.split("_")[1]) <= 6 for n in labeled)
    assert benign == 3, f"{benign} benign of {labeled} (5 of 6 benign + 4 malignant: 3 + 2)"
    assert all(set(d) == {"image"} for d in dl["unlabeled"]), dl["unlabeled"]
    for item in dl["labeled"] + dl["validation"]:
        assert item["label"] == item["image"].replace(".png", "_mask.png"), item
        for key in ("image", "label"):
            assert (root / item[key]).is_file(), f"{item[key]} is not relative to {root}"
    assert dl["validation"] == dl["test"] and len(dl["test"]) == 3, dl["test"]
    assert all(d["image"].startswith("testB/") for d in dl["test"]), dl["test"]
    assert dl == glas_datalist(root, labeled=5, seed=0), "not reproducible"
    other = [glas_datalist(root, labeled=5, seed=s)["labeled"] for s in range(1, 6)]
    assert any(o != dl["labeled"] for o in other), "the seed changes nothing"
    assert json.loads(json.dumps(dl)) == dl, "not json-serialisable"


def test_glas_datalist_all_labeled(tmp_path):
    dl = glas_datalist(_glas(tmp_path / "glas"), labeled="all")
    assert len(dl["labeled"]) == 10 and dl["unlabeled"] == [], {k: len(v) for k, v in dl.items()}


@pytest.mark.parametrize("labeled", [0, 11, -1, "8", "ALL", 2.5, None])
def test_glas_datalist_bad_labeled(tmp_path, labeled):
    with pytest.raises(InputError, match=r"labeled must be 'all' or an int in 1\.\.10"):
        glas_datalist(_glas(tmp_path / "glas"), labeled=labeled)


def test_glas_datalist_missing_mask_and_grade(tmp_path):
    root = _glas(tmp_path / "glas")
    (root / "train" / "train_3_mask.png").unlink()
    with pytest.raises(MissingInputError, match=r"train_3\.png"):
        glas_datalist(root, labeled=4)

    root = _glas(tmp_path / "glas2")
    lines = (root / "grade.csv").read_text().splitlines()
    (root / "grade.csv").write_text("\n".join(ln for ln in lines if not ln.startswith("train_4,")))
    with pytest.raises(InputError, match=r"grade\.csv has no row .*train_4"):
        glas_datalist(root, labeled=4)

    (root / "grade.csv").write_text("image,grade\ntrain_1,benign\n")
    with pytest.raises(InputError, match="header"):
        glas_datalist(root, labeled=4)
    (root / "grade.csv").unlink()
    with pytest.raises(MissingInputError, match=r"grade\.csv"):
        glas_datalist(root, labeled=4)
    with pytest.raises(MissingInputError, match="testA"):
        glas_datalist(_glas(tmp_path / "glas3"), labeled=4, test_split="testA")


# ----------------------------------------------------------------------------- DigestPath
@pytest.mark.parametrize(
    "length, tile, expected",
    [(600, 256, [0, 256, 344]), (256, 256, [0]), (100, 256, [0]), (512, 256, [0, 256])]
    + [(513, 256, [0, 256, 257]), (150, 64, [0, 64, 86]), (100, 64, [0, 36])],
)
def test_tile_starts(length, tile, expected):
    got = tile_starts(length, tile)
    assert got == expected, f"tile_starts({length}, {tile}) = {got}, expected {expected}"


def test_is_blank_tile():
    assert is_blank_tile(np.full((8, 8, 3), 255, np.uint8))
    assert is_blank_tile(np.full((8, 8, 3), 200, np.uint8)), "the threshold is inclusive"
    assert not is_blank_tile(np.full((8, 8, 3), 199, np.uint8))
    tissue = np.full((8, 8, 3), (180, 90, 150), np.uint8)
    assert not is_blank_tile(tissue), "pink tissue taken for background"
    one_channel = np.full((8, 8, 3), 250, np.uint8)
    one_channel[..., 1] = 150
    assert not is_blank_tile(one_channel), "every channel must be near white"
    half = np.full((8, 8, 3), 255, np.uint8)
    half[:, :4] = 100  # mean 177.5
    assert not is_blank_tile(half) and is_blank_tile(half, low=170.0)


def _digestpath_image(rng, h=100, w=150, tissue_cols=64):
    """RGB uint8: noisy pink tissue in the first ``tissue_cols`` columns, white elsewhere."""
    img = np.full((h, w, 3), 255, np.uint8)
    noise = rng.integers(-20, 21, (h, tissue_cols, 3))
    img[:, :tissue_cols] = np.clip(np.array([180, 90, 150]) + noise, 0, 255).astype(np.uint8)
    return img


def fake_digestpath(root: Path):
    """Fake DigestPath: JPEG images + 0/255 JPEG masks, the reference's csv split lists."""
    rng = np.random.default_rng(0)
    src, lists = root / "tissue-train-pos-v1", root / "lists"
    src.mkdir(parents=True), lists.mkdir()
    for name in ("a", "b", "c", "d", "val1", "test1"):
        img = _digestpath_image(rng)
        mask = np.zeros(img.shape[:2], np.uint8)
        mask[20:70, 10:50] = 255
        assert cv2.imwrite(str(src / f"{name}.jpg"), img[..., ::-1])
        assert cv2.imwrite(str(src / f"{name}_mask.jpg"), mask)
    (lists / "train_100.csv").write_text("image\na.jpg\nb.jpg\nc.jpg\nd.jpg\n")
    (lists / "train_5.csv").write_text("image\nsome/dir/a.jpg\n\n")
    (lists / "valid.csv").write_text("image\nval1.jpg\n")
    (lists / "test.csv").write_text("image\ntest1.jpg\n")
    return src, lists


def test_convert_digestpath(tmp_path):
    src, lists = fake_digestpath(tmp_path / "digestpath")
    out = tmp_path / "out"
    path = convert_digestpath(src, lists, out, tile=64)
    assert Path(path) == out / "datalist.json", path
    dl = json.loads(Path(path).read_text())
    # 100 x 150 -> starts [0, 36] x [0, 64, 86]; only the x = 0 tiles hold tissue
    sizes = {k: len(dl[k]) for k in ("labeled", "unlabeled", "validation", "test")}
    assert sizes == {"labeled": 2, "unlabeled": 6, "validation": 1, "test": 1}, sizes
    for item in dl["labeled"] + dl["unlabeled"] + dl["validation"] + dl["test"]:
        for key in ("image", "label"):
            if key in item:
                assert (out / item[key]).is_file(), f"{item[key]} is not relative to {out}"
    tiles = sorted(p.name for p in (out / "tiles").glob("*.png"))
    assert len(tiles) == 2 * 2 + 6, f"written tiles {tiles}"
    assert all("_64.png" not in t and "_86" not in t for t in tiles), f"blank tiles kept {tiles}"

    assert {Path(d["image"]).name.split("_")[0] for d in dl["labeled"]} == {"a"}, dl["labeled"]
    unlabeled = {Path(d["image"]).name.split("_")[0] for d in dl["unlabeled"]}
    assert unlabeled == {"b", "c", "d"}, f"unlabeled tiles from {unlabeled}"
    assert all(set(d) == {"image"} for d in dl["unlabeled"]), dl["unlabeled"]
    source_mask = read_image(src / "a_mask.jpg") > 128
    source = read_image(src / "a.jpg")
    for item in dl["labeled"]:
        y, x = (int(v) for v in Path(item["image"]).stem.split("_")[1:3])
        tile, mask = read_image(out / item["image"]), read_image(out / item["label"])
        assert tile.shape == (64, 64, 3) and mask.shape == (64, 64), (tile.shape, mask.shape)
        assert np.array_equal(tile, source[y : y + 64, x : x + 64]), f"{item['image']} pixels"
        assert set(np.unique(mask).tolist()) == {0, 1}, f"{item['label']}: {np.unique(mask)}"
        assert np.array_equal(mask, source_mask[y : y + 64, x : x + 64]), item["label"]
    for split in ("validation", "test"):
        item = dl[split][0]
        image, mask = read_image(out / item["image"]), read_image(out / item["label"])
        assert image.shape == (100, 150, 3), f"{split} image {image.shape}: not whole"
        assert mask.shape == (100, 150) and set(np.unique(mask).tolist()) == {0, 1}, split


def test_convert_digestpath_bad_inputs(tmp_path):
    src, lists = fake_digestpath(tmp_path / "digestpath")
    (lists / "train_5.csv").write_text("image\nmissing.jpg\n")
    (lists / "train_100.csv").write_text("image\na.jpg\nmissing.jpg\n")
    with pytest.raises(MissingInputError, match="missing"):
        convert_digestpath(src, lists, tmp_path / "out1", tile=64)
    cv2.imwrite(str(src / "white.jpg"), np.full((100, 150, 3), 255, np.uint8))
    cv2.imwrite(str(src / "white_mask.jpg"), np.zeros((100, 150), np.uint8))
    (lists / "train_5.csv").write_text("image\nwhite.jpg\n")
    (lists / "train_100.csv").write_text("image\nwhite.jpg\nb.jpg\n")
    with pytest.raises(InputError, match=r"no labeled tile.*train_5\.csv"):
        convert_digestpath(src, lists, tmp_path / "out2", tile=64)
    (lists / "valid.csv").unlink()
    (lists / "train_5.csv").write_text("image\nb.jpg\n")
    with pytest.raises(MissingInputError, match=r"valid\.csv"):
        convert_digestpath(src, lists, tmp_path / "out3", tile=64)


# ----------------------------------------------------------------------------- readers
def test_read_array_reads_png(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (7, 11), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    assert np.array_equal(read_array(_png(tmp_path / "gray.png", gray)), gray)
    assert np.array_equal(read_array(_png(tmp_path / "rgb.png", rgb)), rgb)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png"):
        read_array(tmp_path / "broken.png")


def test_check_channels(tmp_path):
    check = CheckChannelsd("image", channels=3)
    rgb = _load(_png(tmp_path / "rgb.png", np.zeros((6, 9, 3))))
    assert check(rgb)["image"].shape == (3, 9, 6)
    for name, array, kind in (
        ("gray.png", np.zeros((6, 9)), "grayscale"),
        ("rgba.png", np.zeros((6, 9, 4)), "RGBA"),
    ):
        data = _load(_png(tmp_path / name, array))
        with pytest.raises(InputError, match=rf"{name}.*\({kind}\).*3 are expected") as info:
            check(data)
        assert str(tmp_path / name) in str(info.value), f"file not named: {info.value}"


def test_binary_mask(tmp_path):
    mask = np.zeros((6, 9), np.uint8)
    mask[2:4, 3:7] = 255
    d = BinaryMaskd("label")(_load(_png(tmp_path / "m255.png", mask), keys=("label",)))
    assert np.array_equal(np.asarray(d["label"][0]).T, mask // 255), "{0, 255} not mapped"
    d = BinaryMaskd("label")(_load(_png(tmp_path / "m01.png", mask // 255), keys=("label",)))
    assert np.array_equal(np.asarray(d["label"][0]).T, mask // 255), "{0, 1} not kept"
    zeros = BinaryMaskd("label")({"label": np.zeros((1, 3, 3))})["label"]
    assert np.array_equal(zeros, np.zeros((1, 3, 3))), "an empty mask changed"
    bad = mask // 255
    bad[0, 0] = 2
    data = _load(_png(tmp_path / "m012.png", bad), keys=("label",))
    with pytest.raises(InputError, match=r"m012\.png holds 0, 1, 2"):
        BinaryMaskd("label")(data)


def test_check_labels_accept_255(tmp_path):
    mask = np.zeros((6, 9), np.uint8)
    mask[1:3, 2:5] = 255
    m255 = str(_png(tmp_path / "m255.png", mask))
    m128 = str(_png(tmp_path / "m128.png", mask // 255 * 128))
    m01 = str(_png(tmp_path / "m01.png", mask // 255))
    check_labels([{"label": m255}, {"label": m01}], 2, "test", accept_255=True)
    with pytest.raises(InputError, match=r"m128\.png holds 128"):
        check_labels([{"label": m128}], 2, "test", accept_255=True)
    with pytest.raises(InputError, match=r"m255\.png holds 255"):
        check_labels([{"label": m255}], 2, "test")
    with pytest.raises(InputError, match=r"m255\.png holds 255"):
        check_labels([{"label": m255}], 3, "test", accept_255=True)  # only for two classes
    image = str(_png(tmp_path / "img.png", np.zeros((6, 9, 3))))
    datalist = {"labeled": [{"image": "img.png", "label": "m255.png"}]}
    items = datalist_split(datalist, "labeled", str(tmp_path), num_classes=2, accept_255=True)
    assert items == [{"image": image, "label": m255}], items
    with pytest.raises(InputError, match=r"m255\.png"):
        datalist_split(datalist, "labeled", str(tmp_path), num_classes=2)


# ----------------------------------------------------------------------------- overlays
def _image_and_mask(h=20, w=30):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[0, 0], image[0, 1] = 0, 255  # full range: the min-max scaling is the identity
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 4:14] = 1
    return image, mask


def test_overlay_rgb():
    image, mask = _image_and_mask()
    out = overlay_rgb(image, mask, color=(255, 40, 40), alpha=0.35)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8, (out.shape, out.dtype)
    bg = mask == 0
    assert np.array_equal(out[bg], image[bg]), "background changed"
    inner = np.zeros_like(mask)
    inner[6:14, 5:13] = 1  # the foreground less its outline
    tinted = np.round(0.65 * image.astype(np.float32) + 0.35 * np.array([255, 40, 40]))
    assert np.abs(out[inner > 0].astype(int) - tinted[inner > 0]).max() <= 1, "not tinted"
    outline = (mask > 0) & (inner == 0)
    assert (out[outline] == (255, 40, 40)).all(), "outline not drawn in the colour"
    scaled = overlay_rgb(image.astype(np.float32) / 255.0 * 4 - 2, np.zeros_like(mask))
    assert np.abs(scaled.astype(int) - image).max() <= 1, "min-max scaling of a float image"


def test_save_overlay_of_a_non_square_pil_image(tmp_path):
    image, mask = _image_and_mask(h=20, w=30)
    data = _load(_png(tmp_path / "case_01.png", image))
    assert data["image"].shape == (3, 30, 20), f"PILReader gave {tuple(data['image'].shape)}"
    data["pred"] = mask.T[None].astype(np.float32)  # (1, W, H) as the loaded image
    out_dir = tmp_path / "overlays"
    returned = SaveOverlayd("image", "pred", output_dir=str(out_dir))(data)
    assert returned["pred"] is data["pred"], "the prediction was replaced"
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["case_01_overlay.png"], f"wrote {written}"
    overlay = read_image(out_dir / "case_01_overlay.png")
    assert overlay.shape == (20, 30, 3), f"overlay {overlay.shape}, source (20, 30, 3)"
    assert np.array_equal(overlay, overlay_rgb(image, mask)), "overlay differs (orientation?)"
    assert np.array_equal(overlay[mask == 0], image[mask == 0]), "background changed"
