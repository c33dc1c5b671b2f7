"""Training straight from a before/after GeoTIFF pair and a label raster (``scenes``), through the
real entry points: windows read from disk one at a time, no-data and undigitised pixels ignored,
reproducible weights, then evaluate on the held-out rows and predict the whole scene."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.io import DatasetReader
from rasterio.transform import Affine

from tasks.change_detection import evaluate as evaluate_cli
from tasks.change_detection import predict as predict_cli
from tasks.change_detection import train as train_cli
from tasks.change_detection.common import CDConfig
from tasks.change_detection.scene_data import LabeledSceneWindows, UnlabeledSceneWindows, open_scenes
from unimatch.config import load_config
from unimatch.data import IGNORE_INDEX
from unimatch.errors import ConfigError, DataError
from unimatch.paths import config_path

SIDE = 160
BORDER = 8              # no-data border of both dates (dataset mask 0)
UNDIGITISED = 99        # the label raster's value where nobody digitised (label_ignore)
CHANGED = [(20, 50, 30, 70), (60, 90, 100, 140), (130, 150, 20, 60)]   # row0, row1, col0, col1
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0",
        "pretrained=null", "sup_warmup_epochs=0"]
TRANSFORM = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5000000.0)


def write(path, data, transform=TRANSFORM, nodata=None, mask=None):
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype=data.dtype.name, crs="EPSG:32633", transform=transform, nodata=nodata,
                           tiled=True, blockxsize=16, blockysize=16) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """before.tif / after.tif (3x160x160, no-data border by the dataset mask) and label.tif (0/255,
    changed rectangles, an undigitised right quarter)."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    before = rng.integers(40, 120, (3, SIDE, SIDE), dtype=np.uint8)
    after = before.copy()
    label = np.zeros((1, SIDE, SIDE), np.uint8)
    for r0, r1, c0, c1 in CHANGED:
        after[:, r0:r1, c0:c1] = 230
        label[:, r0:r1, c0:c1] = 255
    label[:, :, 3 * SIDE // 4:] = UNDIGITISED
    inside = np.zeros((SIDE, SIDE), bool)
    inside[BORDER:-BORDER, BORDER:-BORDER] = True
    write(folder / "before.tif", before, mask=inside)
    write(folder / "after.tif", after, mask=inside)
    write(folder / "label.tif", label)
    return folder


def scene_overrides(folder, *extra):
    entry = f"{{before: {folder / 'before.tif'}, after: {folder / 'after.tif'}, label: {folder / 'label.tif'}}}"
    return [f"scenes=[{entry}]", f"label_ignore={UNDIGITISED}", "scene_windows_per_epoch=8", *extra, *TINY]


def train(folder, run, *extra):
    train_cli.main(["--save-dir", str(run), "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                    "--no-progress", "--device", "cpu", *scene_overrides(folder, *extra)])


def config(folder, *extra):
    return load_config(config_path("change_detection", "synthetic.yaml"), scene_overrides(folder, *extra),
                       schema=CDConfig)


@pytest.fixture
def read_windows(monkeypatch):
    """(height, width) of every rasterio read of pixels or masks."""
    sizes = []
    for name in ("read", "dataset_mask"):
        original = getattr(DatasetReader, name)

        def recording(self, *args, original=original, **kwargs):
            window = kwargs.get("window")
            sizes.append((self.height, self.width) if window is None else (int(window.height), int(window.width)))
            return original(self, *args, **kwargs)
        monkeypatch.setattr(DatasetReader, name, recording)
    return sizes


def holds_data(row, col, height, width):
    inside = np.zeros((SIDE, SIDE), bool)
    inside[BORDER:-BORDER, BORDER:-BORDER] = True
    return inside[row:row + height, col:col + width]


def expected_label(folder, row, col, height, width):
    with rasterio.open(folder / "label.tif") as src:
        values = src.read(1)[row:row + height, col:col + width]
    mask = np.where(values == 255, 1, 0)
    mask[(values == UNDIGITISED) | ~holds_data(row, col, height, width)] = IGNORE_INDEX
    return mask


def test_windows_ignore_no_data_and_undigitised_pixels(scenes):
    scene = open_scenes(config(scenes))[0]
    for row, col in [(0, 0), (100, 110), (20, 40), (128, 128)]:
        _, _, valid, mask = scene.read(row, col, 32, 32)
        assert np.array_equal(valid, holds_data(row, col, 32, 32))
        assert np.array_equal(mask, expected_label(scenes, row, col, 32, 32))
    assert scene.train_rows == SIDE - 32   # scene_val_share 0.2 of 160 rows held out


def test_labelled_windows_lie_above_the_held_out_rows_and_hold_labels(scenes, read_windows):
    cfg = config(scenes)
    labeled = LabeledSceneWindows(open_scenes(cfg), 20, crop_size=32, seed=1, scale_range=(1.0, 1.0))
    unlabeled = UnlabeledSceneWindows(open_scenes(cfg), 20, crop_size=32, seed=2)
    for index in range(20):
        scene, row, col, height, width = labeled.draw(labeled.rng)
        assert row + height <= scene.train_rows and (height, width) == (32, 32)
        image, mask = labeled[index]
        assert image.shape == (6, 32, 32) and mask.dtype == torch.int64 and (mask != IGNORE_INDEX).any()
        image, ignore = unlabeled[index]
        assert image.shape == (6, 32, 32) and set(ignore.unique().tolist()) <= {0, IGNORE_INDEX}
    assert read_windows and max(h * w for h, w in read_windows) <= 32 * 32   # never the whole scene


def test_train_evaluate_predict_from_scenes(scenes, tmp_path, read_windows):
    train(scenes, tmp_path / "run")
    training_reads = list(read_windows)
    assert training_reads and max(h * w for h, w in training_reads) <= 32 * 32
    train(scenes, tmp_path / "again")
    first = torch.load(tmp_path / "run/latest.pth", weights_only=True)["model"]
    second = torch.load(tmp_path / "again/latest.pth", weights_only=True)["model"]
    assert all(torch.equal(first[key], second[key]) for key in first)

    result = evaluate_cli.main(["--checkpoint", str(tmp_path / "run/best.pth"), "--device", "cpu",
                                "--json", str(tmp_path / "val.json")])
    assert "changed_IoU" in result and (tmp_path / "val.json").is_file()
    out = tmp_path / "change.tif"
    predict_cli.main(["--checkpoint", str(tmp_path / "run/best.pth"), "--before", str(scenes / "before.tif"),
                      "--after", str(scenes / "after.tif"), "--out", str(out), "--device", "cpu", "--no-progress"])
    with rasterio.open(out) as src:
        assert (src.width, src.height) == (SIDE, SIDE) and src.transform == TRANSFORM


def test_a_label_raster_on_another_grid_is_refused(scenes, tmp_path):
    shifted = TRANSFORM @ Affine.translation(4, 0)
    with rasterio.open(scenes / "label.tif") as src:
        write(tmp_path / "label.tif", src.read(), transform=shifted)
    cfg = config(scenes, f"scenes=[{{before: {scenes / 'before.tif'}, after: {scenes / 'after.tif'}, "
                         f"label: {tmp_path / 'label.tif'}}}]")
    with pytest.raises(DataError, match="on another grid than the images"):
        open_scenes(cfg)


def test_scene_entries_are_checked(scenes):
    with pytest.raises(ConfigError, match="scenes entry 1"):
        open_scenes(config(scenes, f"scenes=[{{before: {scenes / 'before.tif'}}}]"))
    with pytest.raises(ConfigError, match="label_ignore"):
        open_scenes(config(scenes, "label_ignore=255"))
