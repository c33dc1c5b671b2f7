"""Specifications of the natural-image data adapter: layouts, split files, weak views, synthetic data, splits."""
from __future__ import annotations

import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import maximum_filter, minimum_filter  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from tasks.natural import make_splits as make_splits_module  # noqa: E402
from tasks.natural import scenes, synthetic  # noqa: E402
from tasks.natural.data import (  # noqa: E402
    ImageFolderDataset,
    LabeledDataset,
    RandomLongSideRescale,
    UnlabeledDataset,
    ValDataset,
    rescaled_size,
    weak_augmentation,
)
from tasks.natural.layouts import read_split  # noqa: E402
from tasks.natural.make_splits import main as make_splits_main  # noqa: E402
from tasks.natural.palette import overlay, save_palette_png, voc_palette  # noqa: E402
from unimatch.data import RepeatDataset, reseed_pipeline, seed_worker  # noqa: E402
from unimatch.errors import DataError  # noqa: E402

# Well separated colours, one per class, so image content tells which class a pixel came from.
CLASS_COLOURS = np.array(
    [[30, 30, 30], [230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [40, 230, 230]], dtype=np.uint8
)


def block_mask(rng, height, width, nclass, block=8):
    """Random class ids in square blocks: large uniform areas whose colours survive rescaling."""
    coarse = rng.integers(0, nclass, size=(-(-height // block), -(-width // block)))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)


def write_pair(image_path, mask_path, mask, image=None, jpeg=True):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = CLASS_COLOURS[np.minimum(mask, len(CLASS_COLOURS) - 1)]
    if jpeg:
        Image.fromarray(image).save(image_path, quality=95)
    else:
        Image.fromarray(image).save(image_path)
    save_palette_png(mask, mask_path)


def make_voc(root, ids, height=20, width=30, nclass=6, seed=0, jpeg=True):
    rng = np.random.default_rng(seed)
    for sample_id in ids:
        suffix = "jpg" if jpeg else "png"
        write_pair(root / "JPEGImages" / f"{sample_id}.{suffix}", root / "SegmentationClass" / f"{sample_id}.png",
                   block_mask(rng, height, width, nclass), jpeg=jpeg)
    return root


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------- layouts and split lines

def test_voc_datasets_return_contract_items(tmp_path):
    root = make_voc(tmp_path / "voc", ["2007_000001", "2007_000002", "2007_000003"], height=20, width=30)
    split = write_lines(tmp_path / "val.txt", [
        "JPEGImages/2007_000001.jpg SegmentationClass/2007_000001.png",  # official format
        "2007_000002",                                                   # bare id
        "JPEGImages/2007_000003.jpg",                                    # image path only
    ])
    val = ValDataset("pascal", root, split)
    assert len(val) == 3
    image, mask, sample_id = val[1]
    assert sample_id == "2007_000002"
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert mask.dtype == torch.int64 and mask.shape == (20, 30)
    written = np.asarray(Image.open(root / "SegmentationClass" / "2007_000002.png"))
    assert np.array_equal(mask.numpy(), written)

    labeled = RepeatDataset(LabeledDataset("pascal", root, split, crop_size=16), 7)
    assert len(labeled) == 7  # official nsample: the list repeated to the unlabelled length
    image, mask = labeled[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert mask.dtype == torch.int64 and mask.shape == (16, 16)
    assert set(mask.unique().tolist()) <= set(range(21)) | {255}


@pytest.mark.parametrize("dataset, lines, image_rel, mask_rel", [
    ("pascal", ["2007_000005", "JPEGImages/2007_000005.jpg",
                "JPEGImages/2007_000005.jpg SegmentationClass/2007_000005.png"],
     "JPEGImages/2007_000005.jpg", "SegmentationClass/2007_000005.png"),
    ("cityscapes", ["train/jena/jena_000078_000019", "jena_000078_000019",
                    "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png",
                    "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png "
                    "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png"],
     "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png",
     "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png"),
    ("coco", ["000000283213", "val2017/000000283213.jpg", "val2017/000000283213.jpg masks/000000283213.png"],
     "val2017/000000283213.jpg", "masks/000000283213.png"),
])
def test_every_split_line_format_resolves_to_the_official_files(tmp_path, dataset, lines, image_rel, mask_rel):
    root = tmp_path / dataset
    write_pair(root / image_rel, root / mask_rel, np.zeros((8, 8), dtype=np.uint8), jpeg=image_rel.endswith(".jpg"))
    split = write_lines(tmp_path / "split.txt", lines + ["", "   "])  # blank lines are skipped
    entries = read_split(split, root, dataset, need_masks=True)
    assert [(e.image, e.mask) for e in entries] == [(root / image_rel, root / mask_rel)] * len(lines)
    assert [e.line_number for e in entries] == list(range(1, len(lines) + 1))


def test_cityscapes_layout_reads_train_id_masks(tmp_path):
    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(1)
    lines = []
    samples = [("train", "aachen", "aachen_000000_000019"), ("val", "frankfurt", "frankfurt_000000_000294")]
    for split, city, name in samples:
        image_rel = f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png"
        mask_rel = f"gtFine/{split}/{city}/{name}_gtFine_labelTrainIds.png"
        mask = rng.integers(0, 19, size=(16, 32)).astype(np.uint8)
        mask[0] = 255
        write_pair(root / image_rel, root / mask_rel, mask, jpeg=False)
        lines.append(f"{image_rel} {mask_rel}")
    val = ValDataset("cityscapes", root, write_lines(tmp_path / "val.txt", lines))
    image, mask, sample_id = val[1]
    assert sample_id == "frankfurt_000000_000294"
    assert image.shape == (3, 16, 32)
    assert mask.max().item() == 255 and mask[1:].max().item() <= 18
    assert val.nclass == 19


def test_coco_layout_reads_81_classes(tmp_path):
    root = tmp_path / "coco"
    for folder, sample_id in [("train2017", "000000000009"), ("val2017", "000000000139")]:
        mask = np.full((12, 12), 80, dtype=np.uint8)
        mask[:4] = 0
        write_pair(root / folder / f"{sample_id}.jpg", root / "masks" / f"{sample_id}.png", mask)
    split = write_lines(tmp_path / "labeled.txt", ["train2017/000000000009.jpg masks/000000000009.png", "000000000139"])
    val = ValDataset("coco", root, split)
    assert val.nclass == 81
    assert [val[i][2] for i in range(2)] == ["000000000009", "000000000139"]
    assert val[1][1].max().item() == 80
    assert LabeledDataset("coco", root, split, crop_size=8)[0][0].shape == (3, 8, 8)


def test_image_folder_dataset_lists_images_for_prediction(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(folder / "b.png")
    Image.fromarray(np.full((8, 6), 200, np.uint8)).save(folder / "a.jpg")  # grayscale becomes RGB
    (folder / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(folder)
    assert [dataset[i][1] for i in range(len(dataset))] == ["a", "b"]
    image, _ = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 6)

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(DataError, match="share the id 'a'"):
        ImageFolderDataset(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="neither a folder nor an image"):
        ImageFolderDataset(folder / "notes.txt")


def test_one_image_is_read_alone_though_its_folder_holds_another_with_its_id(tmp_path):
    """a.png beside a.jpg: the folder is refused (their masks would overwrite each other), one file is not."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((8, 6), 200, np.uint8)).save(folder / "a.jpg")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(DataError, match="share the id 'a'"):
        ImageFolderDataset(folder)
    one = ImageFolderDataset(folder / "a.png")
    assert [entry.image for entry in one.entries] == [folder / "a.png"]
    image, sample_id = one[0]
    assert sample_id == "a" and image.shape == (3, 4, 4)


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    """value / 257 (0..65535 -> 0..255); PIL's RGB conversion alone turns every value above 255 white."""
    folder = tmp_path / "photos"
    folder.mkdir()
    values = np.array([[0, 257, 32896], [50000, 65535, 128]], np.uint16)
    Image.fromarray(values).save(folder / "scan.png")
    assert Image.open(folder / "scan.png").mode.startswith("I")
    image, _ = ImageFolderDataset(folder)[0]
    expected = np.array([[0, 1, 128], [195, 255, 0]], np.uint8)
    assert image.dtype == torch.uint8
    for channel in image.numpy():
        assert np.array_equal(channel, expected)


def test_prediction_images_follow_their_exif_orientation(tmp_path):
    """A JPEG stored landscape with 'rotate 90 CW' (orientation 6) is shown, and predicted, portrait."""
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "phone.jpg", exif=exif, quality=95)
    image, _ = ImageFolderDataset(folder)[0]
    assert image.shape == (3, 40, 20)
    shown = image.numpy()[0]
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # the band is now on top


# ----------------------------------------------------------------------------- weak augmentation

def test_official_rescale_rule_and_pixels():
    assert rescaled_size(375, 500, 400) == (300, 400)
    assert rescaled_size(500, 375, 400) == (400, 300)
    assert rescaled_size(10, 10, 7) == (7, 7)
    assert rescaled_size(7, 10, 5) == (4, 5) and rescaled_size(10, 7, 5) == (5, 4)  # int(x + 0.5) rounding
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(10, 7, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, size=(10, 7), dtype=np.uint8)
    pipeline = A.Compose([RandomLongSideRescale((0.5, 2.0))])
    reseed_pipeline(pipeline, 0)
    long_sides = set()
    for _ in range(300):
        out = pipeline(image=image, mask=mask)
        height, width = out["image"].shape[:2]
        long_sides.add(height)
        assert (height, width) == rescaled_size(10, 7, height)
        expected = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        assert np.array_equal(out["image"], expected)  # PIL bilinear, as the official
        assert np.array_equal(out["mask"], np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST)))
    assert long_sides == set(range(5, 21))  # randint(int(10 * 0.5), int(10 * 2.0)), both ends included


def test_labeled_weak_view_keeps_image_and_mask_aligned_and_pads_255(tmp_path):
    root = make_voc(tmp_path / "voc", ["a", "b"], height=30, width=40, jpeg=False)
    split = write_lines(tmp_path / "train.txt", ["JPEGImages/a.png SegmentationClass/a.png",
                                                  "JPEGImages/b.png SegmentationClass/b.png"])
    dataset = LabeledDataset("synthetic", root, split, crop_size=48, seed=0)
    padded_views, interior_pixels = 0, 0
    for step in range(24):
        image, mask = dataset[step % 2]
        image, mask = image.permute(1, 2, 0).numpy().astype(int), mask.numpy()
        padded = mask == 255  # the source masks hold no 255: 255 means padding
        assert (image[padded] == 0).all()
        padded_views += bool(padded.any())
        # Away from class borders (where bilinear resampling mixes colours) colour must match class.
        interior = ~padded & (maximum_filter(mask, size=3) == minimum_filter(mask, size=3))
        expected = CLASS_COLOURS[mask[interior]].astype(int)
        agree = (np.abs(image[interior] - expected).max(axis=1) <= 40).mean()
        assert agree > 0.97, f"image and mask disagree on {1 - agree:.0%} of the interior pixels"
        interior_pixels += interior.sum()
    assert padded_views >= 4 and interior_pixels > 4000


def test_unlabeled_ignore_mask_is_255_exactly_on_padding(tmp_path):
    root = make_voc(tmp_path / "voc", ["a"], height=20, width=30, jpeg=False)
    split = write_lines(tmp_path / "u.txt", ["JPEGImages/a.png SegmentationClass/a.png"])
    dataset = UnlabeledDataset("pascal", root, split, crop_size=64, seed=0)
    flips = set()
    for _ in range(20):
        image, ignore = dataset[0]
        assert ignore.dtype == torch.int64 and set(ignore.unique().tolist()) <= {0, 255}
        valid = (ignore == 0).numpy()
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        assert rows[0] == 0 and len(rows) == rows[-1] + 1  # image rows start at the top
        assert cols[0] == 0 or cols[-1] == 63               # left edge, or right edge after a flip
        assert valid.sum() == len(rows) * len(cols)         # one rectangle: the rescaled image
        flips.add(bool(cols[-1] == 63 and cols[0] > 0))
        assert (image.permute(1, 2, 0).numpy()[~valid] == 0).all()
    assert flips == {False, True}


def test_unlabeled_dataset_never_opens_a_mask(tmp_path):
    root = make_voc(tmp_path / "voc", ["a", "b", "c"])
    split = write_lines(tmp_path / "unlabeled.txt", [f"JPEGImages/{i}.jpg SegmentationClass/{i}.png" for i in "abc"])
    for mask in (root / "SegmentationClass").iterdir():
        mask.unlink()
    (root / "SegmentationClass").rmdir()
    dataset = UnlabeledDataset("pascal", root, split, crop_size=16)
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 3 and all(image.shape == (3, 16, 16) for image, _ in items)


def test_crop_and_flip_draws_are_independent_and_seeded():
    """Crop position and flip vary independently, and the view sequence is a function of the seed."""
    width, height, crop = 40, 40, 20
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    image = np.stack([xs * 5, ys * 5, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)

    def views(seed):
        pipeline = weak_augmentation(crop, scale_range=(1.0, 1.0), seed=seed)
        out = []
        for _ in range(200):
            view = pipeline(image=image, mask=mask)["image"].astype(int)
            flipped = view[0, 0, 0] > view[0, -1, 0]
            out.append((int(view[0, 0, 1]) // 5, bool(flipped)))
        return out

    first = views(0)
    combos = {(top >= (height - crop) // 2, flipped) for top, flipped in first}
    assert combos == {(False, False), (False, True), (True, False), (True, True)}
    assert views(0) == first and views(1) != first


def test_seed_worker_makes_multiworker_loading_reproducible(tmp_path):
    root = make_voc(tmp_path / "voc", ["a", "b", "c", "d"], height=24, width=24)
    split = write_lines(tmp_path / "u.txt", [f"JPEGImages/{i}.jpg" for i in "abcd"])
    dataset = UnlabeledDataset("pascal", root, split, crop_size=24)

    def run():
        torch.manual_seed(0)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker)
        return [image.clone() for image, _ in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(1)
    other = [image for image, _ in DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# ----------------------------------------------------------------------------- synthetic dataset

def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_dataset_layout_determinism_and_reading(tmp_path):
    kwargs = dict(n_images=10, size=32, seed=3, labeled_fraction=0.25)
    root = synthetic.ensure_synthetic_voc(tmp_path / "a", **kwargs)
    again = synthetic.ensure_synthetic_voc(tmp_path / "b", **kwargs)
    assert _files(root) == _files(again)
    assert _files(root) != _files(synthetic.ensure_synthetic_voc(tmp_path / "c", **{**kwargs, "seed": 4}))

    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    assert len(ids) == 10 + 2 and sorted(p.stem for p in (root / "SegmentationClass").glob("*.png")) == ids
    with Image.open(root / "SegmentationClass" / f"{ids[0]}.png") as mask:
        assert mask.mode == "P"
        assert np.array_equal(np.asarray(mask.getpalette(), dtype=np.uint8).reshape(-1, 3)[:21], voc_palette()[:21])

    splits = {name: (root / "splits" / f"{name}.txt").read_text().splitlines()
              for name in ("train", "labeled", "unlabeled", "val", "test")}
    assert splits["train"][0] == f"JPEGImages/{ids[0]}.jpg SegmentationClass/{ids[0]}.png"
    assert sorted(splits["labeled"] + splits["unlabeled"]) == sorted(splits["train"])
    assert not set(splits["labeled"]) & set(splits["unlabeled"])
    assert not set(splits["val"]) & set(splits["train"])
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
    assert (len(splits["train"]), len(splits["labeled"]), len(splits["val"]), len(splits["test"])) == (8, 2, 2, 2)

    val = ValDataset("synthetic", root, root / "splits" / "val.txt")
    values = set()
    for image, mask, _ in val:
        assert 24 <= image.shape[1] <= 32 and 24 <= image.shape[2] <= 32
        values |= set(mask.unique().tolist())
    assert values <= set(range(scenes.SYNTHETIC_NCLASS)) | {255} and 255 in values
    labeled = RepeatDataset(LabeledDataset("synthetic", root, root / "splits" / "labeled.txt", crop_size=24), 6)
    assert len(labeled) == 6 and labeled[0][1].shape == (24, 24)
    assert len(UnlabeledDataset("synthetic", root, root / "splits" / "unlabeled.txt", crop_size=24)) == 6


def test_scene_style_class_hue_gives_each_class_its_hue_or_any():
    def hues(style, class_id, n=40):
        rng = np.random.default_rng(0)
        rgb = np.stack([scenes._class_colour(rng, class_id, style) for _ in range(n)])
        return cv2.cvtColor((rgb[None] * 255).round().astype(np.uint8), cv2.COLOR_RGB2HSV)[0, :, 0] / 180.0

    for class_id in range(1, scenes.SYNTHETIC_NCLASS):
        exact = hues(scenes.SceneStyle(1.0, 0.0), class_id)
        distance = np.abs((exact - scenes.CLASS_HUES[class_id] + 0.5) % 1.0 - 0.5)
        assert distance.max() < 0.02, class_id   # uint8 HSV rounding only
    anything = hues(scenes.SceneStyle(0.0, 0.0), 2)
    assert np.abs((anything - scenes.CLASS_HUES[2] + 0.5) % 1.0 - 0.5).max() > 0.3


def test_plain_clutter_leaves_the_background_without_textures_or_lines():
    """The textured background has object textures and lines (sharp light/dark edges); the plain
    one only smooth noise and plain blobs, so its mean Laplacian is several times smaller."""
    def busyness(clutter):
        values = []
        for seed in range(12):
            height = width = 64
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            canvas = scenes._background(np.random.default_rng(seed), height, width, ys, xs, clutter)
            values.append(np.abs(cv2.Laplacian(canvas.mean(2).astype(np.float32), cv2.CV_32F)).mean())
        return float(np.mean(values))

    assert busyness("textured") > 2.0 * busyness("plain")


def test_scene_style_names_its_folder_and_meta_and_default_style_keeps_old_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path / "home"))
    style = scenes.SceneStyle(1.0, 0.04, "plain")
    root = synthetic.ensure_synthetic_voc(n_images=6, size=24, style=style)
    assert root.name.endswith("-hue1-0.04-plain")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["style"] == {"class_hue_probability": 1.0, "class_hue_spread": 0.04, "clutter": "plain"}
    plain = _files(root)
    default = synthetic.ensure_synthetic_voc(n_images=6, size=24)
    assert "style" not in json.loads((default / "meta.json").read_text()) and "hue" not in default.name
    assert {k: v for k, v in _files(default).items() if k.startswith("JPEG")} != \
        {k: v for k, v in plain.items() if k.startswith("JPEG")}
    with pytest.raises(DataError, match="clutter"):
        synthetic.ensure_synthetic_voc(tmp_path / "x", n_images=6, size=24, style=scenes.SceneStyle(clutter="busy"))


def test_synthetic_dataset_is_cached_written_atomically_and_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path / "home"))
    kwargs = dict(n_images=6, size=24, seed=0)
    root = synthetic.ensure_synthetic_voc(**kwargs)
    assert root.parent == tmp_path / "home" / "natural" and root.name.startswith(f"synthetic-v{synthetic.SYNTHETIC_VERSION}")
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert synthetic.ensure_synthetic_voc(**kwargs) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other parameters"):
        synthetic.ensure_synthetic_voc(root, n_images=7, size=24, seed=0)

    def crash(out, parameters):
        (out / "JPEGImages").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_dataset", crash)
    with pytest.raises(RuntimeError):
        synthetic.ensure_synthetic_voc(tmp_path / "crashed", n_images=6, size=24)
    assert not (tmp_path / "crashed").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- make_splits

def test_make_splits_is_deterministic_official_and_refuses_overwrite(tmp_path, capsys):
    root = synthetic.ensure_synthetic_voc(tmp_path / "data", n_images=12, size=24)
    pool = (root / "splits" / "train.txt").read_text().splitlines()

    def run(out, seed=0, *extra):
        return make_splits_main(["--dataset", "pascal", "--data-root", str(root), "--num-labeled", "3",
                                 "--seed", str(seed), "--out", str(out),
                                 "--source-split", str(root / "splits" / "train.txt"), *extra])

    assert run(tmp_path / "s0") == 0 and run(tmp_path / "s0b") == 0 and run(tmp_path / "s1", 1) == 0
    read = lambda d, n: (d / n).read_text().splitlines()  # noqa: E731
    labeled, unlabeled = read(tmp_path / "s0", "labeled.txt"), read(tmp_path / "s0", "unlabeled.txt")
    assert labeled == read(tmp_path / "s0b", "labeled.txt") and unlabeled == read(tmp_path / "s0b", "unlabeled.txt")
    assert labeled != read(tmp_path / "s1", "labeled.txt")
    assert len(labeled) == 3 and sorted(labeled + unlabeled) == sorted(pool)
    assert all(line.startswith("JPEGImages/") and " SegmentationClass/" in line for line in labeled)

    before = (tmp_path / "s0" / "labeled.txt").read_text()
    capsys.readouterr()
    assert run(tmp_path / "s0", 1) == 2
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "s0" / "labeled.txt").read_text() == before
    assert run(tmp_path / "s0", 1, "--overwrite") == 0
    assert read(tmp_path / "s0", "labeled.txt") == read(tmp_path / "s1", "labeled.txt")

    # The synthetic set's own train list is the default pool; fractions round up.
    labeled_path, _ = make_splits_module.make_splits("synthetic", root, "1/4", 0, tmp_path / "frac")
    assert len(labeled_path.read_text().splitlines()) == 3
    with pytest.raises(DataError, match="leaves no unlabelled image"):
        make_splits_module.make_splits("synthetic", root, str(len(pool)), 0, tmp_path / "too_many")
    with pytest.raises(DataError, match="source-split"):
        make_splits_module.make_splits("pascal", root, "2", 0, tmp_path / "no_pool")


def test_make_splits_lists_cityscapes_training_images(tmp_path):
    root = tmp_path / "cityscapes"
    names = [f"jena_{i:06d}_000019" for i in range(4)]
    for name in names:
        write_pair(root / f"leftImg8bit/train/jena/{name}_leftImg8bit.png",
                   root / f"gtFine/train/jena/{name}_gtFine_labelTrainIds.png", np.zeros((4, 8), np.uint8), jpeg=False)
    write_pair(root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png",
               root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png", np.zeros((4, 8), np.uint8),
               jpeg=False)
    labeled_path, unlabeled_path = make_splits_module.make_splits("cityscapes", root, 1, 0, tmp_path / "out")
    lines = labeled_path.read_text().splitlines() + unlabeled_path.read_text().splitlines()
    assert len(lines) == 4 and not any("lindau" in line for line in lines)
    image, mask = lines[0].split()
    assert image.startswith("leftImg8bit/train/jena/") and mask.endswith("_gtFine_labelTrainIds.png")


# ----------------------------------------------------------------------------- bad input

def _voc_with_split(tmp_path, mask=None, image_size=(20, 30)):
    root = make_voc(tmp_path / "voc", ["good"], height=20, width=30)
    if mask is not None:
        write_pair(root / "JPEGImages" / "bad.jpg", root / "SegmentationClass" / "bad.png", mask,
                   image=np.zeros(image_size + (3,), dtype=np.uint8))
    split = write_lines(tmp_path / "split.txt", ["JPEGImages/good.jpg SegmentationClass/good.png",
                                                 "JPEGImages/bad.jpg SegmentationClass/bad.png"])
    return root, split


def test_missing_image_names_split_file_line_and_file(tmp_path):
    root, split = _voc_with_split(tmp_path)
    with pytest.raises(DataError) as error:
        ValDataset("pascal", root, split)
    assert f"{split}:2" in str(error.value) and "bad.jpg" in str(error.value) and "does not exist" in str(error.value)


def test_missing_mask_names_split_file_line_and_file(tmp_path):
    root, split = _voc_with_split(tmp_path, mask=np.zeros((20, 30), np.uint8))
    (root / "SegmentationClass" / "bad.png").unlink()
    with pytest.raises(DataError) as error:
        LabeledDataset("pascal", root, split, crop_size=8)
    assert f"{split}:2" in str(error.value) and "bad.png" in str(error.value)


def test_mask_values_outside_the_classes_are_refused(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[3, 4] = 21  # Pascal has 21 classes: 0..20, plus 255
    root, split = _voc_with_split(tmp_path, mask=mask)
    dataset = ValDataset("pascal", root, split)
    dataset[0]
    with pytest.raises(DataError) as error:
        dataset[1]
    message = str(error.value)
    assert f"{split}:2" in message and "bad.png" in message and "[21]" in message


def test_image_and_mask_of_different_sizes_are_refused(tmp_path):
    root, split = _voc_with_split(tmp_path, mask=np.zeros((20, 30), np.uint8), image_size=(21, 30))
    dataset = LabeledDataset("pascal", root, split, crop_size=8)
    with pytest.raises(DataError) as error:
        dataset[1]
    message = str(error.value)
    assert f"{split}:2" in message and "bad.png" in message and "bad.jpg" in message and "same size" in message


def test_empty_split_file_and_malformed_lines_are_refused(tmp_path):
    root = make_voc(tmp_path / "voc", ["a"])
    empty = write_lines(tmp_path / "empty.txt", ["", "  "])
    with pytest.raises(DataError, match="lists nothing") as error:
        UnlabeledDataset("pascal", root, empty, crop_size=8)
    assert str(empty) in str(error.value)
    malformed = write_lines(tmp_path / "three.txt", ["a", "JPEGImages/a.jpg SegmentationClass/a.png extra"])
    with pytest.raises(DataError, match="3 space-separated fields") as error:
        ValDataset("pascal", root, malformed)
    assert f"{malformed}:2" in str(error.value)
    with pytest.raises(DataError, match="does not exist"):
        ValDataset("pascal", root, tmp_path / "nowhere.txt")


def test_colour_masks_are_refused(tmp_path):
    root = make_voc(tmp_path / "voc", ["a"])
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "SegmentationClass" / "a.png")
    dataset = ValDataset("pascal", root, write_lines(tmp_path / "v.txt", ["a"]))
    with pytest.raises(DataError, match="single-channel"):
        dataset[0]


# ----------------------------------------------------------------------------- palette

def test_palette_png_round_trip_and_overlay(tmp_path):
    palette = voc_palette()
    assert palette[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert palette[255].tolist() == [224, 224, 192]
    mask = np.array([[0, 1], [2, 255]], dtype=np.int64)
    path = save_palette_png(torch.from_numpy(mask), tmp_path / "m.png")
    with Image.open(path) as stored:
        assert stored.mode == "P" and np.array_equal(np.asarray(stored), mask)
    with pytest.raises(DataError, match="already exists"):
        save_palette_png(mask, path)

    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    blended = overlay(torch.from_numpy(image).permute(2, 0, 1), mask, alpha=0.5)
    assert blended[0, 0].tolist() == [100, 100, 100] and blended[1, 1].tolist() == [100, 100, 100]
    assert blended[0, 1].tolist() == [114, 50, 50]  # halfway between grey 100 and VOC class 1 (128, 0, 0)


def test_demo_config_trains_on_plain_scenes_with_8_labelled_images(tmp_path, monkeypatch):
    """The synthetic_* keys of the natural demo config reach the generator: without --data-root the
    run reads the plain-clutter set whose labelled list has 8 of the 320 training images, and starts
    from the built-in trunk the change-detection demo uses (ResNet-18, width 16, deep stem)."""
    from tasks.natural.common import NaturalConfig, NaturalTask
    from unimatch import pretrained as pretrain
    from unimatch.config import load_config
    from unimatch.paths import config_path

    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path / "home"))
    written, trunks = [], []

    def write_lists_only(out, parameters):   # resolve_data names the lists the set holds
        written.append(parameters)
        (out / "splits").mkdir()
        for kind in ("labeled", "unlabeled", "val"):
            (out / "splits" / f"{kind}.txt").write_text("")
    monkeypatch.setattr(synthetic, "_write_dataset", write_lists_only)
    monkeypatch.setattr(pretrain, "synthetic_backbone",
                        lambda *args: trunks.append(args) or tmp_path / "backbone.pth")
    cfg = load_config(config_path("natural", "synthetic.yaml"), schema=NaturalConfig)
    resolved = NaturalTask().resolve_data(cfg)
    # main_rank_first asks twice (rank 0 makes the file, then every rank reads it)
    assert set(trunks) == {("resnet18", 16, True)} and resolved.pretrained == str(tmp_path / "backbone.pth")
    assert written == [{"version": synthetic.SYNTHETIC_VERSION, "n_images": 400, "size": 96, "seed": 0,
                        "labeled_fraction": 0.025,
                        "style": {"class_hue_probability": 0.8, "class_hue_spread": 0.08, "clutter": "plain"}}]
    assert synthetic.split_counts(400, 0.025) == (320, 80, 8)
    assert resolved.labeled_split == str(tmp_path / "home" / "natural" /
                                         f"synthetic-v{synthetic.SYNTHETIC_VERSION}-n400-s96-seed0-lab0.025-hue0.8-0.08-plain"
                                         / "splits" / "labeled.txt")
