"""Reading bi-temporal rasters: PNG/JPEG tiles and GeoTIFFs of any band count and data type.

Formats
-------
- Tiles as PNG/JPEG (WHU-CD, LEVIR-CD processed layout): ``root/A/<name>``, ``root/B/<name>``,
  ``root/label/<name>`` with the same file name in each folder.
- GeoTIFF (``.tif``/``.tiff``, read with rasterio), any number of bands of any data type.

Bands are chosen with ``bands`` (1-based, as rasterio numbers them; default ``(1, 2, 3)``). 8-bit
data pass unchanged. Any other data type (uint16 reflectance, float) is mapped to uint8 by the
``stretch`` rule:

- ``"percentile"`` (default): per band, the 2nd..98th percentile of *that file* (missing pixels
  excluded, read from an overview of at most ``PERCENTILE_MAX_SIDE`` pixels a side) maps linearly to
  0..255, values outside are clipped. Each date is stretched on its own, which also removes a
  global brightness difference between the dates.
- a number ``d``: ``uint8 = clip(value / d, 0, 255)`` (e.g. 256 for the full uint16 range,
  16 for 12-bit data, 4 for 0..1000 reflectance); the same for every file, so absolute
  radiometry is kept.
- a pair ``[rule for A, rule for B]``: each date its own rule, for two products of different
  data types or value ranges (e.g. ``[1, 256]``: A 8-bit values kept, B's 16-bit values / 256).

One rule for both dates assumes both are one product. A pair whose dates differ in data type
(every tile pair and scene), or (same data type, not 8-bit) whose value ranges differ more than
``RANGE_RATIO`` times (the highest per-band 98th percentile of one date over the other's; GeoTIFF
scenes in predict, see :func:`check_same_product`), is refused unless a pair of rules is given:
one rule would put the dates on different scales and much of the scene would read as change.

A and B of one pair must share size, band count, CRS and geotransform; labels 0/255 become
classes 0/1 (``class_values`` lists the pixel value of each class for other encodings).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from unimatch.errors import DataError
from unimatch.finite import require_finite

GEOTIFF_SUFFIXES = (".tif", ".tiff")
PERCENTILE_MAX_SIDE = 1024
PERCENTILE_RANGE = (2.0, 98.0)
DEFAULT_BANDS = (1, 2, 3)
DEFAULT_CLASS_VALUES = (0, 255)
RANGE_RATIO = 8.0
REPLACE_FILE = "Replace the file with a complete one, or remove its name from the split file"


@dataclass(frozen=True)
class RasterInfo:
    """What must agree between the two dates of a pair."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: object = None
    transform: object = None


def is_geotiff(path: str | Path) -> bool:
    return Path(path).suffix.lower() in GEOTIFF_SUFFIXES


def open_raster(path: str | Path):
    """rasterio dataset of ``path``; an unreadable file is a DataError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as error:
        raise DataError(f"cannot read raster {path}: {error}. {REPLACE_FILE}") from error


def unreadable_raster(path, error: Exception) -> DataError:
    """A GeoTIFF whose pixels cannot be read (truncated, corrupt): the file and the fix."""
    detail = str(error.__cause__ or error.__context__ or error).rstrip(".")
    return DataError(f"cannot read the pixels of raster {path}: {detail}. The file may be truncated or corrupt. "
                     f"{REPLACE_FILE}")


def raster_info(src) -> RasterInfo:
    return RasterInfo(str(src.name), src.width, src.height, src.count, src.dtypes[0], src.crs, src.transform)


def check_bands(bands: Sequence[int], count: int, path) -> list[int]:
    bands = [int(b) for b in bands]
    if not bands or min(bands) < 1 or max(bands) > count:
        raise DataError(f"{path} has {count} band(s); bands {tuple(bands)} must each be in 1..{count} "
                        f"(1-based, as rasterio numbers them)")
    return bands


def is_per_date(stretch) -> bool:
    """Whether ``stretch`` gives each date its own rule (``[rule for A, rule for B]``)."""
    return isinstance(stretch, (list, tuple))


def date_stretches(stretch) -> tuple:
    """(A's rule, B's rule): one rule serves both dates, a pair gives each its own."""
    return tuple(stretch) if is_per_date(stretch) else (stretch, stretch)


def stretch_problem(stretch) -> str | None:
    """What is wrong with a ``stretch`` setting (one rule, or a pair of rules), or None."""
    if is_per_date(stretch) and len(stretch) != 2:
        return f"a stretch for each date takes two rules [A, B], got {list(stretch)!r}"
    for rule in date_stretches(stretch):
        if rule != "percentile" and (isinstance(rule, (str, bool)) or not isinstance(rule, (int, float))
                                     or not rule > 0):
            return f"{rule!r} must be 'percentile' or a positive divisor (e.g. 256)"
    return None


def check_stretch(stretch) -> None:
    problem = stretch_problem(stretch)
    if problem:
        raise DataError(f"stretch: {problem}")


def upper_value(limits: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """The highest per-band 98th percentile of a date (its value range), None when unknown."""
    if limits is None or not np.isfinite(limits[1]).all():
        return None
    return float(np.max(limits[1]))


def check_same_product(info_a: RasterInfo, info_b: RasterInfo, stretch, upper_a: float | None = None,
                       upper_b: float | None = None) -> None:
    """Refuse two dates that one stretch rule would put on different scales, unless ``stretch``
    gives each date its own rule: different data types, or (same non-8-bit type) value ranges
    ``upper_a``/``upper_b`` (see :func:`upper_value`) more than ``RANGE_RATIO`` times apart."""
    if is_per_date(stretch):
        return
    fix = ("convert one date to the other's product, or give each date its own stretch: stretch=[A,B] "
           "(predict: --stretch A,B), e.g. --stretch percentile,percentile (each date to its own 2-98 "
           "percentiles) or divisors such as --stretch 1,256")
    if info_a.dtype != info_b.dtype:
        raise DataError(f"the two dates hold different data types ({info_a.path}: {info_a.dtype}, {info_b.path}: "
                        f"{info_b.dtype}), so one stretch would put them on different scales; {fix}")
    if info_a.dtype == "uint8" or upper_a is None or upper_b is None or min(upper_a, upper_b) <= 0:
        return
    if max(upper_a, upper_b) / min(upper_a, upper_b) > RANGE_RATIO:
        raise DataError(f"the two dates' values have different ranges ({info_a.path}: 98th percentile "
                        f"{upper_a:.4g}, {info_b.path}: {upper_b:.4g}; more than {RANGE_RATIO:g}x apart), so one "
                        f"stretch would put them on different scales; {fix}")


def valid_pixels(src, array: np.ndarray, window=None) -> np.ndarray:
    """Where ``array`` (bands read from ``src``, over ``window``, at any out_shape) holds data, bool (H, W).

    GDAL's dataset mask decides, for the whole pixel: missing where *every* band equals the
    dataset's nodata value, where the alpha band is 0, or where the mask band (internal or
    ``.msk``) is 0. A pixel with one band at the nodata value (dark water ``[0, 3, 4]`` under
    nodata=0) is data. A float pixel with NaN in a read band has no value and is missing too.
    """
    valid = src.dataset_mask(window=window, out_shape=array.shape[1:]) > 0
    if array.dtype.kind == "f":
        valid &= np.all(np.isfinite(array), axis=0)
    return valid


def percentile_limits(src, bands: Sequence[int], percentiles=PERCENTILE_RANGE,
                      max_side: int = PERCENTILE_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) percentiles of the valid pixels of a whole raster, from a decimated read
    of bounded size; NaN for a raster without valid pixels (all of it then reads as 0)."""
    factor = max(1, math.ceil(max(src.width, src.height) / max_side))
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    sample = src.read(list(bands), out_shape=shape)
    values = sample[:, valid_pixels(src, sample)].astype(np.float64)
    if not values.size:
        return np.full(len(bands), np.nan), np.full(len(bands), np.nan)
    low, high = np.percentile(values, percentiles, axis=1)
    return low, high


def stretch_to_uint8(array: np.ndarray, stretch, limits: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Map a (C, H, W) array of any dtype to uint8 by the ``stretch`` rule (uint8 passes through)."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    if stretch == "percentile":
        low, high = (np.asarray(v, np.float32)[:, None, None] for v in limits)
        scaled = (array - low) * (255.0 / np.maximum(high - low, 1e-6))
    else:
        scaled = array / np.float32(stretch)
    return np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path, bands: Sequence[int] = DEFAULT_BANDS, stretch="percentile") -> tuple[np.ndarray, RasterInfo]:
    """One date as uint8 (C, H, W) and its :class:`RasterInfo`."""
    path = Path(path)
    check_stretch(stretch)
    if is_geotiff(path):
        with open_raster(path) as src:
            info = raster_info(src)
            bands = check_bands(bands, src.count, path)
            try:
                array = require_finite(src.read(bands), path, src.nodata)
                valid = valid_pixels(src, array)
            except RasterioIOError as error:
                raise unreadable_raster(path, error) from error
            limits = percentile_limits(src, bands) if stretch == "percentile" and array.dtype != np.uint8 else None
        array = stretch_to_uint8(array, stretch, limits)
        array[:, ~valid] = 0
        return array, info
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}. {REPLACE_FILE}") from error
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    count, height, width = array.shape
    if count == 1 and len(bands) > 1:
        raise DataError(f"{path} is a grayscale (1-band) image, but bands {tuple(bands)} asks for {len(bands)}; "
                        f"save it in colour like the other date, or, if every image is grayscale, train with "
                        f"bands=[1] in_channels=2 channel_group_size=1")
    bands = check_bands(bands, count, path)
    array = array[[b - 1 for b in bands]]
    limits = None
    if stretch == "percentile" and array.dtype != np.uint8:
        limits = tuple(np.stack(v) for v in zip(*(np.nanpercentile(band, PERCENTILE_RANGE) for band in array)))
    info = RasterInfo(str(path), width, height, count, str(array.dtype))
    return stretch_to_uint8(np.ascontiguousarray(array), stretch, limits), info


def same_transform(first, second) -> bool:
    """Equal geotransforms, up to float noise (1e-9 of a pixel size or of the origin)."""
    if first is None or second is None:
        return first is None and second is None
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(tuple(first), tuple(second)))


def grid_differences(info_a: RasterInfo, info_b: RasterInfo, count: bool = True) -> list[str]:
    """How two rasters differ in size, (``count``) band count, CRS and geotransform."""
    problems = []
    if (info_a.width, info_a.height) != (info_b.width, info_b.height):
        problems.append(f"size {info_a.width}x{info_a.height} vs {info_b.width}x{info_b.height}")
    if count and info_a.count != info_b.count:
        problems.append(f"band count {info_a.count} vs {info_b.count}")
    if info_a.crs != info_b.crs:
        problems.append(f"CRS {info_a.crs} vs {info_b.crs}")
    if not same_transform(info_a.transform, info_b.transform):
        problems.append(f"transform {tuple(info_a.transform or ())} vs {tuple(info_b.transform or ())}")
    return problems


def check_pair(info_a: RasterInfo, info_b: RasterInfo) -> None:
    """A and B must cover the same pixels: same size, band count, CRS and geotransform."""
    problems = grid_differences(info_a, info_b)
    if problems:
        raise DataError(f"the two dates do not match ({'; '.join(problems)}): {info_a.path} and {info_b.path}. "
                        f"Resample/reproject one onto the other's grid first")


def read_pair(path_a: str | Path, path_b: str | Path, bands: Sequence[int] = DEFAULT_BANDS,
              stretch="percentile") -> tuple[np.ndarray, np.ndarray]:
    """Both dates as uint8 (C, H, W) arrays, checked to share grid, band count and data type
    (:func:`check_same_product`; the value-range check needs whole scenes and is left to predict)."""
    if is_geotiff(path_a) != is_geotiff(path_b):
        raise DataError(f"one date is a GeoTIFF and the other is not: {path_a} and {path_b}")
    check_stretch(stretch)
    stretch_a, stretch_b = date_stretches(stretch)
    image_a, info_a = read_image(path_a, bands, stretch_a)
    image_b, info_b = read_image(path_b, bands, stretch_b)
    check_pair(info_a, info_b)
    check_same_product(info_a, info_b, stretch)
    return image_a, image_b


def encode_classes(values: np.ndarray, path, class_values: Sequence[int] = DEFAULT_CLASS_VALUES) -> np.ndarray:
    """Pixel values -> class ids (index in ``class_values``); any other value is a DataError."""
    lookup = np.full(max(int(values.max(initial=0)), max(class_values)) + 1, -1, np.int64)
    for class_id, value in enumerate(class_values):
        lookup[int(value)] = class_id
    if values.min(initial=0) < 0:
        raise DataError(f"label {path} has negative values; expected only {tuple(class_values)}")
    mask = lookup[values]
    if (mask < 0).any():
        unexpected = np.unique(values[mask < 0])[:10].tolist()
        raise DataError(f"label {path} has pixel values {unexpected} outside the class values {tuple(class_values)}; "
                        f"labels must be 0 (unchanged) / 255 (changed), or set class_values to the encoding used")
    return mask


def read_label(path: str | Path, class_values: Sequence[int] = DEFAULT_CLASS_VALUES) -> np.ndarray:
    """Label image as int64 (H, W) class ids."""
    return encode_classes(read_label_values(path), path, class_values)


def read_label_values(path: str | Path) -> np.ndarray:
    """The pixel values of a label image, int64 (H, W). RGB labels are accepted when their channels agree."""
    path = Path(path)
    if is_geotiff(path):
        with open_raster(path) as src:
            try:
                values = src.read(1)
            except RasterioIOError as error:
                raise unreadable_raster(path, error) from error
    else:
        try:
            with Image.open(path) as image:
                values = np.asarray(image.convert("RGB") if image.mode == "P" else image)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read label {path}: {error}. {REPLACE_FILE}") from error
        if values.ndim == 3:
            if not (values[..., :3] == values[..., :1]).all():
                raise DataError(f"label {path} is a colour image with differing channels; save it as a "
                                f"single-band 0/255 PNG")
            values = values[..., 0]
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"label {path} holds {values.dtype} values; labels must be integer class values")
    return values.astype(np.int64)
