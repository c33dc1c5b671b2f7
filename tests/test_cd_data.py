"""Change detection data: synthetic generator, split lists, PNG/GeoTIFF pair reader, datasets, paired augmentation."""
import json
import os

import numpy as np
import pytest
import rasterio
from PIL import Image
from affine import Affine

from tasks.change_detection import make_splits, synthetic
from tasks.change_detection.data import EvalPairs, LabeledPairs, PairAugment, UnlabeledPairs
from tasks.change_detection.raster_io import read_image, read_label, read_pair
from tasks.change_detection.synthetic import ensure_synthetic_cd
from unimatch.data import RepeatDataset
from unimatch.errors import DataError

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)


def write_tif(path, array, crs=CRS, transform=TRANSFORM, nodata=None):
    count, height, width = array.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=array.dtype.name,
                   crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def write_png(path, array):
    Image.fromarray(array).save(path)
    return path


def make_pair_root(root, names, size=(40, 48), seed=0):
    """A/ B/ label/ PNG tiles with random content and a 0/255 label."""
    rng = np.random.default_rng(seed)
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        write_png(root / "A" / name, rng.integers(0, 256, size + (3,), dtype=np.uint8))
        write_png(root / "B" / name, rng.integers(0, 256, size + (3,), dtype=np.uint8))
        write_png(root / "label" / name, (rng.random(size) < 0.2).astype(np.uint8) * 255)
    (root / "list.txt").write_text("".join(f"{n}\n" for n in names))
    return root


# ---- synthetic generator ----------------------------------------------------------------------

def test_synthetic_dataset_has_official_layout_and_is_written_once(tmp_path):
    root = ensure_synthetic_cd(tmp_path / "syn", n_train=20, n_val=4, n_test=4, tile=32, seed=3)
    names = sorted(p.name for p in (root / "A").iterdir())
    assert len(names) == 28
    for folder in ("B", "label"):
        assert sorted(p.name for p in (root / folder).iterdir()) == names
    labels = np.stack([np.asarray(Image.open(root / "label" / n)) for n in names])
    assert set(np.unique(labels)) <= {0, 255} and (labels == 255).any()
    image_a = np.asarray(Image.open(root / "A" / names[0]))
    assert image_a.shape == (32, 32, 3) and image_a.dtype == np.uint8

    splits = {s: (root / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [20, 4, 4]
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    for percent, count in (("5%", 1), ("10%", 2), ("20%", 4), ("40%", 8)):
        labeled = (root / "splits" / percent / "labeled.txt").read_text().split()
        unlabeled = (root / "splits" / percent / "unlabeled.txt").read_text().split()
        assert len(labeled) == count and sorted(labeled + unlabeled) == sorted(splits["train"])
    assert json.loads((root / "meta.json").read_text())["tile"] == 32

    stamp = os.stat(root / "A" / names[0]).st_mtime_ns
    assert ensure_synthetic_cd(tmp_path / "syn", n_train=20, n_val=4, n_test=4, tile=32, seed=3) == root
    assert os.stat(root / "A" / names[0]).st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]
    with pytest.raises(DataError, match="generated with"):
        ensure_synthetic_cd(tmp_path / "syn", n_train=21, n_val=4, n_test=4, tile=32, seed=3)


def test_synthetic_generation_is_deterministic_and_changes_are_not_only_labelled(tmp_path):
    first = ensure_synthetic_cd(tmp_path / "one", n_train=4, n_val=1, n_test=1, tile=64, seed=1)
    second = ensure_synthetic_cd(tmp_path / "two", n_train=4, n_val=1, n_test=1, tile=64, seed=1)
    for folder in ("A", "B", "label"):
        for path in (first / folder).iterdir():
            assert path.read_bytes() == (second / folder / path.name).read_bytes()
    image_a = np.asarray(Image.open(first / "A" / "synth_00000.png")).astype(float)
    image_b = np.asarray(Image.open(first / "B" / "synth_00000.png")).astype(float)
    unchanged = np.asarray(Image.open(first / "label" / "synth_00000.png")) == 0
    assert np.abs(image_a - image_b)[unchanged].mean() > 5  # illumination/season/jitter are not change


def test_synthetic_generation_interrupted_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_render = synthetic.render_pair

    def failing_render(rng, tile, spec):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_render(rng, tile, spec)

    monkeypatch.setattr(synthetic, "render_pair", failing_render)
    with pytest.raises(RuntimeError):
        ensure_synthetic_cd(tmp_path / "syn", n_train=4, n_val=1, n_test=1, tile=32)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_default_root_is_in_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path))
    root = ensure_synthetic_cd(n_train=2, n_val=1, n_test=1, tile=32)
    assert root.parent == tmp_path / "change_detection" and root.name.startswith("synthetic-v2-")


# ---- make_splits ------------------------------------------------------------------------------

def test_make_splits_is_deterministic_and_never_overwrites(tmp_path):
    names = [f"t_{i:03d}.png" for i in range(40)]
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("\n".join(names) + "\n")
    labeled_path, unlabeled_path = make_splits.write_splits(tmp_path, 0.1, seed=4)
    assert labeled_path == tmp_path / "splits" / "10%" / "labeled.txt"
    labeled = labeled_path.read_text().split()
    unlabeled = unlabeled_path.read_text().split()
    assert len(labeled) == 4 and sorted(labeled + unlabeled) == names and labeled == sorted(labeled)

    assert make_splits.main(["--data-root", str(tmp_path), "--fraction", "0.1", "--seed", "4"]) == 2
    assert make_splits.main(["--data-root", str(tmp_path), "--fraction", "0.1", "--seed", "4",
                             "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "labeled.txt").read_text().split() == labeled
    assert make_splits.main(["--data-root", str(tmp_path), "--fraction", "0.1", "--seed", "5", "--overwrite"]) == 0
    assert labeled_path.read_text().split() != labeled


def test_make_splits_lists_A_folder_without_train_list(tmp_path):
    make_pair_root(tmp_path, [f"p{i}.png" for i in range(10)], size=(8, 8))
    labeled, unlabeled = make_splits.write_splits(tmp_path, 0.05, seed=0, out_dir=tmp_path / "out")
    assert len(labeled.read_text().split()) == 1 and len(unlabeled.read_text().split()) == 9
    with pytest.raises(DataError, match="already exist"):
        make_splits.write_splits(tmp_path, 0.05, seed=0, out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="fraction"):
        make_splits.choose_labeled(["a"], 1.5, 0)


# ---- pair reader ------------------------------------------------------------------------------

def test_read_pair_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgba)
    write_png(tmp_path / "b.png", rgba)
    image_a, image_b = read_pair(tmp_path / "a.png", tmp_path / "b.png")
    assert image_a.dtype == np.uint8 and image_a.shape == (3, 20, 24)
    np.testing.assert_array_equal(image_a, np.moveaxis(rgba[..., :3], -1, 0))
    np.testing.assert_array_equal(image_a, image_b)
    smooth = np.stack(np.broadcast_arrays(*np.ogrid[0:200:10, 0:240:10], 100), -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    jpeg, _ = read_image(tmp_path / "a.jpg")
    assert jpeg.shape == (3, 20, 24) and np.abs(jpeg.astype(int) - np.moveaxis(smooth, -1, 0)).mean() < 3


def test_read_pair_geotiff_band_selection_and_uint16_rules(tmp_path):
    ramp = np.arange(100 * 120, dtype=np.uint16).reshape(100, 120)
    bands = np.stack([ramp, ramp * 0 + 7, ramp // 2, ramp // 4])
    write_tif(tmp_path / "a.tif", bands)
    write_tif(tmp_path / "b.tif", bands)
    image_a, image_b = read_pair(tmp_path / "a.tif", tmp_path / "b.tif", bands=(4, 3, 1), stretch=16)
    assert image_a.shape == (3, 100, 120) and image_a.dtype == np.uint8
    np.testing.assert_array_equal(image_a[2], np.clip(np.floor(ramp / 16 + 0.5), 0, 255))
    np.testing.assert_array_equal(image_a[0], np.clip(np.floor(ramp // 4 / 16 + 0.5), 0, 255))

    stretched, _ = read_image(tmp_path / "a.tif", bands=(1,), stretch="percentile")
    low, high = np.percentile(ramp, (2, 98))
    expected = np.clip(np.floor((ramp - low) * 255 / (high - low) + 0.5), 0, 255)
    assert np.abs(stretched[0].astype(float) - expected).max() <= 1
    assert (stretched[0] == 0).mean() == pytest.approx(0.02, abs=0.005)
    assert (stretched[0] == 255).mean() == pytest.approx(0.02, abs=0.005)

    with pytest.raises(DataError, match="bands"):
        read_image(tmp_path / "a.tif", bands=(5,))


def test_geotiff_nodata_is_excluded_and_written_as_zero(tmp_path):
    data = np.full((1, 10, 10), 1000, np.uint16)
    data[0, :, 5:] = 3000
    data[0, 0, 0] = 0
    write_tif(tmp_path / "n.tif", data, nodata=0)
    image, _ = read_image(tmp_path / "n.tif", bands=(1,), stretch="percentile")
    assert image[0, 0, 0] == 0 and image[0, 5, 1] == 0 and image[0, 5, 8] == 255


@pytest.mark.parametrize("change, message", [
    ("size", "size"), ("count", "band count"), ("crs", "CRS"), ("transform", "transform")])
def test_read_pair_rejects_mismatched_dates(tmp_path, change, message):
    base = np.zeros((3, 16, 16), np.uint8)
    write_tif(tmp_path / "a.tif", base)
    other = dict(array=base, crs=CRS, transform=TRANSFORM)
    if change == "size":
        other["array"] = np.zeros((3, 16, 20), np.uint8)
    elif change == "count":
        other["array"] = np.zeros((4, 16, 16), np.uint8)
    elif change == "crs":
        other["crs"] = "EPSG:32634"
    else:
        other["transform"] = Affine(0.5, 0.0, 500001.0, 0.0, -0.5, 4000000.0)
    write_tif(tmp_path / "b.tif", other.pop("array"), **other)
    with pytest.raises(DataError, match=message) as error:
        read_pair(tmp_path / "a.tif", tmp_path / "b.tif")
    assert "a.tif" in str(error.value) and "b.tif" in str(error.value)


def test_unreadable_geotiff_is_named(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="broken.tif"):
        read_image(tmp_path / "broken.tif")


def test_labels_0_255_become_0_1_and_other_values_are_errors(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[2:4, 2:5] = 255
    write_png(tmp_path / "l.png", label)
    mask = read_label(tmp_path / "l.png")
    assert mask.dtype == np.int64 and mask.sum() == 6 and set(np.unique(mask)) == {0, 1}
    label[0, 0] = 128
    write_png(tmp_path / "bad.png", label)
    with pytest.raises(DataError, match=r"bad\.png.*\[128\]"):
        read_label(tmp_path / "bad.png")
    write_png(tmp_path / "multi.png", np.array([[0, 1], [2, 1]], np.uint8))
    np.testing.assert_array_equal(read_label(tmp_path / "multi.png", class_values=(0, 1, 2)), [[0, 1], [2, 1]])
    write_tif(tmp_path / "l.tif", label[None].copy() * 0 + 255)
    assert (read_label(tmp_path / "l.tif") == 1).all()


# ---- datasets ---------------------------------------------------------------------------------

def test_datasets_follow_the_data_contract(tmp_path):
    root = make_pair_root(tmp_path, ["x1.png", "x2.png"], size=(40, 48))
    labeled = RepeatDataset(LabeledPairs(root, root / "list.txt", crop_size=32), 5)
    image, mask = labeled[0]
    assert len(labeled) == 5 and image.shape == (6, 32, 32) and str(image.dtype) == "torch.uint8"
    assert mask.shape == (32, 32) and str(mask.dtype) == "torch.int64" and set(mask.unique().tolist()) <= {0, 1}

    padded = LabeledPairs(root, root / "list.txt", crop_size=80, scale_range=(1.0, 1.0))
    image, mask = padded[0]
    assert image.shape == (6, 80, 80)
    outside = np.ones((80, 80), bool)
    outside[:40, :48] = False
    if not (mask[:40, :48] == 255).any():  # not flipped: padding bottom/right
        assert (mask.numpy()[outside] == 255).all() and (image.numpy()[:, outside] == 0).all()
    assert (mask == 255).sum() == outside.sum()

    unlabeled = UnlabeledPairs(root, root / "list.txt", crop_size=80, scale_range=(1.0, 1.0))
    image, ignore = unlabeled[1]
    assert image.shape == (6, 80, 80) and str(ignore.dtype) == "torch.int64"
    assert (ignore == 255).sum() == outside.sum() and set(ignore.unique().tolist()) == {0, 255}

    evaluation = EvalPairs(root, root / "list.txt")
    image, mask, name = evaluation[1]
    assert image.shape == (6, 40, 48) and mask.shape == (40, 48) and name == "x2.png"
    a_file = np.moveaxis(np.asarray(Image.open(root / "A" / "x2.png")), -1, 0)
    np.testing.assert_array_equal(image[:3].numpy(), a_file)


def test_unlabeled_dataset_never_opens_labels(tmp_path, monkeypatch):
    root = make_pair_root(tmp_path, ["u.png"], size=(24, 24))
    for path in (root / "label").iterdir():
        path.unlink()
    (root / "label").rmdir()
    import tasks.change_detection.data as data

    def no_labels(*args, **kwargs):
        raise AssertionError("an unlabelled dataset opened a label")

    monkeypatch.setattr(data, "read_label_values", no_labels)
    image, ignore = UnlabeledPairs(root, root / "list.txt", crop_size=16)[0]
    assert image.shape == (6, 16, 16) and (ignore == 0).all()


def test_missing_pair_file_names_file_and_split_line(tmp_path):
    root = make_pair_root(tmp_path, ["a.png", "b.png", "c.png"], size=(8, 8))
    (root / "B" / "b.png").unlink()
    (root / "list.txt").write_text("a.png\n\nb.png\nc.png\n")
    with pytest.raises(DataError, match=r"B/b\.png.*line 3 of .*list\.txt"):
        EvalPairs(root, root / "list.txt")
    (root / "label" / "c.png").unlink()
    (root / "list.txt").write_text("a.png\nc.png\n")
    with pytest.raises(DataError, match=r"label/c\.png.*line 2"):
        LabeledPairs(root, root / "list.txt", crop_size=8)
    UnlabeledPairs(root, root / "list.txt", crop_size=8)  # labels are not needed there


def test_label_of_other_size_is_an_error(tmp_path):
    root = make_pair_root(tmp_path, ["a.png"], size=(8, 8))
    write_png(root / "label" / "a.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"label .*a\.png is 9x8"):
        EvalPairs(root, root / "list.txt")[0]


# ---- paired augmentation ----------------------------------------------------------------------

def test_weak_augmentation_moves_A_B_and_label_together(tmp_path):
    height, width = 48, 56
    image_a = np.full((3, height, width), 30, np.uint8)
    image_a[:, 10:20, 30:38] = 220
    image_a[0, 10:13, 30:33] = 120  # an asymmetric corner, so flips and rotations show
    image_b = image_a[::-1].copy()  # other band content, same geometry
    label = np.zeros((height, width), np.uint8)
    label[10:20, 30:38] = 1
    augment = PairAugment(crop_size=40, nadir_augment=True, seed=0)
    compared = 0
    for _ in range(30):
        out_a, out_b, out_mask = augment(image_a, image_b, label)
        np.testing.assert_array_equal(out_a, out_b[::-1])
        marker, inside = out_a[1] > 125, out_mask == 1
        assert marker.any() == inside.any()
        if inside.sum() >= 8:
            compared += 1
            assert (marker & inside).sum() / (marker | inside).sum() > 0.85
            offset = np.argwhere(marker).mean(0) - np.argwhere(inside).mean(0)
            assert np.abs(offset).max() <= 0.6
    assert compared >= 10


def test_nadir_augmentation_draws_all_eight_dihedral_views_reproducibly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    augment = PairAugment(crop_size=16, scale_range=(1.0, 1.0), nadir_augment=True, seed=7)
    views = [augment(image, image, mask)[0].tobytes() for _ in range(64)]
    assert len(set(views)) == 8  # independent flips: correlated streams give only 4
    augment.reseed(7)
    assert [augment(image, image, mask)[0].tobytes() for _ in range(64)] == views
    augment.reseed(8)
    assert [augment(image, image, mask)[0].tobytes() for _ in range(64)] != views


def test_float_geotiff_with_nan_is_an_error_unless_nan_is_its_nodata(tmp_path):
    data = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32)
    data[:, 4, 5] = np.nan
    write_tif(tmp_path / "nan.tif", data)
    with pytest.raises(DataError, match=r"nan\.tif: 3 NaN/Inf value\(s\)"):
        read_image(tmp_path / "nan.tif", bands=(1, 2, 3), stretch="percentile")
    write_tif(tmp_path / "nodata.tif", data, nodata=float("nan"))
    image, _ = read_image(tmp_path / "nodata.tif", bands=(1, 2, 3), stretch="percentile")
    assert image.dtype == np.uint8 and image[0, 4, 5] == 0
def test_synthetic_amount_of_change_is_a_parameter_with_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path))
    small = dict(n_train=12, n_val=1, n_test=1, tile=64)
    default = ensure_synthetic_cd(**small)
    more = ensure_synthetic_cd(**small, no_change_share=0.0, change_rate=(0.6, 0.9), building_side=(8, 24))
    assert default != more and "-change0-0.6-0.9-side8-24" in more.name
    assert "change_rate" not in json.loads((default / "meta.json").read_text())   # as before the parameters

    def changed(root):
        return np.mean([np.asarray(Image.open(p)) > 0 for p in sorted((root / "label").iterdir())])
    assert changed(more) > 1.5 * changed(default)
