"""Where the files of a change-detection pair live, in the two folder trees the task reads.

``flat`` (the official WHU-CD-256 / LEVIR-CD256 release): ``ROOT/{A,B,label}/<name>``, split
lists of file names. ``split_folders`` (LEVIR-CD-256, open-cd, BIT): ``ROOT/{train,val,test}/
{A,B,label}/<name>``, plus unlabelled pairs in ``ROOT/unlabeled/{A,B}`` or as train pairs without
a label file; its split lists name ``<split folder>/<name>`` (``train/0001.png``), and a split
folder itself (``ROOT/val``) stands for every pair in it. Its labels may be 0/255 or 0/1.
"""
from __future__ import annotations

from pathlib import Path

from unimatch.errors import ConfigError, DataError

LAYOUTS = ("auto", "flat", "split_folders")
SPLIT_FOLDERS = ("train", "val", "test", "unlabeled")   # the folders of the split_folders layout
PAIR_FOLDERS = ("A", "B", "label")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
BINARY_ENCODINGS = ((0, 255), (0, 1))                   # what a split_folders label file may hold


def is_split_folder(path: Path) -> bool:
    """A folder holding the A/ of a split (``ROOT/val``), given where a split list is expected."""
    return path.is_dir() and (path / "A").is_dir()


def detect_layout(root: str | Path, requested: str = "auto") -> str:
    """The layout of ``root``: ``requested``, checked against the tree, or (``auto``) the one the
    tree shows; a root with neither tree counts as ``flat``, whose readers say what is missing."""
    root = Path(root)
    if requested not in LAYOUTS:
        raise ConfigError(f"layout: {requested!r} is not one of {', '.join(LAYOUTS)}")
    has_split_folders = (root / "train" / "A").is_dir()
    if requested == "split_folders" and not has_split_folders:
        raise DataError(f"{root} has no train/A/ folder, which layout: split_folders needs "
                        f"(ROOT/{{train,val,test}}/{{A,B,label}}); use layout: flat for ROOT/{{A,B,label}}")
    if requested != "auto":
        return requested
    return "split_folders" if has_split_folders and not (root / "A").is_dir() else "flat"


def describe_layout(root: str | Path, layout: str, requested: str) -> str:
    """The one line that says which layout a command reads."""
    tree = "ROOT/{A,B,label}" if layout == "flat" else "ROOT/{train,val,test}/{A,B,label}"
    how = "detected from the folder tree" if requested == "auto" else "set by layout"
    return f"change-detection layout: {layout} ({tree}) under {root}, {how}"


def pair_paths(root: Path, layout: str, entry: str) -> tuple[Path, Path, Path]:
    """(A, B, label) files of a split-list entry."""
    if layout == "flat":
        return root / "A" / entry, root / "B" / entry, root / "label" / entry
    folder, _, name = entry.replace("\\", "/").partition("/")
    if not name:
        raise DataError(f"split entry {entry!r} names no split folder; in the split_folders layout a line is "
                        f"<folder>/<file>, e.g. train/{entry} (python -m tasks.change_detection.make_splits writes them)")
    return root / folder / "A" / name, root / folder / "B" / name, root / folder / "label" / name


def folder_images(folder: Path) -> list[str]:
    """File names of the images in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_entries(split_folder: Path) -> list[str]:
    """``<folder>/<name>`` of every pair in a split folder, each checked to have its B."""
    entries = []
    for name in folder_images(split_folder / "A"):
        if not (split_folder / "B" / name).is_file():
            raise DataError(f"{split_folder / 'A' / name} has no {split_folder / 'B' / name}; every pair needs "
                            f"both dates under the same name: add the B tile or remove the A tile")
        entries.append(f"{split_folder.name}/{name}")
    if not entries:
        raise DataError(f"{split_folder / 'A'} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return entries


def has_label(root: Path, entry: str) -> bool:
    return pair_paths(root, "split_folders", entry)[2].is_file()
