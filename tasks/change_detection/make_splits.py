"""Write labelled/unlabelled split lists for a change-detection dataset.

    python -m tasks.change_detection.make_splits --data-root DIR --fraction 0.05 --seed 0 [--out DIR]

The training names come from ``train.txt`` (looked for in ``DIR/splits/`` then ``DIR/``, or given
with ``--train-list``), or from the file names in ``DIR/A/`` when there is no such list. A
``fraction`` of them, chosen by ``seed``, becomes ``labeled.txt``; the rest ``unlabeled.txt``,
both sorted, one file name per line, as in the official UniMatch split files. The default output
folder is ``DIR/splits/<percent>%/`` (e.g. ``splits/5%/``); existing lists are never overwritten
unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from unimatch import atomic
from unimatch.errors import DataError
from unimatch.paths import refuse_existing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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


def choose_labeled(names: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``names`` into (labelled, unlabelled), both sorted; deterministic by ``seed``.

    The labelled count is ``round(fraction * len(names))``, at least 1 and at most all.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataError(f"the training list names some files twice: {duplicates[:5]}")
    count = min(len(names), max(1, int(math.floor(fraction * len(names) + 0.5))))
    order = np.random.default_rng(seed).permutation(len(names))
    labeled = sorted(names[i] for i in order[:count])
    unlabeled = sorted(names[i] for i in order[count:])
    return labeled, unlabeled


def write_name_list(path: Path, names: Sequence[str]) -> None:
    atomic.write_text(path, "".join(f"{name}\n" for name in names))


def write_splits(data_root: str | Path, fraction: float, seed: int = 0, out_dir: str | Path | None = None,
                 train_list: str | Path | None = None, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``labeled.txt`` and ``unlabeled.txt``; returns their paths."""
    names, source = find_train_names(data_root, train_list)
    labeled, unlabeled = choose_labeled(names, fraction, seed)
    out_dir = Path(out_dir) if out_dir else Path(data_root) / "splits" / percent_name(fraction)
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
    parser.add_argument("--fraction", type=float, required=True, help="labelled fraction, e.g. 0.05 for 5%%")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice (default 0)")
    parser.add_argument("--out", default=None, help="output folder (default DATA_ROOT/splits/<percent>%%/)")
    parser.add_argument("--train-list", default=None, help="training list to split (default: found in DATA_ROOT)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing labeled.txt/unlabeled.txt")
    args = parser.parse_args(argv)
    try:
        write_splits(args.data_root, args.fraction, args.seed, args.out, args.train_list, args.overwrite)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
