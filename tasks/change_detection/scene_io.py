"""Whole-scene change prediction: sliding windows over a before/after pair, blended, streamed to disk.

The scene is never held in memory. Windows of ``window`` pixels overlap by ``overlap``; each
window's class probabilities are weighted by a 2-D raised-cosine ramp (1 in the middle, falling
smoothly towards the window's edges over ``overlap`` pixels, never 0) and accumulated; the
weighted mean is the prediction. The accumulators cover one strip of windows (``window`` rows x
the scene width); rows that no later window can touch are written out and dropped as the strip
moves down. Input is read one strip at a time with rasterio windows. Peak memory therefore grows
with ``window x scene width``, not with the scene's height.

Output
------
- GeoTIFF (``.tif``/``.tiff``): the input's CRS and geotransform, tiled 256x256, deflate;
  band 1 = class index (uint8; 0 unchanged, 1 changed) with a colour map (0 black, 1 white,
  further classes coloured), band 2 (``write_probability``) = probability of class 1 for a
  binary model, of the predicted class otherwise, as uint8 ``round(255 * p)``.
- No data: a pixel that is missing in either date by GDAL's dataset mask (all its bands equal to
  the nodata value, alpha 0, internal or ``.msk`` mask 0; one band at the nodata value is data:
  :func:`~tasks.change_detection.raster_io.valid_pixels`), or a NaN float, is not a prediction. It gets
  class ``NODATA_CLASS`` (255, grey in the colour map) and probability 0, and a GeoTIFF output
  carries it in its internal mask too, so GIS software shows it as no data, never as "unchanged".
- PNG: band 1 as a palette PNG of class indices (the same colours); the probability as a
  separate 8-bit PNG ``<name>_probability.png``. PNG cannot be written window by window, so a
  PNG output is assembled in memory: use GeoTIFF for large scenes.

Files are written under a temporary name and renamed when complete; existing outputs are never
replaced unless ``overwrite=True``.

Input bands are chosen and stretched to uint8 as in :mod:`tasks.change_detection.raster_io` (for the
percentile rule, the percentiles of the whole file, from a decimated read; a pair of rules
stretches each date by its own).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from tasks.change_detection.raster_io import (DEFAULT_BANDS, check_bands, check_pair, check_same_product,
                                              check_stretch, date_stretches, is_geotiff, open_raster,
                                              percentile_limits, raster_info, read_image, stretch_to_uint8,
                                              upper_value, valid_pixels)
from unimatch import atomic
from unimatch.errors import DataError
from unimatch.finite import require_finite
from unimatch.paths import guard_outputs

PredictFn = Callable[[torch.Tensor], torch.Tensor]
PALETTE = [(0, 0, 0), (255, 255, 255), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240)]
OUTPUT_SUFFIXES = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG"}
NODATA_CLASS = 255
NODATA_COLOUR = (128, 128, 128)


def palette_colour(index: int) -> tuple[int, int, int]:
    return NODATA_COLOUR if index == NODATA_CLASS else PALETTE[index % len(PALETTE)]


class GeoTiffDate:
    """One date of a GeoTIFF scene, read one window (or strip of rows) at a time. Non-8-bit data get
    their percentiles from a decimated read, for the percentile stretch and the value-range check;
    a date reopened in another process takes the ``limits`` computed once."""

    def __init__(self, path: Path, bands: Sequence[int], stretch, limits=None):
        self.src = open_raster(path)
        self.info = raster_info(self.src)
        self.bands = check_bands(bands, self.src.count, path)
        self.stretch = stretch
        self.limits = limits
        if self.src.dtypes[0] != "uint8" and limits is None:
            try:
                self.limits = percentile_limits(self.src, self.bands)
            except RasterioError as error:
                raise unreadable(self.src.name, "its overview for the value statistics", error) from None
        self.upper = upper_value(self.limits)

    def read_rows(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 bands of rows ``row..row+count`` and where they hold data (bool, H x W)."""
        return self.read_window(row, 0, count, self.info.width)

    def read_window(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 bands of ``height x width`` pixels from (``row``, ``col``) and where they hold data."""
        window = Window(col, row, width, height)
        try:
            array = self.src.read(self.bands, window=window)
            valid = valid_pixels(self.src, array, window)
        except RasterioError as error:
            columns = "" if (col, width) == (0, self.info.width) else f", columns {col}-{col + width - 1}"
            raise unreadable(self.src.name, f"rows {row}-{row + height - 1}{columns}", error) from None
        array = require_finite(array, self.info.path, self.src.nodata)
        array = stretch_to_uint8(array, self.stretch, self.limits)
        array[:, ~valid] = 0
        return array, valid

    def close(self) -> None:
        self.src.close()


def unreadable(path: str, what: str, error: Exception) -> DataError:
    """The one-line error for a raster GDAL cannot decode (GDAL's own reason is in the cause)."""
    return DataError(f"{path}: cannot read {what} ({error.__cause__ or error}); the file may be truncated "
                     "or corrupt - re-copy or re-export it")


class ImageDate:
    """One date of a PNG/JPEG pair (small by nature: decoded whole)."""

    def __init__(self, path: Path, bands: Sequence[int], stretch):
        self.array, self.info = read_image(path, bands, stretch)
        self.upper = None

    def read_rows(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.array[:, row:row + count]
        return rows, np.ones(rows.shape[1:], bool)

    def close(self) -> None:
        self.array = None


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with ``window``-sized steps of ``stride``; the last flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def ramp(length: int, overlap: int) -> np.ndarray:
    """1-D blending weights: raised cosine over ``overlap`` pixels at both ends, 1 in between, > 0 everywhere."""
    weights = np.ones(length, np.float64)
    width = min(overlap, length // 2)
    if width > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
        weights[:width] = rise
        weights[length - width:] = rise[::-1]
    return weights


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    return np.outer(ramp(height, overlap), ramp(width, overlap)).astype(np.float32)


class GeoTiffSink:
    """Writes finished rows into a tiled, deflate-compressed GeoTIFF under a temporary name."""

    def __init__(self, path: Path, info, nclass: int, write_probability: bool):
        self.path = path
        self.tmp = atomic.temporary_sibling(path)
        # The no-data mask goes inside the file, not into a .msk side file left behind by the rename.
        self.env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True)
        self.env.__enter__()
        profile = dict(driver="GTiff", width=info.width, height=info.height, count=2 if write_probability else 1,
                       dtype="uint8", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
        if info.crs is not None:
            profile["crs"] = info.crs
        if info.transform is not None:
            profile["transform"] = info.transform
        if write_probability:
            profile["photometric"] = "MINISBLACK"
        self.dst = rasterio.open(self.tmp, "w", **profile)
        self.dst.set_band_description(1, "change class (0 unchanged, 1 changed)" if nclass == 2 else "class")
        colours = {i: palette_colour(i) + (255,) for i in range(max(nclass, 2))}
        self.dst.write_colormap(1, {**colours, NODATA_CLASS: NODATA_COLOUR + (0,)})
        if write_probability:
            self.dst.set_band_description(2, "probability x 255" + (" of change" if nclass == 2 else " of the class"))

    def write_rows(self, row: int, mask: np.ndarray, probability: np.ndarray | None, valid: np.ndarray) -> None:
        window = Window(0, row, mask.shape[1], mask.shape[0])
        self.dst.write(mask, 1, window=window)
        if probability is not None:
            self.dst.write(probability, 2, window=window)
        self.dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def finish(self) -> None:
        self.dst.close()
        self.env.__exit__(None, None, None)
        atomic.commit(self.tmp, self.path)

    def abort(self) -> None:
        self.dst.close()
        self.env.__exit__(None, None, None)
        self.tmp.unlink(missing_ok=True)


class PngSink:
    """Collects the rows of a PNG output (palette mask, optional 8-bit probability) in memory."""

    def __init__(self, path: Path, info, nclass: int, write_probability: bool):
        self.path = path
        self.probability_path = probability_png_path(path) if write_probability else None
        self.nclass = nclass
        self.mask = np.zeros((info.height, info.width), np.uint8)
        self.probability = np.zeros((info.height, info.width), np.uint8) if write_probability else None

    def write_rows(self, row: int, mask: np.ndarray, probability: np.ndarray | None, valid: np.ndarray) -> None:
        self.mask[row:row + mask.shape[0]] = mask
        if probability is not None:
            self.probability[row:row + mask.shape[0]] = probability

    def finish(self) -> None:
        image = Image.fromarray(self.mask, mode="P")
        image.putpalette([c for i in range(256) for c in palette_colour(i)])
        save_atomic(image, self.path)
        if self.probability is not None:
            save_atomic(Image.fromarray(self.probability, mode="L"), self.probability_path)

    def abort(self) -> None:
        self.mask = self.probability = None


def probability_png_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_probability.png")


def save_atomic(image: Image.Image, path: Path) -> None:
    with atomic.atomic_output(path) as temporary:
        image.save(temporary, format="PNG")


def open_date(path: Path, bands, stretch):
    if not path.is_file():
        raise DataError(f"input scene {path} does not exist")
    return GeoTiffDate(path, bands, stretch) if is_geotiff(path) else ImageDate(path, bands, stretch)


def predict_scene(before_path: str | Path, after_path: str | Path, out_path: str | Path, predict_fn: PredictFn,
                  window: int = 256, overlap: int = 64, bands: Sequence[int] = DEFAULT_BANDS, stretch="percentile",
                  write_probability: bool = False, overwrite: bool = False, progress: bool = True,
                  batch_size: int = 4) -> Path:
    """Predict the change between two co-registered scenes and write it to ``out_path``.

    ``predict_fn`` takes a uint8 tensor ``(N, 2*len(bands), h, w)`` (before's bands then after's)
    and returns class probabilities ``(N, nclass, h, w)`` (softmax already applied); it is
    called under ``torch.no_grad``. ``stretch`` is one rule for both dates or ``[before's, after's]``;
    with one rule, dates of different products are refused
    (:func:`~tasks.change_detection.raster_io.check_same_product`). Returns ``out_path``.
    """
    before_path, after_path, out_path = Path(before_path), Path(after_path), Path(out_path)
    check_stretch(stretch)
    if window < 1 or not 0 <= overlap < window:
        raise DataError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    fmt = OUTPUT_SUFFIXES.get(out_path.suffix.lower())
    if fmt is None:
        raise DataError(f"output {out_path} must end in .tif, .tiff or .png")
    outputs = [out_path] + ([probability_png_path(out_path)] if fmt == "PNG" and write_probability else [])
    guard_outputs(outputs, [before_path, after_path], overwrite)
    if not out_path.parent.is_dir():
        raise DataError(f"output folder {out_path.parent} does not exist")
    if is_geotiff(before_path) != is_geotiff(after_path):
        raise DataError(f"one date is a GeoTIFF and the other is not: {before_path} and {after_path}")

    dates = []
    sink = None
    try:
        stretch_before, stretch_after = date_stretches(stretch)
        dates = [open_date(before_path, bands, stretch_before)]
        dates.append(open_date(after_path, bands, stretch_after))
        check_pair(dates[0].info, dates[1].info)
        check_same_product(dates[0].info, dates[1].info, stretch, dates[0].upper, dates[1].upper)
        height, width = dates[0].info.height, dates[0].info.width
        win_h, win_w = min(window, height), min(window, width)
        rows = window_starts(height, win_h, window - overlap)
        cols = window_starts(width, win_w, window - overlap)
        weights = blend_weights(win_h, win_w, overlap)
        accumulator = weight_sum = None
        with torch.no_grad(), tqdm(total=len(rows) * len(cols), unit="window", disable=not progress,
                                   desc=f"predict {out_path.name}") as bar:
            for index, top in enumerate(rows):
                strips, valid = zip(*(date.read_rows(top, win_h) for date in dates))
                valid = np.logical_and(*valid)
                for start in range(0, len(cols), batch_size):
                    lefts = cols[start:start + batch_size]
                    batch = np.stack([np.concatenate([s[:, :, x:x + win_w] for s in strips]) for x in lefts])
                    probabilities = run_predict(predict_fn, batch)
                    if accumulator is None:
                        nclass = probabilities.shape[1]
                        accumulator = np.zeros((nclass, win_h, width), np.float32)
                        weight_sum = np.zeros((win_h, width), np.float32)
                        sink = (GeoTiffSink if fmt == "GTiff" else PngSink)(out_path, dates[0].info, nclass,
                                                                            write_probability)
                    for left, probability in zip(lefts, probabilities):
                        accumulator[:, :, left:left + win_w] += probability * weights
                        weight_sum[:, left:left + win_w] += weights
                    bar.update(len(lefts))
                done = (rows[index + 1] if index + 1 < len(rows) else top + win_h) - top
                mean = accumulator[:, :done] / weight_sum[:done]
                mask = mean.argmax(0).astype(np.uint8)
                probability = probability_band(mean) if write_probability else None
                holds_data = valid[:done]
                mask[~holds_data] = NODATA_CLASS
                if probability is not None:
                    probability[~holds_data] = 0
                sink.write_rows(top, mask, probability, holds_data)
                accumulator[:, :win_h - done] = accumulator[:, done:]
                accumulator[:, win_h - done:] = 0
                weight_sum[:win_h - done] = weight_sum[done:]
                weight_sum[win_h - done:] = 0
        sink.finish()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        for date in dates:
            date.close()
    return out_path


def run_predict(predict_fn: PredictFn, batch: np.ndarray) -> np.ndarray:
    output = predict_fn(torch.from_numpy(batch))
    output = output.detach().float().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output, np.float32)
    n, _, h, w = batch.shape
    if output.ndim != 4 or output.shape[0] != n or output.shape[2:] != (h, w):
        raise ValueError(f"predict_fn must return probabilities of shape (N, nclass, {h}, {w}) for N={n}, "
                         f"got {tuple(output.shape)}")
    return output


def probability_band(mean: np.ndarray) -> np.ndarray:
    """uint8 255*p: p of class 1 for two classes, of the winning class otherwise."""
    probability = mean[1] if mean.shape[0] == 2 else mean.max(0)
    return np.clip(probability * 255 + 0.5, 0, 255).astype(np.uint8)
