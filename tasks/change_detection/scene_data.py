"""Training straight from whole GeoTIFF scenes: a before/after pair and a label raster, no tiling.

The config key ``scenes`` lists them (``[{before: a.tif, after: b.tif, label: l.tif}]``; ``label``
may be left out for a scene that only adds unlabelled windows; relative paths are read from the
working folder). Windows of ``crop_size`` are drawn on the fly from the dataset's random stream
(:class:`unimatch.data.WeakViewDataset`), so runs are reproducible and resume bit-exactly, and
only the window is read from disk: memory is bounded by the window, not by the scene.

- Label raster: on the images' grid; its pixel values are the ``class_values``; a pixel is not
  labelled (ignore, 255) where the raster's dataset mask says no data or where it holds
  ``label_ignore`` (the areas nobody digitised). A pixel missing in either date (GDAL's dataset
  mask, :func:`~tasks.change_detection.raster_io.valid_pixels`) is ignored too.
- Held-out region: the bottom ``scene_val_share`` of each labelled scene's rows is the validation
  set (tiled in windows of ``crop_size``, ``evaluate --split val``); labelled training windows lie
  above it. Unlabelled windows are drawn anywhere in every scene (they carry no label).
- Labelled windows are drawn around a labelled pixel (found once, by a windowed scan of the label
  raster into cells of ``crop_size / 4``); a window with less than ``MIN_VALID_SHARE`` data in
  either date, or (labelled) no labelled pixel, is redrawn, at most ``REDRAWS`` times.
- Each epoch draws ``scene_windows_per_epoch`` windows; each gets the weak augmentation of the tile
  datasets (:class:`~tasks.change_detection.data.PairAugment`). Stretch and the same-product check
  are predict's (:class:`~tasks.change_detection.scene_io.GeoTiffDate`,
  :func:`~tasks.change_detection.raster_io.check_same_product`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch.utils.data import Dataset

from tasks.change_detection.data import PairAugment
from tasks.change_detection.raster_io import (check_pair, check_same_product, check_stretch, date_stretches,
                                              encode_classes, grid_differences, is_geotiff, open_raster, raster_info)
from tasks.change_detection.scene_io import GeoTiffDate, unreadable, window_starts
from unimatch.data import IGNORE_INDEX, WeakViewDataset
from unimatch.errors import ConfigError, DataError

MIN_VALID_SHARE = 0.5     # a drawn window with less data than this in either date is redrawn
REDRAWS = 20              # draws of one window before the last one is kept
UNLABELLED = 254          # a pixel with data but no label, inside an unlabelled view with labels for statistics
SCENE_KEYS = ("before", "after", "label")
SCENE_ENTRY = "{before: A.tif, after: B.tif, label: LABEL.tif}"


@dataclass(frozen=True)
class SceneFiles:
    """One entry of ``scenes``."""

    before: Path
    after: Path
    label: Path | None


def scene_files(cfg) -> list[SceneFiles]:
    """The ``scenes`` entries of ``cfg``, checked (keys, values) and their files found."""
    if not isinstance(cfg.scenes, list) or not cfg.scenes:
        raise ConfigError(f"scenes: give a list of {SCENE_ENTRY}, got {cfg.scenes!r}")
    if cfg.label_ignore is not None and cfg.label_ignore in cfg.class_values:
        raise ConfigError(f"label_ignore: {cfg.label_ignore} is one of the class_values {cfg.class_values}")
    scenes = []
    for number, entry in enumerate(cfg.scenes, 1):
        if not isinstance(entry, dict) or not {"before", "after"} <= set(entry) or not set(entry) <= set(SCENE_KEYS):
            raise ConfigError(f"scenes entry {number} is {entry!r}; give {SCENE_ENTRY}")
        paths = {key: Path(str(entry[key])).absolute() for key in SCENE_KEYS if entry.get(key) is not None}
        for key, path in paths.items():
            if not path.is_file():
                raise DataError(f"scenes entry {number}: {key} {path} does not exist")
            if not is_geotiff(path):
                raise DataError(f"scenes entry {number}: {key} {path} is not a GeoTIFF (.tif/.tiff); tile PNG pairs "
                                f"into A/, B/ and label/ instead")
        scenes.append(SceneFiles(paths["before"], paths["after"], paths.get("label")))
    if all(scene.label is None for scene in scenes):
        raise ConfigError("scenes: no entry has a label raster; give label: LABEL.tif for at least one scene")
    return scenes


def resolved_scenes(cfg) -> list[dict]:
    """``scenes`` with absolute paths, as stored with the run (evaluate reads them from the checkpoint)."""
    return [{key: str(value) for key, value in vars(scene).items() if value is not None} for scene in scene_files(cfg)]


class Scene:
    """A before/after pair and its label raster, checked once; read window by window. Rasters are
    (re)opened in each process that reads them: a file handle is not shared across a fork."""

    def __init__(self, files: SceneFiles, bands: Sequence[int], stretch, class_values: Sequence[int],
                 label_ignore: int | None, val_share: float):
        check_stretch(stretch)
        self.files, self.bands, self.class_values = files, tuple(bands), tuple(class_values)
        self.label_ignore = label_ignore
        self.stretches = date_stretches(stretch)
        dates = [GeoTiffDate(path, self.bands, rule) for path, rule in zip((files.before, files.after), self.stretches)]
        try:
            check_pair(dates[0].info, dates[1].info)
            check_same_product(dates[0].info, dates[1].info, stretch, dates[0].upper, dates[1].upper)
        finally:
            for date in dates:
                date.close()
        self.limits = [date.limits for date in dates]
        info = dates[0].info
        self.height, self.width = info.height, info.width
        self.val_rows = max(1, round(self.height * val_share)) if files.label is not None else 0
        self.train_rows = self.height - self.val_rows
        if files.label is not None:
            with open_raster(files.label) as src:
                problems = grid_differences(raster_info(src), info, count=False)
            if problems:
                raise DataError(f"label raster {files.label} is on another grid than the images ({'; '.join(problems)}"
                                f"): rasterise the labels onto the grid of {files.before}")
        self._open, self._pid = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None, "_pid": None}   # a worker started by spawn opens its own

    def rasters(self):
        """(before, after, label or None), open in this process."""
        if self._pid != os.getpid():
            dates = [GeoTiffDate(path, self.bands, rule, limits) for path, rule, limits
                     in zip((self.files.before, self.files.after), self.stretches, self.limits)]
            label = open_raster(self.files.label) if self.files.label is not None else None
            self._open, self._pid = (*dates, label), os.getpid()
        return self._open

    def read(self, row: int, col: int, height: int, width: int, labels: bool = True):
        """(A, B uint8 (C,h,w), where both dates hold data, class ids int64 with 255 = ignore or None)."""
        before, after, label_src = self.rasters()
        image_a, valid_a = before.read_window(row, col, height, width)
        image_b, valid_b = after.read_window(row, col, height, width)
        valid = valid_a & valid_b
        if not labels or label_src is None:
            return image_a, image_b, valid, None
        labelled, values = self.read_labels(label_src, row, col, height, width)
        values[~labelled] = self.class_values[0]
        mask = encode_classes(values, self.files.label, self.class_values)
        mask[~(labelled & valid)] = IGNORE_INDEX
        return image_a, image_b, valid, mask

    def read_labels(self, src, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(labelled bool, values int64) of a window of the label raster."""
        window = Window(col, row, width, height)
        try:
            values = src.read(1, window=window).astype(np.int64)
            labelled = src.dataset_mask(window=window) > 0
        except RasterioError as error:
            where = f"rows {row}-{row + height - 1}, columns {col}-{col + width - 1}"
            raise unreadable(src.name, where, error) from None
        if self.label_ignore is not None:
            labelled &= values != self.label_ignore
        return labelled, values

    def labelled_cells(self, cell: int) -> np.ndarray:
        """(row, col) pixel corners of the ``cell``-sided cells above the held-out rows holding a
        labelled pixel, from a scan of the label raster in windows of ``4 * cell`` pixels."""
        label_src = self.rasters()[2]
        side = 4 * cell
        corners = []
        for top in range(0, self.train_rows, side):
            for left in range(0, self.width, side):
                height, width = min(side, self.train_rows - top), min(side, self.width - left)
                labelled = self.read_labels(label_src, top, left, height, width)[0]
                for r in range(0, height, cell):
                    for c in range(0, width, cell):
                        if labelled[r:r + cell, c:c + cell].any():
                            corners.append((top + r, left + c))
        return np.asarray(corners, np.int64).reshape(-1, 2)


def open_scenes(cfg) -> list[Scene]:
    return [Scene(files, cfg.bands, cfg.stretch, cfg.class_values, cfg.label_ignore, cfg.scene_val_share)
            for files in scene_files(cfg)]


def place(centre: int, offset: int, size: int, limit: int) -> int:
    """Start of a ``size`` window holding pixel ``centre`` at ``offset`` from its start, inside ``0..limit``."""
    return int(min(max(centre - offset, 0), max(limit - size, 0)))


class SceneWindows(WeakViewDataset):
    """``windows`` weak views per epoch drawn from the scenes; :class:`LabeledSceneWindows` and
    :class:`UnlabeledSceneWindows` say where."""

    def __init__(self, scenes: list[Scene], windows: int, crop_size: int = 256, nadir_augment: bool = False,
                 scale_range=(0.8, 1.2), seed: int = 0):
        self.scenes, self.crop_size = scenes, crop_size
        self.augment = PairAugment(crop_size, scale_range, nadir_augment=nadir_augment, seed=seed)
        WeakViewDataset.__init__(self, range(windows), seed, self.augment.transform)

    def draw(self, rng) -> tuple[Scene, int, int, int, int]:
        """(scene, row, col, height, width) of one window."""
        raise NotImplementedError

    def acceptable(self, valid: np.ndarray, mask: np.ndarray | None) -> bool:
        return valid.mean() >= MIN_VALID_SHARE

    def read_window(self, rng, labels: bool):
        for _ in range(REDRAWS):
            scene, row, col, height, width = self.draw(rng)
            image_a, image_b, valid, mask = scene.read(row, col, height, width, labels)
            if self.acceptable(valid, mask):
                break
        return image_a, image_b, valid, mask


class LabeledSceneWindows(SceneWindows):
    """``(image, mask)`` windows around labelled pixels, above each scene's held-out rows."""

    def __init__(self, scenes: list[Scene], windows: int, crop_size: int = 256, **kwargs):
        super().__init__(scenes, windows, crop_size, **kwargs)
        self.cell = max(1, crop_size // 4)
        self.cells = [(scene, scene.labelled_cells(self.cell)) for scene in scenes if scene.files.label is not None]
        self.cells = [(scene, corners) for scene, corners in self.cells if len(corners)]
        if not self.cells:
            raise DataError(f"the label rasters hold no labelled pixel above the held-out rows (scene_val_share) "
                            f"({', '.join(str(s.files.label) for s in scenes if s.files.label)}): check class_values, "
                            f"label_ignore and the rasters' nodata")
        self.weights = np.asarray([len(corners) for _, corners in self.cells], np.float64)
        self.weights /= self.weights.sum()

    def draw(self, rng):
        scene, corners = self.cells[rng.choice(len(self.cells), p=self.weights)]
        corner = corners[rng.integers(len(corners))]
        height, width = min(self.crop_size, scene.train_rows), min(self.crop_size, scene.width)
        pixel_row = min(int(corner[0]) + int(rng.integers(self.cell)), scene.train_rows - 1)
        pixel_col = min(int(corner[1]) + int(rng.integers(self.cell)), scene.width - 1)
        return (scene, place(pixel_row, int(rng.integers(height)), height, scene.train_rows),
                place(pixel_col, int(rng.integers(width)), width, scene.width), height, width)

    def acceptable(self, valid, mask) -> bool:
        return super().acceptable(valid, mask) and bool((mask != IGNORE_INDEX).any())

    def view(self, index: int, rng):
        image_a, image_b, _, mask = self.read_window(rng, labels=True)
        image_a, image_b, mask = self.augment(image_a, image_b, mask.astype(np.uint8))
        return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(mask.astype(np.int64))


class UnlabeledSceneWindows(SceneWindows):
    """``(image, ignore_mask)`` windows anywhere in the scenes (255 where no data or padded); with
    ``label_for_stats`` also the window's labels, for the pseudo-label statistics only."""

    def __init__(self, scenes: list[Scene], windows: int, label_for_stats: bool = False, **kwargs):
        super().__init__(scenes, windows, **kwargs)
        self.label_for_stats = label_for_stats
        areas = np.asarray([scene.height * scene.width for scene in scenes], np.float64)
        self.weights = areas / areas.sum()

    def draw(self, rng):
        scene = self.scenes[rng.choice(len(self.scenes), p=self.weights)]
        height, width = min(self.crop_size, scene.height), min(self.crop_size, scene.width)
        return (scene, int(rng.integers(scene.height - height + 1)), int(rng.integers(scene.width - width + 1)),
                height, width)

    def view(self, index: int, rng):
        image_a, image_b, valid, label = self.read_window(rng, labels=self.label_for_stats)
        if not self.label_for_stats:
            ignore = np.where(valid, 0, IGNORE_INDEX).astype(np.uint8)
            image_a, image_b, ignore = self.augment(image_a, image_b, ignore)
            return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(ignore.astype(np.int64))
        # one mask through the augmentation: no data (and padding) 255, data without a label UNLABELLED, else the class
        labels = np.full(valid.shape, IGNORE_INDEX) if label is None else label
        packed = np.where(labels == IGNORE_INDEX, UNLABELLED, labels)
        packed = np.where(valid, packed, IGNORE_INDEX).astype(np.uint8)
        image_a, image_b, packed = self.augment(image_a, image_b, packed)
        ignore = np.where(packed == IGNORE_INDEX, IGNORE_INDEX, 0)
        stats = np.where(packed >= UNLABELLED, IGNORE_INDEX, packed)
        return (torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(ignore.astype(np.int64)),
                torch.from_numpy(stats.astype(np.int64)))


class HeldOutWindows(Dataset):
    """The held-out rows of each labelled scene in windows of ``crop_size``: ``(image, mask, name)``."""

    def __init__(self, scenes: list[Scene], crop_size: int):
        self.windows = []
        for scene in scenes:
            if scene.files.label is None:
                continue
            height, width = min(crop_size, scene.val_rows), min(crop_size, scene.width)
            for row in window_starts(scene.val_rows, height, height):
                for col in window_starts(scene.width, width, width):
                    self.windows.append((scene, scene.train_rows + row, col, height, width))

    def __len__(self) -> int:
        return len(self.windows)

    def check_every_pair(self) -> None:
        """Nothing left to decode: the scenes were checked when the set was built."""

    def __getitem__(self, index: int):
        scene, row, col, height, width = self.windows[index]
        image_a, image_b, _, mask = scene.read(row, col, height, width)
        name = f"{scene.files.before.stem}_r{row}_c{col}"
        return torch.from_numpy(np.concatenate([image_a, image_b])), torch.from_numpy(mask), name
