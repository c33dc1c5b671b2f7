"""Pascal VOC, Cityscapes and COCO: their class names, file layouts and the split files of official UniMatch.

Layouts (paths relative to the data root), as the official ``dataset/semi.py`` reads them:

* Pascal VOC: ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (palette PNG, 21 classes)
* Cityscapes: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (train ids, 19 classes)
* COCO: ``train2017/<id>.jpg`` / ``val2017/<id>.jpg`` and ``masks/<id>.png`` (81 classes)
* your own images (``folder``): ``images/<id>.<jpg|png|tif>`` and ``masks/<id>.png`` (class ids, or
  colours of the config's ``palette``); an image without a mask is unlabelled material; classes
  from the config (``nclass``, ``class_names``)

Split-file lines (one sample per line; blank lines are skipped):

* ``IMAGE MASK``: two root-relative paths, the official format of every UniMatch split
  (``JPEGImages/2007_000033.jpg SegmentationClass/2007_000033.png``);
* ``IMAGE``: one root-relative image path; the mask path follows from the layout;
* ``ID``: a bare id (``2007_000033``; Cityscapes ``train/jena/jena_000078_000019`` or
  ``jena_000078_000019``; COCO ``000000283213``); both paths follow from the layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tasks.natural.scenes import SYNTHETIC_CLASSES
from unimatch.errors import DataError
from unimatch.splits import read_split_lines

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
CITYSCAPES_TRAIN_IDS_HOWTO = (
    "generate the *_gtFine_labelTrainIds.png files (train ids 0..18, 255 = ignore) with cityscapesScripts' "
    "createTrainIdLabelImgs.py (pip install cityscapesscripts; CITYSCAPES_DATASET=<data root> "
    "csCreateTrainIdLabelImgs) and list those"
)


def looks_like_cityscapes_label_ids(mask_path: Path, values, nclass: int) -> bool:
    """A Cityscapes ``*_labelIds.png`` (ids 0..33) where train ids are expected: by its name, or by
    values that only label ids have (24..33: person, rider, car, ...) in a 19-class mask."""
    if Path(mask_path).name.endswith("_labelIds.png"):
        return True
    values = [int(v) for v in values]
    return nclass == 19 and bool(values) and all(v <= 33 or v == 255 for v in values) and \
        any(24 <= v <= 33 for v in values)


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


FOLDER_IMAGES, FOLDER_MASKS = "images", "masks"


def _folder_paths(sample_id: str, root: Path) -> tuple[str, str]:
    candidates = [f"{FOLDER_IMAGES}/{sample_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    image = next((c for c in candidates if (root / c).is_file()), candidates[0])
    return image, f"{FOLDER_MASKS}/{sample_id}.png"


def _folder_mask(image: str) -> str:
    return f"{FOLDER_MASKS}/{_stem(image)}.png"


def is_folder_layout(root: Path) -> bool:
    """``root/images/`` without the folders of the named layouts: the generic layout of your own images."""
    named = ("JPEGImages", "leftImg8bit", "train2017")
    return (root / FOLDER_IMAGES).is_dir() and not any((root / folder).is_dir() for folder in named)


def folder_images(root: Path) -> list[str]:
    """Root-relative paths of the images directly in ``root/images/``, sorted; two files of one id refused."""
    folder = root / FOLDER_IMAGES
    if not folder.is_dir():
        raise DataError(f"{root} has no {FOLDER_IMAGES}/ folder; the folder layout is ROOT/{FOLDER_IMAGES}/ "
                        f"(+ ROOT/{FOLDER_MASKS}/); check --data-root")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); check --data-root")
    seen: dict[str, Path] = {}
    for path in images:
        other = seen.setdefault(path.stem, path)
        if other is not path:
            raise DataError(f"{other} and {path} share the id {path.stem!r}, and one mask name "
                            f"({FOLDER_MASKS}/{path.stem}.png); rename one of the images")
    return [path.relative_to(root).as_posix() for path in images]


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
    # your own images: the classes come from the config (nclass, class_names)
    "folder": Layout("folder", (), _folder_paths, _folder_mask, _stem),
    # The synthetic default dataset is stored exactly like Pascal VOC.
    "synthetic": Layout("synthetic", SYNTHETIC_CLASSES, _pascal_paths, _pascal_mask, _stem),
}


def get_layout(dataset: str) -> Layout:
    """The :class:`Layout` of a dataset name (``pascal``, ``cityscapes``, ``coco``, ``synthetic``, ``folder``)."""
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

    def remedy(self) -> str:
        """What to do about a bad file of this entry: it came from a split line or from a folder."""
        return "replace the file or remove the line" if self.line_number else \
            "replace the file or move it out of the input folder"


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
    for line_number, line in read_split_lines(split_file):
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
            if layout.name == "cityscapes" and mask.name.endswith("_labelIds.png"):
                raise DataError(f"{split_file}:{line_number}: mask {mask} holds Cityscapes label ids, not the "
                                f"train ids UniMatch trains on; {CITYSCAPES_TRAIN_IDS_HOWTO}")
            if not mask.is_file():
                raise DataError(
                    f"{split_file}:{line_number}: mask file {mask} does not exist; check the data root "
                    f"({root}) and the {dataset} layout, or remove the line"
                )
        entries.append(SplitEntry(image, mask, layout.id_for_image(image_rel), split_file, line_number,
                                  image_rel, mask_rel))
    return entries
