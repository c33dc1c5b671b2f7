"""Readers and datasets for bi-temporal change detection.

Formats
-------
- Tiles as PNG/JPEG (WHU-CD, LEVIR-CD processed layout): ``root/A/<name>``, ``root/B/<name>``,
  ``root/label/<name>`` with the same file name in each folder.
- GeoTIFF (``.tif``/``.tiff``, read with rasterio), any number of bands of any data type.

Bands are chosen with ``bands`` (1-based, as rasterio numbers them; default ``(1, 2, 3)``). 8-bit
data pass unchanged. Any other data type (uint16 reflectance, float) is mapped to uint8 by the
``stretch`` rule:

- ``"percentile"`` (default): per band, the 2nd..98th percentile of *that file* (nodata excluded,
  read from an overview of at most ``PERCENTILE_MAX_SIDE`` pixels a side) maps linearly to
  0..255, values outside are clipped. Each date is stretched on its own, which also removes a
  global brightness difference between the dates.
- a number ``d``: ``uint8 = clip(value / d, 0, 255)`` (e.g. 256 for the full uint16 range,
  16 for 12-bit data, 4 for 0..1000 reflectance); the same for every file, so absolute
  radiometry is kept.

A and B of one pair must share size, band count, CRS and geotransform; labels 0/255 become
classes 0/1 (``class_values`` lists the pixel value of each class for other encodings).

Datasets follow the data contract of the core: labelled items ``(image, mask)``, unlabelled
``(image, ignore_mask)``, evaluation items ``(image, mask, name)``; ``image`` is uint8
``(2*len(bands), H, W)`` (A's bands then B's), masks int64 with 255 = ignore. Training items get
the weak augmentation of the official code with the same random parameters for A, B and the
label: random rescale 0.8-1.2, crop with padding (image 0, label 255), horizontal flip, and with
``nadir_augment`` also vertical flip and rotation by a multiple of 90 degrees.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch.utils.data import Dataset

from unimatch.errors import DataError

GEOTIFF_SUFFIXES = (".tif", ".tiff")
PERCENTILE_MAX_SIDE = 1024
PERCENTILE_RANGE = (2.0, 98.0)
DEFAULT_BANDS = (1, 2, 3)
DEFAULT_CLASS_VALUES = (0, 255)


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
        raise DataError(f"cannot read raster {path}: {error}. Check that it is a valid GeoTIFF") from error


def raster_info(src) -> RasterInfo:
    return RasterInfo(str(src.name), src.width, src.height, src.count, src.dtypes[0], src.crs, src.transform)


def check_bands(bands: Sequence[int], count: int, path) -> list[int]:
    bands = [int(b) for b in bands]
    if not bands or min(bands) < 1 or max(bands) > count:
        raise DataError(f"{path} has {count} band(s); bands {tuple(bands)} must each be in 1..{count} "
                        f"(1-based, as rasterio numbers them)")
    return bands


def check_stretch(stretch) -> None:
    if stretch == "percentile":
        return
    if isinstance(stretch, str) or not isinstance(stretch, (int, float)) or not stretch > 0:
        raise DataError(f"stretch must be 'percentile' or a positive divisor, got {stretch!r}")


def percentile_limits(src, bands: Sequence[int], percentiles=PERCENTILE_RANGE,
                      max_side: int = PERCENTILE_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) percentiles of a whole raster, from a decimated read of bounded size."""
    factor = max(1, math.ceil(max(src.width, src.height) / max_side))
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    sample = src.read(list(bands), out_shape=shape, masked=True).astype(np.float64)
    low = np.zeros(len(bands))
    high = np.ones(len(bands))
    for i, band in enumerate(sample):
        values = band.compressed()
        values = values[np.isfinite(values)]
        if values.size:
            low[i], high[i] = np.percentile(values, percentiles)
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
            array = src.read(bands)
            limits = percentile_limits(src, bands) if stretch == "percentile" and array.dtype != np.uint8 else None
            if src.nodata is not None and array.dtype != np.uint8:
                nodata = np.any(array == src.nodata, axis=0)
            else:
                nodata = None
        array = stretch_to_uint8(array, stretch, limits)
        if nodata is not None:
            array[:, nodata] = 0
        return array, info
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    count, height, width = array.shape
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


def check_pair(info_a: RasterInfo, info_b: RasterInfo) -> None:
    """A and B must cover the same pixels: same size, band count, CRS and geotransform."""
    problems = []
    if (info_a.width, info_a.height) != (info_b.width, info_b.height):
        problems.append(f"size {info_a.width}x{info_a.height} vs {info_b.width}x{info_b.height}")
    if info_a.count != info_b.count:
        problems.append(f"band count {info_a.count} vs {info_b.count}")
    if info_a.crs != info_b.crs:
        problems.append(f"CRS {info_a.crs} vs {info_b.crs}")
    if not same_transform(info_a.transform, info_b.transform):
        problems.append(f"transform {tuple(info_a.transform or ())} vs {tuple(info_b.transform or ())}")
    if problems:
        raise DataError(f"the two dates do not match ({'; '.join(problems)}): {info_a.path} and {info_b.path}. "
                        f"Resample/reproject one onto the other's grid first")


def read_pair(path_a: str | Path, path_b: str | Path, bands: Sequence[int] = DEFAULT_BANDS,
              stretch="percentile") -> tuple[np.ndarray, np.ndarray]:
    """Both dates as uint8 (C, H, W) arrays, checked to share grid and band count."""
    if is_geotiff(path_a) != is_geotiff(path_b):
        raise DataError(f"one date is a GeoTIFF and the other is not: {path_a} and {path_b}")
    image_a, info_a = read_image(path_a, bands, stretch)
    image_b, info_b = read_image(path_b, bands, stretch)
    check_pair(info_a, info_b)
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
    """Label image as int64 (H, W) class ids. RGB labels are accepted when their channels agree."""
    path = Path(path)
    if is_geotiff(path):
        with open_raster(path) as src:
            values = src.read(1)
    else:
        try:
            with Image.open(path) as image:
                values = np.asarray(image.convert("RGB") if image.mode == "P" else image)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read label {path}: {error}") from error
        if values.ndim == 3:
            if not (values[..., :3] == values[..., :1]).all():
                raise DataError(f"label {path} is a colour image with differing channels; save it as a "
                                f"single-band 0/255 PNG")
            values = values[..., 0]
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"label {path} holds {values.dtype} values; labels must be integer class values")
    return encode_classes(values.astype(np.int64), path, class_values)


class PairAugment:
    """Weak geometric augmentation applied with identical parameters to A, B and the mask.

    As the official remote-sensing code: random rescale (bilinear images, nearest mask), pad to
    ``crop_size`` at the bottom/right (image 0, mask 255), random crop, horizontal flip p=0.5;
    ``nadir_augment`` adds vertical flip p=0.5 and a uniform rotation by 0/90/180/270 degrees
    (sensible for nadir imagery, where there is no "up").

    The draws come from one generator stream owned by this object (:meth:`reseed`). Not
    albumentations' ``Compose(seed=...)``: in albumentations 2.0 that gives every transform its
    own generator with the *same* seed, so e.g. the horizontal and vertical flips always fire
    together.
    """

    def __init__(self, crop_size: int = 256, scale_range: tuple[float, float] = (0.8, 1.2),
                 hflip: float = 0.5, nadir_augment: bool = False, seed: int = 0):
        transforms = [
            A.RandomScale(scale_limit=(scale_range[0] - 1, scale_range[1] - 1), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, position="top_left",
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255),
            A.RandomCrop(crop_size, crop_size),
            A.HorizontalFlip(p=hflip),
        ]
        if nadir_augment:
            transforms += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
        self.crop_size = crop_size
        self.transform = A.Compose(transforms, additional_targets={"image_b": "image"})
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream from ``seed`` (one stream shared by all transforms)."""
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image_a: np.ndarray, image_b: np.ndarray, mask: np.ndarray):
        """(C,H,W) uint8 images and (H,W) mask -> augmented copies, the same draw for all three."""
        out = self.transform(image=np.moveaxis(image_a, 0, -1), image_b=np.moveaxis(image_b, 0, -1), mask=mask)
        return (np.ascontiguousarray(np.moveaxis(out["image"], -1, 0).reshape(image_a.shape[0], *out["mask"].shape)),
                np.ascontiguousarray(np.moveaxis(out["image_b"], -1, 0).reshape(image_b.shape[0], *out["mask"].shape)),
                out["mask"])


def read_split(split_file: str | Path) -> list[tuple[int, str]]:
    """(line number, name) of each non-blank line of a split file."""
    split_file = Path(split_file)
    try:
        lines = split_file.read_text().splitlines()
    except OSError as error:
        raise DataError(f"cannot read split file {split_file}: {error}") from error
    entries = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise DataError(f"split file {split_file} lists no files; write one file name per line")
    return entries


class PairDataset(Dataset):
    """Names of a split file, checked to exist in each needed folder when the dataset is built."""

    def __init__(self, root: str | Path, split_file: str | Path, bands: Sequence[int] = DEFAULT_BANDS,
                 stretch="percentile", class_values: Sequence[int] = DEFAULT_CLASS_VALUES,
                 folders: tuple[str, str, str] = ("A", "B", "label"), need_labels: bool = True):
        check_stretch(stretch)
        self.root = Path(root)
        self.split_file = Path(split_file)
        self.bands = tuple(bands)
        self.stretch = stretch
        self.class_values = tuple(class_values)
        self.folders = folders if need_labels else folders[:2]
        entries = read_split(split_file)
        for folder in self.folders:
            if not (self.root / folder).is_dir():
                raise DataError(f"{self.root} has no {folder}/ folder; a change-detection root holds A/, B/ and label/")
        for number, name in entries:
            for folder in self.folders:
                if not (self.root / folder / name).is_file():
                    raise DataError(f"{self.root / folder / name} is missing: it is named on line {number} of "
                                    f"{self.split_file} and every pair needs {', '.join(f + '/' for f in self.folders)}")
        self.names = [name for _, name in entries]

    def __len__(self) -> int:
        return len(self.names)

    def read_images(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(self.root / self.folders[0] / name, self.root / self.folders[1] / name,
                         self.bands, self.stretch)

    def read_mask(self, name: str, shape) -> np.ndarray:
        path = self.root / self.folders[2] / name
        mask = read_label(path, self.class_values)
        if mask.shape != tuple(shape):
            raise DataError(f"label {path} is {mask.shape[1]}x{mask.shape[0]} but its images are "
                            f"{shape[1]}x{shape[0]}")
        return mask


class AugmentedPairs(PairDataset):
    """Training pairs: the augmentation stream restarts from ``seed`` and on :meth:`reseed`.

    The engine calls ``reseed`` in every loader worker and every epoch, so workers never repeat
    each other's views and a run is reproducible.
    """

    def __init__(self, root, split_file, crop_size: int = 256, nadir_augment: bool = False,
                 scale_range=(0.8, 1.2), seed: int = 0, need_labels: bool = True, **kwargs):
        super().__init__(root, split_file, need_labels=need_labels, **kwargs)
        self.augment = PairAugment(crop_size, scale_range, nadir_augment=nadir_augment, seed=seed)

    def reseed(self, seed: int) -> None:
        self.augment.reseed(seed)


class LabeledPairs(AugmentedPairs):
    """Training pairs with labels: ``(image uint8 (2C,h,w), mask int64 (h,w))``, augmented.

    ``nsample`` repeats the list (then truncates) to that length, as the official code does to
    match the labelled set to the unlabelled one.
    """

    def __init__(self, root, split_file, nsample: int | None = None, **kwargs):
        super().__init__(root, split_file, **kwargs)
        if nsample is not None and nsample > len(self.names):
            self.names = (self.names * math.ceil(nsample / len(self.names)))[:nsample]

    def __getitem__(self, index: int):
        name = self.names[index]
        image_a, image_b = self.read_images(name)
        mask = self.read_mask(name, image_a.shape[1:]).astype(np.uint8)
        image_a, image_b, mask = self.augment(image_a, image_b, mask)
        return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(mask.astype(np.int64))


class UnlabeledPairs(AugmentedPairs):
    """Training pairs without labels: ``(image, ignore_mask)``; 255 marks crop padding.

    Never opens a label file (the folder need not exist), unless ``label_for_stats``: then items
    are ``(image, ignore_mask, label_for_stats)``, the label cropped like the view, for the
    pseudo-label statistics only (unimatch/health.py; no loss uses it).
    """

    def __init__(self, root, split_file, label_for_stats: bool = False, **kwargs):
        super().__init__(root, split_file, need_labels=label_for_stats, **kwargs)
        self.label_for_stats = label_for_stats

    def __getitem__(self, index: int):
        name = self.names[index]
        image_a, image_b = self.read_images(name)
        inside = np.zeros(image_a.shape[1:], np.uint8)
        if self.label_for_stats:
            label = self.read_mask(name, image_a.shape[1:]).astype(np.uint8)
            image_a, image_b, label = self.augment(image_a, image_b, label)
            ignore = np.where(label == 255, 255, 0)
            return (torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(ignore.astype(np.int64)),
                    torch.from_numpy(label.astype(np.int64)))
        image_a, image_b, ignore = self.augment(image_a, image_b, inside)
        return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(ignore.astype(np.int64))


class EvalPairs(PairDataset):
    """Validation/test pairs at full resolution: ``(image, mask, name)``."""

    def __getitem__(self, index: int):
        name = self.names[index]
        image_a, image_b = self.read_images(name)
        mask = self.read_mask(name, image_a.shape[1:])
        return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(mask), name
