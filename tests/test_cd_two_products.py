"""Two dates of different products (data type, or value range) are refused unless each date gets its own stretch.

One stretch rule for an 8-bit date and a 16-bit date (or a 16-bit date holding 0..255 and one
holding reflectance in thousands) puts them on different scales, and most of the scene then
reads as change with exit status 0.
"""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from tasks.change_detection.common import CDConfig, parse_stretch
from tasks.change_detection.data import EvalPairs
from tasks.change_detection.raster_io import read_pair
from tasks.change_detection.scene_io import predict_scene
from unimatch.config import load_config
from unimatch.errors import ConfigError, DataError

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def write_tif(path, array):
    count, height, width = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=array.dtype.name, crs=CRS, transform=TRANSFORM) as dst:
        dst.write(array)
    return path


def random_date(path, high, dtype, seed, size=(3, 24, 24)):
    return write_tif(path, np.random.default_rng(seed).integers(0, high, size).astype(dtype))


def unchanged_model(batch: torch.Tensor) -> torch.Tensor:
    n, _, height, width = batch.shape
    return torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(n, 2, height, width)


def predict(tmp_path, before, after, **kwargs):
    return predict_scene(before, after, tmp_path / "change.tif", unchanged_model, window=16, overlap=4,
                         progress=False, **kwargs)


@pytest.mark.parametrize("stretch", ["percentile", 256])
def test_predict_refuses_an_8_bit_and_a_16_bit_date_under_one_stretch(tmp_path, stretch):
    before = random_date(tmp_path / "2012.tif", 256, np.uint8, 0)
    after = random_date(tmp_path / "2016.tif", 4000, np.uint16, 1)
    with pytest.raises(DataError, match=r"different data types \(.*2012\.tif: uint8, .*2016\.tif: uint16\).*"
                                        r"--stretch 1,256"):
        predict(tmp_path, before, after, stretch=stretch)
    assert not (tmp_path / "change.tif").exists()


def test_predict_refuses_one_data_type_holding_different_value_ranges(tmp_path):
    """Both uint16: one date holds 8-bit values, the other reflectance in thousands."""
    before = random_date(tmp_path / "2012.tif", 256, np.uint16, 0)
    after = random_date(tmp_path / "2016.tif", 4000, np.uint16, 1)
    with pytest.raises(DataError, match=r"different ranges \(.*2012\.tif: 98th percentile 2\d\d, .*2016\.tif: "
                                        r"3\d\d\d; more than 8x apart\)"):
        predict(tmp_path, before, after, stretch=16)
    assert not (tmp_path / "change.tif").exists()


def test_predict_accepts_one_product_with_a_brightness_difference(tmp_path):
    before = random_date(tmp_path / "2012.tif", 1500, np.uint16, 0)
    after = random_date(tmp_path / "2016.tif", 4000, np.uint16, 1)
    with rasterio.open(predict(tmp_path, before, after)) as src:
        assert (src.read(1) == 0).all()


@pytest.mark.parametrize("high_before, dtype_before, stretch", [(256, np.uint8, [1, 256]),
                                                                (256, np.uint16, ["percentile", "percentile"])])
def test_predict_takes_two_products_with_a_stretch_for_each_date(tmp_path, high_before, dtype_before, stretch):
    before = random_date(tmp_path / "2012.tif", high_before, dtype_before, 0)
    after = random_date(tmp_path / "2016.tif", 4000, np.uint16, 1)
    with rasterio.open(predict(tmp_path, before, after, stretch=stretch)) as src:
        assert (src.read(1) == 0).all()


def test_tile_pair_of_two_data_types_is_refused_unless_each_date_has_its_stretch(tmp_path):
    """Training and evaluation read tiles through read_pair: the data-type check is per pair."""
    root = tmp_path / "tiles"
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True)
    random_date(root / "A" / "t.tif", 256, np.uint8, 0)
    after = np.random.default_rng(1).integers(0, 4000, (3, 24, 24)).astype(np.uint16)
    write_tif(root / "B" / "t.tif", after)
    write_tif(root / "label" / "t.tif", np.zeros((1, 24, 24), np.uint8))
    (root / "val.txt").write_text("t.tif\n")
    with pytest.raises(DataError, match=r"different data types \(.*A/t\.tif: uint8, .*B/t\.tif: uint16\)"):
        EvalPairs(root, root / "val.txt")[0]
    image, mask, name = EvalPairs(root, root / "val.txt", stretch=[1, 256])[0]
    expected_b = np.clip(np.floor(after / 256 + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(image[3:].numpy(), expected_b) and name == "t.tif"
    image_a, _ = read_pair(root / "A" / "t.tif", root / "B" / "t.tif", stretch=[1, 256])
    assert np.array_equal(image_a, image[:3].numpy())


def test_a_stretch_for_each_date_in_the_config_and_on_the_command_line():
    assert load_config(None, ["stretch=[percentile,256]"], schema=CDConfig).stretch == ["percentile", 256]
    assert parse_stretch("1,256") == [1.0, 256.0] and parse_stretch("percentile") == "percentile"
    assert parse_stretch("16") == 16.0
    for bad in ("stretch=[256]", "stretch=[1,2,3]", "stretch=[1,0]", "stretch=[percentile,bright]"):
        with pytest.raises(ConfigError, match="stretch"):
            load_config(None, [bad], schema=CDConfig)
    with pytest.raises(ConfigError, match="before,after"):
        parse_stretch("1,bright")
