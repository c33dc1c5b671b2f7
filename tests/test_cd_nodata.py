"""Which pixels of a GeoTIFF are missing: GDAL's dataset mask, the same for training tiles and whole scenes.

A pixel is missing where every band equals the dataset's nodata value, where the alpha band is 0,
or where the mask band (internal or ``.msk``) is 0; a valid pixel with one band equal to the nodata
value (dark water ``[0, 3, 4]`` under nodata=0) is data. A float pixel holding NaN under
nodata=nan has no value and is missing.
"""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from tasks.change_detection.raster_io import percentile_limits, read_image
from tasks.change_detection.scene_io import NODATA_CLASS, predict_scene

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
SIZE = 8
DARK_WATER = (1, 1)     # one band equals the nodata value: valid
MISSING = (5, 6)        # what each kind of raster marks as missing
DARK_WATER_VALUES = (0, 3, 4)


def write_raster(path, kind: str):
    """A 3-band 8x8 raster of value 50 with a dark-water pixel, missing at ``MISSING`` by ``kind``."""
    data = np.full((3, SIZE, SIZE), 50, np.uint8 if kind == "alpha" else np.uint16)
    data[:, DARK_WATER[0], DARK_WATER[1]] = DARK_WATER_VALUES
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=3, dtype=data.dtype.name, crs=CRS,
                   transform=TRANSFORM)
    if kind == "nodata":
        data[:, MISSING[0], MISSING[1]] = 0
        profile["nodata"] = 0
    elif kind == "nodata_uint8":
        data = data.astype(np.uint8)
        data[:, MISSING[0], MISSING[1]] = 0
        profile.update(nodata=0, dtype="uint8")
    elif kind == "alpha":
        alpha = np.full((1, SIZE, SIZE), 255, np.uint8)
        alpha[0, MISSING[0], MISSING[1]] = 0
        data = np.concatenate([data, alpha])
        profile.update(count=4, photometric="RGB", alpha="YES")
    elif kind == "nan":
        data = data.astype(np.float32)
        data[:, MISSING[0], MISSING[1]] = np.nan
        profile.update(dtype="float32", nodata=float("nan"))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=kind != "sidecar_mask"):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if kind in ("internal_mask", "sidecar_mask"):
                mask = np.full((SIZE, SIZE), 255, np.uint8)
                mask[MISSING] = 0
                dst.write_mask(mask)
    return path


KINDS = ["nodata", "nodata_uint8", "alpha", "internal_mask", "sidecar_mask", "nan"]


@pytest.mark.parametrize("kind", KINDS)
def test_tile_reader_keeps_a_pixel_with_one_band_at_nodata_and_zeroes_a_missing_one(tmp_path, kind):
    path = write_raster(tmp_path / "tile.tif", kind)
    image, _ = read_image(path, bands=(1, 2, 3), stretch=1)
    assert tuple(image[:, DARK_WATER[0], DARK_WATER[1]]) == DARK_WATER_VALUES, "a valid pixel was zeroed as missing"
    assert not image[:, MISSING[0], MISSING[1]].any(), "a missing pixel kept its values"
    assert (image[:, 0, 0] == 50).all()
    assert (tmp_path / "tile.tif.msk").exists() == (kind == "sidecar_mask")


def constant_change_model(batch: torch.Tensor) -> torch.Tensor:
    """Probability 0.2 of change everywhere: every valid pixel is class 0."""
    n, _, height, width = batch.shape
    return torch.tensor([0.8, 0.2]).view(1, 2, 1, 1).expand(n, 2, height, width)


@pytest.mark.parametrize("kind", KINDS)
def test_scene_reader_predicts_a_pixel_with_one_band_at_nodata_and_not_a_missing_one(tmp_path, kind):
    before = write_raster(tmp_path / "before.tif", kind)
    after = write_raster(tmp_path / "after.tif", kind)
    out = predict_scene(before, after, tmp_path / "change.tif", constant_change_model, window=4, overlap=1,
                        stretch=1, progress=False)
    with rasterio.open(out) as src:
        classes, dataset_mask = src.read(1), src.dataset_mask()
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[MISSING] = NODATA_CLASS
    assert classes[DARK_WATER] == 0, "a valid pixel with one band equal to nodata was written as no data"
    assert np.array_equal(classes, expected)
    assert np.array_equal(dataset_mask == 0, expected == NODATA_CLASS)


def test_percentile_stretch_counts_a_band_at_nodata_in_a_valid_pixel(tmp_path):
    """Band 1 is 0 on half of the valid pixels: those zeros are data, so its 2nd percentile is 0."""
    data = np.full((3, 16, 16), 1000, np.uint16)
    data[0, :8] = 0
    data[:, 15, 15] = 0
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=16, height=16, count=3, dtype="uint16",
                       nodata=0, crs=CRS, transform=TRANSFORM) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "s.tif") as src:
        low, high = percentile_limits(src, (1, 2, 3))
    assert low[0] == 0 and high[0] == 1000
    image, _ = read_image(tmp_path / "s.tif", stretch="percentile")
    assert (image[0, 8:15] == 255).all() and (image[0, :8] == 0).all()

