"""Write labelled/unlabelled split lists for a change-detection dataset.

    python -m tasks.change_detection.make_splits --data-root DIR (--fraction 0.05 | --num-labeled N) --seed 0 [--out DIR]

Flat layout (``DIR/{A,B,label}``): the training names come from ``train.txt`` (looked for in
``DIR/splits/`` then ``DIR/``, or given with ``--train-list``), or from the file names in ``DIR/A/``
when there is no such list. Split-folders layout (``DIR/{train,val,test}/{A,B,label}``): the
labelled candidates are the pairs of ``DIR/train/`` with a label file; train pairs without one and
the pairs of ``DIR/unlabeled/{A,B}`` are always unlabelled; lines read ``train/<name>``. A
``fraction`` (or ``--num-labeled``) of the candidates, chosen by ``seed``, becomes ``labeled.txt``;
the rest ``unlabeled.txt``, both sorted, one entry per line, as in the official UniMatch split
files. The default output folder is ``DIR/splits/<percent>%/`` (e.g. ``splits/5%/``) or
``DIR/splits/<N>/``; existing lists are never overwritten unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from tasks.change_detection.layout import (IMAGE_SUFFIXES, LAYOUTS, detect_layout, folder_entries, has_label,
                                          is_split_folder)
from unimatch import atomic
from unimatch.errors import DataError, UserError
from unimatch.paths import refuse_existing


def percent_name(fraction: float) -> str:
    """Folder name of a labelled fraction as the official splits spell it: 0.05 -> ``5%``."""
    percent = round(fraction * 100, 6)
    return f"{percent:g}%"


def read_name_list(path: str | Path) -> list[str]:
    """Names in a split file, one per line; blank lines are skipped, surrounding spaces removed."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DataError(f"cannot read split file {path}: {error}") from error
    return [line.strip() for line in lines if line.strip()]


def find_train_names(data_root: str | Path, train_list: str | Path | None = None) -> tuple[list[str], str]:
    """Training names and where they came from (a split file, or the listing of ``A/``)."""
    data_root = Path(data_root)
    candidates = [Path(train_list)] if train_list else [data_root / "splits" / "train.txt", data_root / "train.txt"]
    for candidate in candidates:
        if candidate.is_file():
            names = read_name_list(candidate)
            if not names:
                raise DataError(f"split file {candidate} lists no files; write one file name per line")
            return names, str(candidate)
    if train_list:
        raise DataError(f"train list {train_list} does not exist")
    image_dir = data_root / "A"
    if not image_dir.is_dir():
        raise DataError(f"{data_root} has neither splits/train.txt, train.txt nor an A/ folder; "
                        f"point --data-root at a folder with A/, B/ and label/")
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise DataError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return names, str(image_dir)


def labeled_count(total: int, fraction: float | None = None, count: int | None = None) -> int:
    """How many of ``total`` candidates are labelled: ``count``, or ``round(fraction * total)``
    at least 1; never more than all."""
    if count is not None:
        if count < 1:
            raise DataError(f"--num-labeled must be at least 1, got {count}")
        return min(total, count)
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    return min(total, max(1, int(math.floor(fraction * total + 0.5))))


def choose_labeled(names: Sequence[str], fraction: float | None, seed: int,
                   count: int | None = None) -> tuple[list[str], list[str]]:
    """Split ``names`` into (labelled, unlabelled), both sorted; deterministic by ``seed``."""
    chosen = labeled_count(len(names), fraction, count)
    duplicates = sorted(name for name, times in Counter(names).items() if times > 1)
    if duplicates:
        raise DataError(f"the training list names some files twice: {duplicates[:5]}")
    order = np.random.default_rng(seed).permutation(len(names))
    labeled = sorted(names[i] for i in order[:chosen])
    unlabeled = sorted(names[i] for i in order[chosen:])
    return labeled, unlabeled


def split_folder_candidates(data_root: Path) -> tuple[list[str], list[str], str]:
    """(train pairs with a label, pairs that are unlabelled material, where they came from) of
    the split_folders layout."""
    train = folder_entries(data_root / "train")
    candidates = [entry for entry in train if has_label(data_root, entry)]
    if not candidates:
        raise DataError(f"{data_root / 'train' / 'label'} holds no label for any pair of {data_root / 'train' / 'A'}; "
                        f"labelled pairs need train/label/<name> under the name of their A tile")
    material = [entry for entry in train if not has_label(data_root, entry)]
    if is_split_folder(data_root / "unlabeled"):
        material += folder_entries(data_root / "unlabeled")
    return candidates, material, str(data_root / "train")


def write_name_list(path: Path, names: Sequence[str]) -> None:
    atomic.write_text(path, "".join(f"{name}\n" for name in names))


def write_splits(data_root: str | Path, fraction: float | None, seed: int = 0, out_dir: str | Path | None = None,
                 train_list: str | Path | None = None, overwrite: bool = False, count: int | None = None,
                 layout: str = "auto") -> tuple[Path, Path]:
    """Write ``labeled.txt`` and ``unlabeled.txt``; returns their paths."""
    data_root = Path(data_root)
    material: list[str] = []
    if detect_layout(data_root, layout) == "split_folders":
        names, material, source = split_folder_candidates(data_root)
    else:
        names, source = find_train_names(data_root, train_list)
    labeled, unlabeled = choose_labeled(names, fraction, seed, count)
    unlabeled = sorted(unlabeled + material)
    default_name = str(count) if count is not None else percent_name(fraction)
    out_dir = Path(out_dir) if out_dir else data_root / "splits" / default_name
    labeled_path, unlabeled_path = out_dir / "labeled.txt", out_dir / "unlabeled.txt"
    refuse_existing((labeled_path, unlabeled_path), overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_name_list(labeled_path, labeled)
    write_name_list(unlabeled_path, unlabeled)
    print(f"{len(labeled)} labelled + {len(unlabeled)} unlabelled names from {source} -> {out_dir}")
    return labeled_path, unlabeled_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder with A/, B/, label/ (and optionally train.txt)")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--fraction", type=float, help="labelled fraction, e.g. 0.05 for 5%%")
    amount.add_argument("--num-labeled", type=int, help="number of labelled pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice (default 0)")
    parser.add_argument("--out", default=None, help="output folder (default DATA_ROOT/splits/<percent>%%/)")
    parser.add_argument("--train-list", default=None, help="training list to split (default: found in DATA_ROOT)")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS, help="folder tree of DATA_ROOT (default: detected)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing labeled.txt/unlabeled.txt")
    args = parser.parse_args(argv)
    try:
        write_splits(args.data_root, args.fraction, args.seed, args.out, args.train_list, args.overwrite,
                     args.num_labeled, args.layout)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
