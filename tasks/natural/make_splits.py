"""Write ``labeled.txt`` / ``unlabeled.txt`` for a semi-supervised run, in the official line format.

Usage::

    python -m tasks.natural.make_splits --dataset pascal --data-root DIR --num-labeled 92 \\
        --seed 0 --out DIR [--source-split FILE] [--overwrite]

The training pool is ``--source-split`` when given (any supported line format), otherwise the
dataset's own training list: Pascal ``ImageSets/Segmentation/train.txt`` (the synthetic set's
``splits/train.txt``), every ``leftImg8bit/train/*/*_leftImg8bit.png`` for Cityscapes, every
``train2017/*.jpg`` for COCO. ``--num-labeled`` is a count (``92``) or a fraction of the pool
(``1/16``, rounded up). Labelled images are drawn, by seed, among those whose mask exists; the
rest of the pool is unlabelled. Lines are written as ``IMAGE MASK`` root-relative paths, the
format of every official UniMatch split. Existing files are never replaced without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from tasks.natural.layouts import LAYOUTS, SplitEntry, get_layout, read_split
from unimatch import atomic
from unimatch.errors import DataError
from unimatch.paths import refuse_existing

DEFAULT_SOURCE_SPLITS = {
    "pascal": ("ImageSets/Segmentation/train.txt",),
    "synthetic": ("splits/train.txt", "ImageSets/Segmentation/train.txt"),
}
SPLIT_NAMES = ("labeled.txt", "unlabeled.txt")


def training_pool(dataset: str, data_root: Path, source_split: Path | None = None) -> list[tuple[str, str]]:
    """Root-relative (image, mask) pairs eligible for the split, in a fixed order."""
    layout = get_layout(dataset)
    if source_split is not None:
        return [_pair(entry) for entry in read_split(source_split, data_root, dataset, need_masks=False)]
    if dataset in DEFAULT_SOURCE_SPLITS:
        for relative in DEFAULT_SOURCE_SPLITS[dataset]:
            if (data_root / relative).is_file():
                entries = read_split(data_root / relative, data_root, dataset, need_masks=False)
                return [_pair(entry) for entry in entries]
        expected = " or ".join(str(data_root / relative) for relative in DEFAULT_SOURCE_SPLITS[dataset])
        raise DataError(
            f"no training list found ({expected}); pass --source-split FILE listing the training images, "
            "so that validation images are never drawn"
        )
    pattern = {"cityscapes": "leftImg8bit/train/*/*_leftImg8bit.png", "coco": "train2017/*.jpg"}[dataset]
    images = sorted(path.relative_to(data_root).as_posix() for path in data_root.glob(pattern))
    if not images:
        raise DataError(f"no training images match {data_root / pattern}; check --data-root or pass --source-split")
    return [(image, layout.mask_for_image(image)) for image in images]


def _pair(entry: SplitEntry) -> tuple[str, str]:
    return entry.image_rel, entry.mask_rel


def parse_num_labeled(text: str, pool_size: int) -> int:
    """A count (``92``) or a fraction of the pool (``1/16``, ``0.125``), rounded up."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"--num-labeled {text!r} is neither a count (92) nor a fraction (1/16)") from None
    if value.denominator == 1 and "/" not in text and "." not in text:
        count = int(value)
    else:
        if not 0 < value < 1:
            raise DataError(f"--num-labeled fraction {text} must lie strictly between 0 and 1")
        count = math.ceil(value * pool_size)
    if count < 1:
        raise DataError(f"--num-labeled must be at least 1; got {text}")
    if count >= pool_size:
        raise DataError(
            f"--num-labeled {text} leaves no unlabelled image: the training pool holds {pool_size} images"
        )
    return count


def draw_labeled(candidates: list[tuple[str, str]], num_labeled: int, seed: int) -> list[tuple[str, str]]:
    """``num_labeled`` candidates drawn without replacement by ``seed``, in draw order."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    return [candidates[i] for i in order[:num_labeled]]


def make_splits(
    dataset: str,
    data_root: str | os.PathLike,
    num_labeled: int | str,
    seed: int,
    out_dir: str | os.PathLike,
    source_split: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``out_dir/labeled.txt`` and ``out_dir/unlabeled.txt``; returns their paths."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise DataError(f"data root {data_root} is not a directory; check --data-root")
    targets = tuple(out_dir / name for name in SPLIT_NAMES)
    refuse_existing(targets, overwrite)

    pool = training_pool(dataset, data_root, Path(source_split) if source_split is not None else None)
    unique_pool = list(dict.fromkeys(pool))
    count = parse_num_labeled(str(num_labeled), len(unique_pool))
    with_masks = [pair for pair in unique_pool if (data_root / pair[1]).is_file()]
    if len(with_masks) < count:
        raise DataError(
            f"only {len(with_masks)} of {len(unique_pool)} training images have a mask under {data_root}, "
            f"fewer than --num-labeled {num_labeled}; check the masks or lower --num-labeled"
        )
    labeled = draw_labeled(with_masks, count, seed)
    chosen = set(labeled)
    unlabeled = [pair for pair in unique_pool if pair not in chosen]

    out_dir.mkdir(parents=True, exist_ok=True)
    for path, pairs in zip(targets, (labeled, unlabeled)):
        atomic.write_text(path, "".join(f"{image} {mask}\n" for image, mask in pairs))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.natural.make_splits",
        description="Write labeled.txt / unlabeled.txt (official UniMatch line format) for a natural-image dataset.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--data-root", required=True, help="dataset root (holds JPEGImages/, leftImg8bit/, ...)")
    parser.add_argument("--num-labeled", required=True, help="labelled count (92) or fraction of the pool (1/16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder that receives labeled.txt and unlabeled.txt")
    parser.add_argument("--source-split", default=None, help="split file listing the training pool")
    parser.add_argument("--overwrite", action="store_true", help="replace existing labeled.txt / unlabeled.txt")
    args = parser.parse_args(argv)
    try:
        labeled_path, unlabeled_path = make_splits(
            args.dataset, args.data_root, args.num_labeled, args.seed, args.out, args.source_split, args.overwrite
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_labeled = sum(1 for _ in open(labeled_path, encoding="utf-8"))
    n_unlabeled = sum(1 for _ in open(unlabeled_path, encoding="utf-8"))
    print(f"wrote {n_labeled} labelled lines to {labeled_path} and {n_unlabeled} unlabelled lines to {unlabeled_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
