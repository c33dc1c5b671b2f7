"""Readers for Pascal VOC, Cityscapes and COCO in the layouts and split files of official UniMatch.

Layouts (paths relative to the data root), as the official ``dataset/semi.py`` reads them:

* Pascal VOC: ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (palette PNG, 21 classes)
* Cityscapes: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (train ids, 19 classes)
* COCO: ``train2017/<id>.jpg`` / ``val2017/<id>.jpg`` and ``masks/<id>.png`` (81 classes)

Split-file lines (one sample per line; blank lines are skipped):

* ``IMAGE MASK``: two root-relative paths, the official format of every UniMatch split
  (``JPEGImages/2007_000033.jpg SegmentationClass/2007_000033.png``);
* ``IMAGE``: one root-relative image path; the mask path follows from the layout;
* ``ID``: a bare id (``2007_000033``; Cityscapes ``train/jena/jena_000078_000019`` or
  ``jena_000078_000019``; COCO ``000000283213``); both paths follow from the layout.

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

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.natural.synthetic import SYNTHETIC_CLASSES
from unimatch.errors import DataError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


# ----------------------------------------------------------------------------- layouts

@dataclass(frozen=True)
class Layout:
    """How one dataset names its files: id -> paths, image path -> mask path, image path -> id."""

    name: str
    classes: tuple[str, ...]
    paths_for_id: Callable[[str, Path], tuple[str, str]]
    mask_for_image: Callable[[str], str]
    id_for_image: Callable[[str], str]

    @property
    def nclass(self) -> int:
        return len(self.classes)


def _stem(relative: str) -> str:
    return Path(relative).stem


def _pascal_paths(sample_id: str, root: Path) -> tuple[str, str]:
    return f"JPEGImages/{sample_id}.jpg", f"SegmentationClass/{sample_id}.png"


def _pascal_mask(image: str) -> str:
    return f"SegmentationClass/{_stem(image)}.png"


_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
_CITYSCAPES_MASK_SUFFIX = "_gtFine_labelTrainIds.png"


def _cityscapes_paths(sample_id: str, root: Path) -> tuple[str, str]:
    if "/" in sample_id:
        relative = sample_id
    else:  # "<city>_<seq>_<frame>": find the split folder that holds it
        city = sample_id.split("_")[0]
        candidates = [f"{split}/{city}/{sample_id}" for split in ("train", "val", "test")]
        relative = next(
            (c for c in candidates if (root / "leftImg8bit" / f"{c}{_CITYSCAPES_IMAGE_SUFFIX}").is_file()),
            candidates[0],
        )
    return f"leftImg8bit/{relative}{_CITYSCAPES_IMAGE_SUFFIX}", f"gtFine/{relative}{_CITYSCAPES_MASK_SUFFIX}"


def _cityscapes_mask(image: str) -> str:
    parts = Path(image).parts
    if parts and parts[0] == "leftImg8bit":
        parts = ("gtFine",) + parts[1:]
    name = parts[-1]
    if name.endswith(_CITYSCAPES_IMAGE_SUFFIX):
        name = name[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
    else:
        name = Path(name).stem
    return "/".join(parts[:-1] + (name + _CITYSCAPES_MASK_SUFFIX,))


def _cityscapes_id(image: str) -> str:
    name = Path(image).name
    return name[: -len(_CITYSCAPES_IMAGE_SUFFIX)] if name.endswith(_CITYSCAPES_IMAGE_SUFFIX) else Path(name).stem


def _coco_paths(sample_id: str, root: Path) -> tuple[str, str]:
    candidates = [f"train2017/{sample_id}.jpg", f"val2017/{sample_id}.jpg"]
    image = next((c for c in candidates if (root / c).is_file()), candidates[0])
    return image, f"masks/{sample_id}.png"


def _coco_mask(image: str) -> str:
    return f"masks/{_stem(image)}.png"


LAYOUTS: dict[str, Layout] = {
    "pascal": Layout("pascal", PASCAL_CLASSES, _pascal_paths, _pascal_mask, _stem),
    "cityscapes": Layout("cityscapes", CITYSCAPES_CLASSES, _cityscapes_paths, _cityscapes_mask, _cityscapes_id),
    "coco": Layout("coco", COCO_CLASSES, _coco_paths, _coco_mask, _stem),
    # The synthetic default dataset is stored exactly like Pascal VOC.
    "synthetic": Layout("synthetic", SYNTHETIC_CLASSES, _pascal_paths, _pascal_mask, _stem),
}


def get_layout(dataset: str) -> Layout:
    """The :class:`Layout` of a dataset name (``pascal``, ``cityscapes``, ``coco``, ``synthetic``)."""
    try:
        return LAYOUTS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(LAYOUTS)}") from None


# ----------------------------------------------------------------------------- split files

@dataclass(frozen=True)
class SplitEntry:
    """One line of a split file, resolved against the data root."""

    image: Path
    mask: Path | None
    sample_id: str
    split_file: Path
    line_number: int
    image_rel: str = ""
    mask_rel: str = ""

    def where(self) -> str:
        """``<split file>:<line>`` (or the image path when listed from a folder): where to look when it is bad."""
        return f"{self.split_file}:{self.line_number}" if self.line_number else str(self.image)


def parse_split_line(line: str, layout: Layout, root: Path) -> tuple[str, str]:
    """Root-relative (image, mask) paths of one non-blank split line in any supported format."""
    fields = line.split()
    if len(fields) == 2:
        return fields[0], fields[1]
    if len(fields) == 1:
        token = fields[0]
        if token.lower().endswith(IMAGE_SUFFIXES):
            return token, layout.mask_for_image(token)
        return layout.paths_for_id(token, root)
    raise ValueError(
        f"has {len(fields)} space-separated fields; expected 'ID', 'IMAGE' or 'IMAGE MASK' (paths without spaces)"
    )


def read_split(
    split_file: str | os.PathLike,
    root: str | os.PathLike,
    dataset: str,
    need_masks: bool,
) -> list[SplitEntry]:
    """Resolve every line of ``split_file`` against ``root``; fail on the first line whose files are missing.

    With ``need_masks`` false the mask column is neither required nor checked (unlabelled
    data), and ``SplitEntry.mask`` is None.
    """
    split_file, root = Path(split_file), Path(root)
    layout = get_layout(dataset)
    if not split_file.is_file():
        raise DataError(f"split file {split_file} does not exist; check the path or write one with "
                        "`python -m tasks.natural.make_splits`")
    if not root.is_dir():
        raise DataError(f"data root {root} (used by split file {split_file}) is not a directory; "
                        "check --data-root")
    entries = []
    with open(split_file, encoding="utf-8") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                image_rel, mask_rel = parse_split_line(line, layout, root)
            except ValueError as error:
                raise DataError(f"{split_file}:{line_number}: the line {line!r} {error}; fix or remove it") from None
            image = root / image_rel
            if not image.is_file():
                raise DataError(
                    f"{split_file}:{line_number}: image file {image} does not exist; check the data root "
                    f"({root}) and the {dataset} layout, or remove the line"
                )
            mask = None
            if need_masks:
                mask = root / mask_rel
                if not mask.is_file():
                    raise DataError(
                        f"{split_file}:{line_number}: mask file {mask} does not exist; check the data root "
                        f"({root}) and the {dataset} layout, or remove the line"
                    )
            entries.append(SplitEntry(image, mask, layout.id_for_image(image_rel), split_file, line_number,
                                      image_rel, mask_rel))
    if not entries:
        raise DataError(f"split file {split_file} is empty; it must list at least one sample "
                        "(see `python -m tasks.natural.make_splits`)")
    return entries


# ----------------------------------------------------------------------------- decoding

def load_image(entry: SplitEntry) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded with PIL and converted to RGB as the official loader does."""
    try:
        with Image.open(entry.image) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{entry.where()}: cannot decode image {entry.image} ({error}); "
                        "replace the file or remove the line") from None


def load_mask(entry: SplitEntry, nclass: int, image_shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class ids from a palette or grayscale PNG, checked against ``nclass`` and the image size."""
    try:
        with Image.open(entry.mask) as mask_image:
            mask = np.asarray(mask_image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{entry.where()}: cannot decode mask {entry.mask} ({error}); "
                        "replace the file or remove the line") from None
    if mask.ndim != 2:
        raise DataError(
            f"{entry.where()}: mask {entry.mask} has shape {mask.shape}; expected a single-channel PNG of class "
            "ids (palette 'P' or grayscale 'L'), not a colour rendering; convert it to class ids"
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
        raise DataError(
            f"{entry.where()}: mask {entry.mask} holds values {values} that are neither class ids < {nclass} nor "
            f"{IGNORE_INDEX} (ignore); fix the mask, or the number of classes (nclass) if it is wrong"
        )
    return mask.astype(np.uint8)


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
    """The official weak view: rescale, pad right/bottom (image 0, mask 255), random crop, h-flip p=0.5.

    All transforms share ONE pair of generators seeded by ``seed``: albumentations' own
    ``Compose(seed=...)`` gives every transform its own, identically seeded stream, so the
    draws of one transform would replay those of another.
    """
    pipeline = A.Compose([
        RandomLongSideRescale(scale_range),
        A.PadIfNeeded(crop_size, crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
    ])
    reseed_pipeline(pipeline, seed)
    return pipeline


def reseed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Give every transform of ``pipeline`` the same shared numpy and Python generators, seeded by ``seed``."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seeds numpy, ``random`` and the dataset's augmentation
    from the worker's torch seed (base seed + worker id), so runs are reproducible under
    ``torch.manual_seed`` and every worker and epoch draws different views."""
    info = torch.utils.data.get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if info is not None:
        _reseed_dataset(info.dataset, seed)


def _reseed_dataset(dataset: Dataset, seed: int) -> None:
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    for child in getattr(dataset, "datasets", ()):  # ConcatDataset
        _reseed_dataset(child, seed)
    if hasattr(dataset, "dataset"):  # Subset
        _reseed_dataset(dataset.dataset, seed)


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


class _WeakViewDataset(Dataset):
    """Training images listed in a split file, each returned as a weak (geometric) view."""

    def __init__(self, dataset: str, root, split_file, crop_size: int, need_masks: bool,
                 scale_range: tuple[float, float], seed: int):
        self.layout = get_layout(dataset)
        self.crop_size = _check_crop_size(crop_size)
        self.entries = read_split(split_file, root, dataset, need_masks=need_masks)
        self.transform = weak_augmentation(self.crop_size, _check_scale_range(scale_range), seed)

    def reseed(self, seed: int) -> None:
        reseed_pipeline(self.transform, seed)

    def __len__(self) -> int:
        return len(self.entries)


class LabeledDataset(_WeakViewDataset):
    """Labelled training images: ``(image uint8 (3, c, c), mask int64 (c, c))`` after the weak view.

    ``repeat_to`` repeats the list to that length, as the official ``nsample`` (the labelled
    set is stretched to the size of the unlabelled set so both loaders have one epoch length).
    ``nclass`` defaults to the dataset's class count (21 Pascal, 19 Cityscapes, 81 COCO).
    """

    def __init__(
        self,
        dataset: str,
        root: str | os.PathLike,
        split_file: str | os.PathLike,
        crop_size: int,
        *,
        nclass: int | None = None,
        repeat_to: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
    ):
        super().__init__(dataset, root, split_file, crop_size, True, scale_range, seed)
        self.nclass = nclass if nclass is not None else self.layout.nclass
        if repeat_to is not None:
            if repeat_to < 1:
                raise DataError(f"repeat_to must be a positive number of samples; got {repeat_to}")
            self.entries = (self.entries * math.ceil(repeat_to / len(self.entries)))[:repeat_to]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        image = load_image(entry)
        mask = load_mask(entry, self.nclass, image.shape[:2])
        view = self.transform(image=image, mask=mask)
        return _image_tensor(view["image"]), _mask_tensor(view["mask"])


class UnlabeledDataset(_WeakViewDataset):
    """Unlabelled training images: ``(image uint8 (3, c, c), ignore_mask int64 (c, c))``.

    ``ignore_mask`` is 255 where the crop lies outside the rescaled image (padding) and 0
    elsewhere: what the official loader obtains by padding the mask with 254 and marking
    those pixels 255. No label file is opened or even looked for, unless ``label_for_stats``
    (with ``nclass``): then items are ``(image, ignore_mask, label_for_stats)``, the mask cropped
    like the view, for the pseudo-label statistics only (unimatch/health.py; no loss uses it).
    """

    def __init__(
        self,
        dataset: str,
        root: str | os.PathLike,
        split_file: str | os.PathLike,
        crop_size: int,
        *,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
        label_for_stats: bool = False,
        nclass: int | None = None,
    ):
        super().__init__(dataset, root, split_file, crop_size, label_for_stats, scale_range, seed)
        self.label_for_stats = label_for_stats
        self.nclass = nclass if nclass is not None else self.layout.nclass

    def __getitem__(self, index: int):
        entry = self.entries[index]
        image = load_image(entry)
        if not self.label_for_stats:
            inside = np.zeros(image.shape[:2], dtype=np.uint8)
            view = self.transform(image=image, mask=inside)
            return _image_tensor(view["image"]), _mask_tensor(view["mask"])
        # one mask carries both: the label's own ignore value moves to 254, so 255 marks padding only
        # (the ignore mask must not depend on the label, which would leak it into the loss)
        label = load_mask(entry, self.nclass, image.shape[:2])
        moved = np.where(label == IGNORE_INDEX, IGNORE_INDEX - 1, label).astype(np.uint8)
        view = self.transform(image=image, mask=moved)
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
    ):
        self.layout = get_layout(dataset)
        self.nclass = nclass if nclass is not None else self.layout.nclass
        self.entries = read_split(split_file, root, dataset, need_masks=True)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        entry = self.entries[index]
        image = load_image(entry)
        mask = load_mask(entry, self.nclass, image.shape[:2])
        return _image_tensor(image), _mask_tensor(mask), entry.sample_id


class ImageFolderDataset(Dataset):
    """Images to predict without labels: ``(image uint8 (3, H, W), sample_id)`` at full resolution.

    Reads either a split file (any supported line format; masks ignored) or every image
    file directly inside a folder, for the predict entry point.
    """

    def __init__(self, source: str | os.PathLike, *, dataset: str = "pascal", root: str | os.PathLike | None = None):
        source = Path(source)
        if source.is_dir():
            images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                "point to a folder of images or a split file")
            layout = get_layout(dataset)
            self.entries = [
                SplitEntry(path, None, layout.id_for_image(path.name), source, line_number=0, image_rel=path.name)
                for path in images
            ]
        else:
            if root is None:
                raise DataError(f"{source} is not a folder; reading it as a split file needs the data root")
            self.entries = read_split(source, root, dataset, need_masks=False)
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
        return _image_tensor(load_image(entry)), entry.sample_id
