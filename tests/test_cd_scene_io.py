"""Whole-scene change prediction: sliding windows, blending, streamed GeoTIFF/PNG output, bounded memory, bad inputs."""
import tracemalloc

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from tasks.change_detection.raster_io import read_pair
from tasks.change_detection.scene_io import blend_weights, predict_scene, window_starts
from unimatch.errors import DataError

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)


def write_tif(path, array, crs=CRS, transform=TRANSFORM):
    count, height, width = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=array.dtype.name, crs=crs, transform=transform) as dst:
        dst.write(array)
    return path


def scene_pair(tmp_path, height, width, count=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    high = 256 if dtype == np.uint8 else 4000
    paths = []
    for name in ("before.tif", "after.tif"):
        paths.append(write_tif(tmp_path / name, rng.integers(0, high, (count, height, width)).astype(dtype)))
    return paths


class TinyChangeNet:
    """A fixed two-layer conv net (receptive field 5x5, or 1x1 with ``kernel=1``) returning probabilities."""

    def __init__(self, kernel=3):
        generator = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(6, 4, kernel, padding=kernel // 2)
        self.conv2 = torch.nn.Conv2d(4, 2, kernel, padding=kernel // 2)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
                layer.bias.zero_()
        self.shapes = []

    def __call__(self, batch):
        assert batch.dtype == torch.uint8 and batch.shape[1] == 6
        self.shapes.append(tuple(batch.shape))
        x = batch.float() / 255.0
        return self.conv2(torch.relu(self.conv1(x))).softmax(1)


def whole_image_probability(path_a, path_b, kernel=3, **kwargs):
    image_a, image_b = read_pair(path_a, path_b, **kwargs)
    with torch.no_grad():
        return TinyChangeNet(kernel)(torch.from_numpy(np.concatenate([image_a, image_b]))[None])[0].numpy()


def test_window_layout_and_weights():
    assert window_starts(200, 64, 48) == [0, 48, 96, 136]
    assert window_starts(50, 64, 48) == [0]
    weights = blend_weights(64, 64, 16)
    assert weights.min() > 0 and weights[32, 32] == 1 and weights[0, 0] < weights[8, 8] < weights[20, 20]


def test_geotiff_scene_matches_whole_image_prediction_and_keeps_georeference(tmp_path):
    before, after = scene_pair(tmp_path, 150, 230, count=4, dtype=np.uint16)
    net = TinyChangeNet()
    out = predict_scene(before, after, tmp_path / "change.tif", net, window=64, overlap=16, bands=(3, 2, 1),
                        write_probability=True, progress=False)
    assert max(shape[2] for shape in net.shapes) == 64 and len(net.shapes) > 4
    expected = whole_image_probability(before, after, bands=(3, 2, 1))
    with rasterio.open(out) as src:
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM
        assert (src.width, src.height, src.count) == (230, 150, 2) and src.dtypes == ("uint8", "uint8")
        assert src.profile["tiled"] and src.compression.name.lower() == "deflate"
        assert src.colormap(1)[1] == (255, 255, 255, 255) and src.colormap(1)[0] == (0, 0, 0, 255)
        mask, probability = src.read(1), src.read(2)
    assert set(np.unique(mask)) <= {0, 1}
    error = np.abs(probability.astype(float) - expected[1] * 255)
    # only the 2 pixels next to a window edge see padding instead of context, and the blend
    # weights them by at most ~0.03
    assert (error <= 1.5).mean() > 0.99 and error.max() <= 0.03 * 255
    assert (mask == expected.argmax(0)).mean() > 0.999


def test_blending_is_exact_for_a_pointwise_model(tmp_path):
    before, after = scene_pair(tmp_path, 97, 131)
    out = predict_scene(before, after, tmp_path / "change.tif", TinyChangeNet(kernel=1), window=40, overlap=12,
                        write_probability=True, progress=False)
    expected = whole_image_probability(before, after, kernel=1)
    with rasterio.open(out) as src:
        assert np.abs(src.read(2).astype(float) - expected[1] * 255).max() <= 0.51
        assert (src.read(1) == expected.argmax(0)).all()


def test_png_pair_gives_png_mask_and_probability(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / name)
    out = predict_scene(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "change.png", TinyChangeNet(kernel=1),
                        window=32, overlap=8, write_probability=True, progress=False)
    expected = whole_image_probability(tmp_path / "a.png", tmp_path / "b.png", kernel=1)
    with Image.open(out) as image:
        assert image.mode == "P" and image.size == (90, 70)
        mask = np.asarray(image)
    assert (mask == expected.argmax(0)).all()
    with Image.open(tmp_path / "change_probability.png") as image:
        assert image.mode == "L"
        assert np.abs(np.asarray(image).astype(float) - expected[1] * 255).max() <= 0.51


def peak_memory(tmp_path, height, width, window, tag):
    before, after = scene_pair(tmp_path, height, width)
    tracemalloc.start()
    predict_scene(before, after, tmp_path / f"out-{tag}.tif", TinyChangeNet(), window=window, overlap=window // 4,
                  write_probability=True, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_grows_with_the_window_not_with_the_scene(tmp_path):
    peak_memory(tmp_path, 64, 96, 32, "warm-up")
    short = peak_memory(tmp_path, 192, 96, 32, "short")
    tall = peak_memory(tmp_path, 768, 96, 32, "tall")
    wide_window = peak_memory(tmp_path, 768, 96, 64, "wide-window")
    scene_bytes = 768 * 96 * 6
    assert tall < 1.3 * short
    assert tall < scene_bytes / 2
    assert wide_window > 1.5 * tall


@pytest.mark.parametrize("change, message", [
    ("size", "size"), ("count", "band count"), ("crs", "CRS"), ("transform", "transform")])
def test_mismatched_dates_are_named(tmp_path, change, message):
    base = np.zeros((3, 40, 40), np.uint8)
    write_tif(tmp_path / "before.tif", base)
    kwargs = {}
    array = base
    if change == "size":
        array = np.zeros((3, 40, 41), np.uint8)
    elif change == "count":
        array = np.zeros((4, 40, 40), np.uint8)
    elif change == "crs":
        kwargs["crs"] = "EPSG:4326"
    else:
        kwargs["transform"] = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 4000000.0)
    write_tif(tmp_path / "after.tif", array, **kwargs)
    with pytest.raises(DataError, match=message) as error:
        predict_scene(tmp_path / "before.tif", tmp_path / "after.tif", tmp_path / "out.tif", TinyChangeNet(),
                      window=32, overlap=8, progress=False)
    assert "before.tif" in str(error.value) and "after.tif" in str(error.value)
    assert not (tmp_path / "out.tif").exists()


def test_unreadable_scene_and_mixed_formats(tmp_path):
    before, _ = scene_pair(tmp_path, 32, 32)
    (tmp_path / "broken.tif").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="broken.tif"):
        predict_scene(before, tmp_path / "broken.tif", tmp_path / "out.tif", TinyChangeNet(), progress=False)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "after.png")
    with pytest.raises(DataError, match="GeoTIFF and the other is not"):
        predict_scene(before, tmp_path / "after.png", tmp_path / "out.tif", TinyChangeNet(), progress=False)
    with pytest.raises(DataError, match=r"\.tif, \.tiff or \.png"):
        predict_scene(before, before, tmp_path / "out.jpg", TinyChangeNet(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.png", "after.tif", "before.tif", "broken.tif"]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    before, after = scene_pair(tmp_path, 40, 40)
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(DataError, match="already exists"):
        predict_scene(before, after, out, TinyChangeNet(), window=32, overlap=8, progress=False)
    assert out.read_bytes() == b"keep me"
    predict_scene(before, after, out, TinyChangeNet(), window=32, overlap=8, overwrite=True, progress=False)
    with rasterio.open(out) as src:
        assert src.count == 1


def test_failure_during_prediction_leaves_no_output(tmp_path):
    before, after = scene_pair(tmp_path, 100, 40)
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return TinyChangeNet()(batch)

    with pytest.raises(RuntimeError):
        predict_scene(before, after, tmp_path / "out.tif", failing, window=32, overlap=8, batch_size=1,
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif"]


def test_nodata_of_either_date_is_nodata_in_the_change_map(tmp_path):
    """Nodata pixels (a nodata value in A, NaN declared as nodata in a float B) are class 255 and masked.
    A (uint16) and B (float32) are two products, so each date is given its own stretch."""
    rng = np.random.default_rng(1)
    before = rng.integers(1, 4000, (3, 70, 90)).astype(np.uint16)
    before[:, 10:20, 5:30] = 0
    after = rng.uniform(1, 4000, (3, 70, 90)).astype(np.float32)
    after[:, 40:60, 50:80] = np.nan
    with rasterio.open(tmp_path / "a.tif", "w", driver="GTiff", width=90, height=70, count=3, dtype="uint16",
                       crs=CRS, transform=TRANSFORM, nodata=0) as dst:
        dst.write(before)
    with rasterio.open(tmp_path / "b.tif", "w", driver="GTiff", width=90, height=70, count=3, dtype="float32",
                       crs=CRS, transform=TRANSFORM, nodata=np.nan) as dst:
        dst.write(after)
    out = predict_scene(tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "change.tif", TinyChangeNet(),
                        window=32, overlap=8, write_probability=True, progress=False,
                        stretch=["percentile", "percentile"])
    expected_nodata = np.zeros((70, 90), bool)
    expected_nodata[10:20, 5:30] = expected_nodata[40:60, 50:80] = True
    with rasterio.open(out) as src:
        classes, probability = src.read(1), src.read(2)
        dataset_mask = src.dataset_mask()
    assert np.array_equal(classes == 255, expected_nodata)
    assert set(np.unique(classes[~expected_nodata])) <= {0, 1}
    assert np.array_equal(dataset_mask == 0, expected_nodata)
    assert not probability[expected_nodata].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "change.tif"]


@pytest.mark.parametrize("stretch", ["percentile", 256])
def test_truncated_geotiff_is_one_error_naming_the_file(tmp_path, stretch):
    """Whether the damage is met by the percentile overview or by a strip read."""
    before, after = scene_pair(tmp_path, 300, 300, dtype=np.uint16)
    data = after.read_bytes()
    after.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"after\.tif: cannot read .*truncated or corrupt"):
        predict_scene(before, after, tmp_path / "change.tif", TinyChangeNet(), window=64, overlap=16,
                      stretch=stretch, progress=False)
    assert not list(tmp_path.glob("*change*"))


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("which", ["before", "after"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, which, overwrite):
    """Without --overwrite too the message says it is an input (not "pass --overwrite")."""
    before, after = scene_pair(tmp_path, 40, 40)
    target = before if which == "before" else after
    original = target.read_bytes()
    with pytest.raises(DataError, match=f"would overwrite the input .*{target.name}"):
        predict_scene(before, after, target, TinyChangeNet(), window=32, overlap=8, overwrite=overwrite,
                      progress=False)
    assert target.read_bytes() == original


def test_float_scene_with_nan_is_named_and_leaves_no_output(tmp_path):
    rng = np.random.default_rng(0)
    before = write_tif(tmp_path / "before.tif", rng.random((3, 40, 50)).astype(np.float32))
    after_data = rng.random((3, 40, 50)).astype(np.float32)
    after_data[1, 30, 7] = np.inf
    after = write_tif(tmp_path / "after.tif", after_data)
    with pytest.raises(DataError, match=r"after\.tif: 1 NaN/Inf"):
        predict_scene(before, after, tmp_path / "out.tif", TinyChangeNet(), window=16, overlap=4, stretch=1.0,
                      progress=False)
    assert not (tmp_path / "out.tif").exists()


def test_scene_truncated_after_its_first_strips_leaves_no_output_and_no_temporary_file(tmp_path):
    """The windows of the first strips are predicted (and a temporary output opened) before the
    broken strip is read; the error still leaves the folder as it was."""
    before, after = scene_pair(tmp_path, 200, 64)
    data = after.read_bytes()
    after.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(DataError, match="after.tif: cannot read rows"):
        predict_scene(before, after, tmp_path / "change.tif", TinyChangeNet(), window=32, overlap=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif"]
