"""Datasets for bi-temporal change detection (the files are read by :mod:`tasks.change_detection.raster_io`).

Datasets follow the data contract of the core: labelled items ``(image, mask)``, unlabelled
``(image, ignore_mask)``, evaluation items ``(image, mask, name)``; ``image`` is uint8
``(2*len(bands), H, W)`` (A's bands then B's), masks int64 with 255 = ignore. Training items get
the weak augmentation of the official code with the same random parameters for A, B and the
label: random rescale 0.8-1.2, crop with padding (image 0, label 255), horizontal flip, and with
``nadir_augment`` also vertical flip and rotation by a multiple of 90 degrees.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.change_detection.layout import BINARY_ENCODINGS, PAIR_FOLDERS, folder_entries, is_split_folder, pair_paths
from tasks.change_detection.raster_io import (DEFAULT_BANDS, DEFAULT_CLASS_VALUES, check_stretch, encode_classes,
                                              read_label_values, read_pair)
from unimatch.data import IGNORE_INDEX, WeakViewDataset, reseed_pipeline
from unimatch.errors import DataError
from unimatch.splits import read_split_lines


class PairAugment:
    """Weak geometric augmentation applied with identical parameters to A, B and the mask.

    As the official remote-sensing code: random rescale (bilinear images, nearest mask), pad to
    ``crop_size`` at the bottom/right (image 0, mask 255), random crop, horizontal flip p=0.5;
    ``nadir_augment`` adds vertical flip p=0.5 and a uniform rotation by 0/90/180/270 degrees
    (sensible for nadir imagery, where there is no "up").

    All transforms draw from one stream (:func:`unimatch.data.reseed_pipeline`); training sets
    hand ``transform`` to :class:`unimatch.data.WeakViewDataset`, which reseeds it.
    """

    def __init__(self, crop_size: int = 256, scale_range: tuple[float, float] = (0.8, 1.2),
                 hflip: float = 0.5, nadir_augment: bool = False, seed: int = 0):
        transforms = [
            A.RandomScale(scale_limit=(scale_range[0] - 1, scale_range[1] - 1), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, position="top_left",
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
            A.RandomCrop(crop_size, crop_size),
            A.HorizontalFlip(p=hflip),
        ]
        if nadir_augment:
            transforms += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
        self.crop_size = crop_size
        self.transform = A.Compose(transforms, additional_targets={"image_b": "image"})
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream from ``seed``."""
        reseed_pipeline(self.transform, seed)

    def __call__(self, image_a: np.ndarray, image_b: np.ndarray, mask: np.ndarray):
        """(C,H,W) uint8 images and (H,W) mask -> augmented copies, the same draw for all three."""
        out = self.transform(image=np.moveaxis(image_a, 0, -1), image_b=np.moveaxis(image_b, 0, -1), mask=mask)
        return (np.ascontiguousarray(np.moveaxis(out["image"], -1, 0).reshape(image_a.shape[0], *out["mask"].shape)),
                np.ascontiguousarray(np.moveaxis(out["image_b"], -1, 0).reshape(image_b.shape[0], *out["mask"].shape)),
                out["mask"])


class PairDataset(Dataset):
    """The pairs of a split list (or of a split folder, :mod:`tasks.change_detection.layout`), each
    checked to have its files when the dataset is built."""

    def __init__(self, root: str | Path, split_file: str | Path, bands: Sequence[int] = DEFAULT_BANDS,
                 stretch="percentile", class_values: Sequence[int] = DEFAULT_CLASS_VALUES,
                 layout: str = "flat", need_labels: bool = True):
        check_stretch(stretch)
        self.root = Path(root)
        self.split_file = Path(split_file)
        self.bands = tuple(bands)
        self.stretch = stretch
        self.class_values = tuple(class_values)
        self.layout = layout
        self.need_labels = need_labels
        needed = PAIR_FOLDERS if need_labels else PAIR_FOLDERS[:2]
        if is_split_folder(self.split_file):
            entries = [(f"pair {number}", entry) for number, entry in enumerate(folder_entries(self.split_file), 1)]
        else:
            entries = [(f"line {number}", entry) for number, entry in read_split_lines(split_file)]
        if layout == "flat":
            for folder in needed:
                if not (self.root / folder).is_dir():
                    raise DataError(f"{self.root} has no {folder}/ folder; a change-detection root holds A/, B/ and label/")
        for where, name in entries:
            for path in self.paths(name)[:len(needed)]:
                if not path.is_file():
                    raise DataError(f"{path} is missing: it is named on {where} of {self.split_file} and every "
                                    f"pair needs {', '.join(f + '/' for f in needed)}")
        self.names = [name for _, name in entries]

    def __len__(self) -> int:
        return len(self.names)

    def paths(self, name: str) -> tuple[Path, Path, Path]:
        return pair_paths(self.root, self.layout, name)

    def read_images(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path_a, path_b, _ = self.paths(name)
        return read_pair(path_a, path_b, self.bands, self.stretch)

    def check_every_pair(self) -> None:
        """Read every pair (and label) once, so a bad file stops a command before it writes its first
        output rather than after it wrote some."""
        for name in self.names:
            image_a, _ = self.read_images(name)
            if self.need_labels:
                self.read_mask(name, image_a.shape[1:])

    def label_encoding(self, values: np.ndarray, path: Path) -> tuple[int, ...]:
        """The configured class values; in the split_folders layout, under the 0/255 default, a file
        of 0/1 reads as 0/1 (both encodings ship with that layout)."""
        if self.layout != "split_folders" or self.class_values != BINARY_ENCODINGS[0]:
            return self.class_values
        present = set(np.unique(values).tolist())
        for encoding in BINARY_ENCODINGS:
            if present <= set(encoding):
                return encoding
        raise DataError(f"label {path} has pixel values {sorted(present)[:10]}; labels must be 0/255 or 0/1 "
                        f"(unchanged/changed): re-export it in one of them, or remove its pair")

    def read_mask(self, name: str, shape) -> np.ndarray:
        path = self.paths(name)[2]
        values = read_label_values(path)
        mask = encode_classes(values, path, self.label_encoding(values, path))
        if mask.shape != tuple(shape):
            raise DataError(f"label {path} is {mask.shape[1]}x{mask.shape[0]} but its images are "
                            f"{shape[1]}x{shape[0]}; a label must cover its pair pixel for pixel: re-export it "
                            f"at the images' size, or remove its name from the split file")
        return mask


class AugmentedPairs(WeakViewDataset, PairDataset):
    """Training pairs of a split file, each returned as a weak view (:class:`PairAugment`)."""

    def __init__(self, root, split_file, crop_size: int = 256, nadir_augment: bool = False,
                 scale_range=(0.8, 1.2), seed: int = 0, need_labels: bool = True, **kwargs):
        PairDataset.__init__(self, root, split_file, need_labels=need_labels, **kwargs)
        self.augment = PairAugment(crop_size, scale_range, nadir_augment=nadir_augment, seed=seed)
        WeakViewDataset.__init__(self, self.names, seed, self.augment.transform)


class LabeledPairs(AugmentedPairs):
    """Training pairs with labels: ``(image uint8 (2C,h,w), mask int64 (h,w))``, augmented."""

    def view(self, name: str, rng):
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

    def view(self, name: str, rng):
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
