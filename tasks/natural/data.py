"""Natural-image datasets on the layouts and split files of :mod:`tasks.natural.layouts`.

Items (the data contract with the core):

* :class:`LabeledDataset`:   ``(image uint8 (3, c, c), mask int64 (c, c))``, 255 = ignore/padding
* :class:`UnlabeledDataset`: ``(image uint8 (3, c, c), ignore_mask int64 (c, c))``, 255 where padded;
  it never opens a label file (the mask column of an unlabelled split is not even checked)
* :class:`ValDataset`:       ``(image uint8 (3, H, W), mask int64 (H, W), sample_id)`` at full size

The weak augmentation is the official one, run through albumentations: rescale the long side
to ``randint(int(L * 0.5), int(L * 2.0))`` (bilinear image, nearest mask, PIL resampling as the
official), pad right/bottom to the crop size (image 0, mask 255), random crop, horizontal flip
with p = 0.5. Colour perturbations and normalisation happen later, batched on the device.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from tasks.natural.layouts import (CITYSCAPES_TRAIN_IDS_HOWTO, IMAGE_SUFFIXES, SplitEntry, get_layout,
                                   looks_like_cityscapes_label_ids, read_split)
from tasks.natural.palette import ids_of_colours
from unimatch.data import IGNORE_INDEX, WeakViewDataset, reseed_pipeline
from unimatch.errors import DataError
from unimatch.inference import center_crop_box

# ----------------------------------------------------------------------------- decoding

def load_image(entry: SplitEntry, orient: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded with PIL and converted to RGB as the official loader does.

    16-bit grayscale images (PNG ``I;16``) are scaled linearly from 0..65535 to 0..255
    (value / 257); PIL's own RGB conversion would clip them to white. Floating-point images are
    refused. ``orient`` applies the EXIF orientation, so a predicted mask lines up with what a
    viewer shows; datasets keep the raw pixel order, which is the order their masks were drawn in.
    """
    try:
        with Image.open(entry.image) as image:
            if orient:
                image = ImageOps.exif_transpose(image)
            return to_rgb8(image, entry.image)
    except (OSError, SyntaxError, ValueError) as error:
        where = f"{entry.where()}: " if entry.line_number else ""
        raise DataError(f"{where}cannot decode image {entry.image} ({error}); {entry.remedy()}") from None


def to_rgb8(image: Image.Image, path) -> np.ndarray:
    """Any integer PIL image as (H, W, 3) uint8 by the rule of :func:`load_image`."""
    if image.mode == "F":
        raise DataError(f"{path}: floating-point image; convert it to 8-bit (or 16-bit) RGB or grayscale")
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise DataError(f"{path}: pixel values {values.min()}..{values.max()} do not fit 16 bits; "
                            "convert it to 8-bit (or 16-bit) RGB or grayscale")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def load_mask(entry: SplitEntry, nclass: int, image_shape: tuple[int, int], colours=None) -> np.ndarray:
    """(H, W) uint8 class ids from a palette or grayscale PNG, checked against ``nclass`` and the image size.

    With ``colours`` (the config's ``palette``: class ``i`` drawn in ``colours[i]``) an RGB mask is
    read by its colours, and a colour that is no class's is refused; index PNGs are read as ids.
    """
    try:
        with Image.open(entry.mask) as mask_image:
            mask = np.asarray(mask_image.convert("RGB") if colours and mask_image.mode in ("RGB", "RGBA")
                              else mask_image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{entry.where()}: cannot decode mask {entry.mask} ({error}); {entry.remedy()}") from None
    if mask.ndim == 3 and colours:
        mask, unknown = ids_of_colours(mask, colours)
        if unknown is not None:
            raise DataError(
                f"{entry.where()}: mask {entry.mask} holds the colour {list(unknown)}, which is no class's colour "
                f"in palette ({len(colours)} colours); fix the mask or add the colour to palette"
            )
    if mask.ndim != 2:
        raise DataError(
            f"{entry.where()}: mask {entry.mask} has shape {mask.shape}; expected a single-channel PNG of class "
            "ids (palette 'P' or grayscale 'L'), not a colour rendering; convert it to class ids, or give the "
            "colour of each class as palette in the config"
        )
    if mask.shape != tuple(image_shape):
        raise DataError(
            f"{entry.where()}: mask {entry.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
            f"{entry.image} is {image_shape[1]}x{image_shape[0]}; the pair must have the same size"
        )
    invalid = (mask >= nclass) & (mask != IGNORE_INDEX)
    if mask.dtype.kind == "i":
        invalid |= mask < 0
    if invalid.any():
        values = np.unique(mask[invalid])[:10].tolist()
        if looks_like_cityscapes_label_ids(entry.mask, np.unique(mask), nclass):
            raise DataError(f"{entry.where()}: mask {entry.mask} holds Cityscapes label ids (values {values} are "
                            f"not train ids < {nclass}); {CITYSCAPES_TRAIN_IDS_HOWTO}")
        raise DataError(
            f"{entry.where()}: mask {entry.mask} holds values {values} that are neither class ids < {nclass} nor "
            f"{IGNORE_INDEX} (ignore); fix the mask, or the number of classes (nclass) if it is wrong"
        )
    return mask.astype(np.uint8)


def check_entries(entries: list[SplitEntry], *, nclass: int | None = None, centre_crop: int | None = None,
                  orient: bool = False, colours=None) -> None:
    """Decode every image (and, with ``nclass``, check its mask) once, and with ``centre_crop``
    check that it holds the crop, so a bad file stops a command before it writes its first output
    rather than after it wrote some."""
    for entry in entries:
        image = load_image(entry, orient=orient)
        if nclass is not None:
            load_mask(entry, nclass, image.shape[:2], colours)
        if centre_crop is not None:
            center_crop_box(image.shape[0], image.shape[1], centre_crop, str(entry.image))


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask)).long()


# ----------------------------------------------------------------------------- weak augmentation

def rescaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) after scaling the long side to ``long_side``, rounded as the official ``resize``."""
    if height > width:
        return long_side, int(1.0 * width * long_side / height + 0.5)
    return int(1.0 * height * long_side / width + 0.5), long_side


class RandomLongSideRescale(A.DualTransform):
    """The official ``resize(img, mask, ratio_range)``: long side drawn uniformly from
    ``randint(int(L * low), int(L * high))`` (both ends included), aspect kept, image bilinear,
    mask nearest, both resampled by PIL so the pixels equal the official ones."""

    def __init__(self, ratio_range: tuple[float, float] = (0.5, 2.0), p: float = 1.0):
        super().__init__(p=p)
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        longest = max(height, width)
        long_side = self.py_random.randint(int(longest * self.ratio_range[0]), int(longest * self.ratio_range[1]))
        return {"target_hw": rescaled_size(height, width, long_side)}

    def apply(self, img: np.ndarray, target_hw: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return self._resize(img, target_hw, Image.BILINEAR)

    def apply_to_mask(self, mask: np.ndarray, target_hw: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return self._resize(mask, target_hw, Image.NEAREST)

    @staticmethod
    def _resize(array: np.ndarray, target_hw: tuple[int, int], resample) -> np.ndarray:
        height, width = target_hw
        if array.shape[:2] == (height, width):
            return array
        return np.asarray(Image.fromarray(array).resize((width, height), resample))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("ratio_range",)


def weak_augmentation(crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0) -> A.Compose:
    """The official weak view: rescale, pad right/bottom (image 0, mask 255), random crop, h-flip p=0.5,
    all drawing from one stream seeded by ``seed`` (:func:`unimatch.data.reseed_pipeline`)."""
    pipeline = A.Compose([
        RandomLongSideRescale(scale_range),
        A.PadIfNeeded(crop_size, crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
    ])
    reseed_pipeline(pipeline, seed)
    return pipeline


# ----------------------------------------------------------------------------- datasets

def _check_crop_size(crop_size: int) -> int:
    if not isinstance(crop_size, int) or crop_size < 1:
        raise DataError(f"crop_size must be a positive integer; got {crop_size!r}")
    return crop_size


def _check_scale_range(scale_range) -> tuple[float, float]:
    low, high = (float(value) for value in scale_range)
    if not 0.0 < low <= high:
        raise DataError(f"scale_range must be (low, high) with 0 < low <= high; got {tuple(scale_range)}")
    return low, high


class _SplitViews(WeakViewDataset):
    """Training images listed in a split file, each returned as a weak (geometric) view."""

    def __init__(self, dataset: str, root, split_file, crop_size: int, need_masks: bool,
                 scale_range: tuple[float, float], seed: int):
        self.layout = get_layout(dataset)
        self.crop_size = _check_crop_size(crop_size)
        pipeline = weak_augmentation(self.crop_size, _check_scale_range(scale_range), seed)
        super().__init__(read_split(split_file, root, dataset, need_masks=need_masks), seed, pipeline)

    @property
    def entries(self) -> list[SplitEntry]:
        return self.items


class LabeledDataset(_SplitViews):
    """Labelled training images: ``(image uint8 (3, c, c), mask int64 (c, c))`` after the weak view.

    ``nclass`` defaults to the dataset's class count (21 Pascal, 19 Cityscapes, 81 COCO); ``colours``
    reads colour masks (:func:`load_mask`).
    """

    def __init__(self, dataset: str, root: str | os.PathLike, split_file: str | os.PathLike, crop_size: int, *,
                 nclass: int | None = None, scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0,
                 colours=None):
        super().__init__(dataset, root, split_file, crop_size, True, scale_range, seed)
        self.nclass = nclass if nclass is not None else self.layout.nclass
        self.colours = colours

    def view(self, entry: SplitEntry, rng) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(entry)
        view = self.pipeline(image=image, mask=load_mask(entry, self.nclass, image.shape[:2], self.colours))
        return _image_tensor(view["image"]), _mask_tensor(view["mask"])


class UnlabeledDataset(_SplitViews):
    """Unlabelled training images: ``(image uint8 (3, c, c), ignore_mask int64 (c, c))``.

    ``ignore_mask`` is 255 where the crop lies outside the rescaled image (padding) and 0
    elsewhere: what the official loader obtains by padding the mask with 254 and marking
    those pixels 255. No label file is opened or even looked for, unless ``label_for_stats``
    (with ``nclass``): then items are ``(image, ignore_mask, label_for_stats)``, the mask cropped
    like the view, for the pseudo-label statistics only (unimatch/health.py; no loss uses it).
    """

    def __init__(self, dataset: str, root: str | os.PathLike, split_file: str | os.PathLike, crop_size: int, *,
                 scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0, label_for_stats: bool = False,
                 nclass: int | None = None, colours=None):
        super().__init__(dataset, root, split_file, crop_size, label_for_stats, scale_range, seed)
        self.label_for_stats = label_for_stats
        self.nclass = nclass if nclass is not None else self.layout.nclass
        self.colours = colours

    def view(self, entry: SplitEntry, rng):
        image = load_image(entry)
        if not self.label_for_stats:
            view = self.pipeline(image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))
            return _image_tensor(view["image"]), _mask_tensor(view["mask"])
        # one mask carries both: the label's own ignore value moves to 254, so 255 marks padding only
        # (the ignore mask must not depend on the label, which would leak it into the loss)
        label = load_mask(entry, self.nclass, image.shape[:2], self.colours)
        moved = np.where(label == IGNORE_INDEX, IGNORE_INDEX - 1, label).astype(np.uint8)
        view = self.pipeline(image=image, mask=moved)
        padded = view["mask"] == IGNORE_INDEX
        label = np.where(view["mask"] >= IGNORE_INDEX - 1, IGNORE_INDEX, view["mask"])
        return _image_tensor(view["image"]), _mask_tensor(np.where(padded, IGNORE_INDEX, 0)), _mask_tensor(label)


class ValDataset(Dataset):
    """Validation/test images at full resolution: ``(image uint8 (3, H, W), mask int64 (H, W), sample_id)``.

    Sizes differ between images (batch size 1, as the official evaluation, or a padding
    collate); ``sample_id`` is the dataset's own id (``2007_000033``, ``frankfurt_000000_000294``,
    ``000000000139``), usable as an output file name.
    """

    def __init__(
        self,
        dataset: str,
        root: str | os.PathLike,
        split_file: str | os.PathLike,
        *,
        nclass: int | None = None,
        colours=None,
    ):
        self.layout = get_layout(dataset)
        self.nclass = nclass if nclass is not None else self.layout.nclass
        self.colours = colours
        self.entries = read_split(split_file, root, dataset, need_masks=True)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        entry = self.entries[index]
        image = load_image(entry)
        mask = load_mask(entry, self.nclass, image.shape[:2], self.colours)
        return _image_tensor(image), _mask_tensor(mask), entry.sample_id


class ImageFolderDataset(Dataset):
    """Images to predict without labels: ``(image uint8 (3, H, W), sample_id)`` at full resolution.

    Reads every image file directly inside a folder, or one image file (that file only: another
    file of its folder with the same id does not matter), for the predict entry point.
    """

    def __init__(self, source: str | os.PathLike, *, dataset: str = "pascal"):
        source = Path(source)
        if source.is_dir():
            images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                "point to a folder of images or to one image")
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            images = [source]
        else:
            raise DataError(f"{source} is neither a folder nor an image file ({', '.join(IMAGE_SUFFIXES)})")
        layout = get_layout(dataset)
        self.entries = [SplitEntry(path, None, layout.id_for_image(path.name), path.parent, line_number=0,
                                   image_rel=path.name) for path in images]
        first_with_id: dict[str, SplitEntry] = {}
        for entry in self.entries:
            other = first_with_id.setdefault(entry.sample_id, entry)
            if other is not entry:
                raise DataError(
                    f"{entry.where()} and {other.where()} share the id {entry.sample_id!r}, so their predictions "
                    "would overwrite each other; rename one of the images"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        entry = self.entries[index]
        return _image_tensor(load_image(entry, orient=True)), entry.sample_id
