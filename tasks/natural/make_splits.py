"""Write ``labeled.txt`` / ``unlabeled.txt`` (and ``val.txt`` / ``test.txt``) for a semi-supervised
run, in the official line format.

Usage::

    python -m tasks.natural.make_splits --dataset pascal --data-root DIR --num-labeled 92 \\
        --seed 0 --out DIR [--source-split FILE] [--overwrite]
    python -m tasks.natural.make_splits --dataset folder --data-root DIR --labeled-fraction 0.25 \\
        --val 2 --test 0.2 --seed 0

The pool is ``--source-split`` when given (any supported line format), otherwise the dataset's own
training list: Pascal ``ImageSets/Segmentation/train.txt`` (the synthetic set's
``splits/train.txt``), every ``leftImg8bit/train/*/*_leftImg8bit.png`` for Cityscapes, every
``train2017/*.jpg`` for COCO, every image in ``images/`` for a folder of your own images.
``--num-labeled`` is a count (``92``) or a fraction of the pool less the validation and test
images (``1/16``, rounded up);
``--labeled-fraction F`` is that fraction. ``--val`` and ``--test`` (default 0: no list) are counts or
fractions of the images with a mask. One permutation by ``--seed`` of the images whose mask exists
gives, in this order, the validation, test and labelled images; every other image of the pool
(with or without a mask) is unlabelled. Lines are written as ``IMAGE MASK`` root-relative paths,
the format of every official UniMatch split (an image without a mask: ``IMAGE`` alone). The lists
go to ``--out`` (default: the data root, where ``train`` and ``evaluate --split val|test`` look for
them), each written atomically; existing lists are never replaced without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from tasks.natural.layouts import LAYOUTS, SplitEntry, folder_images, get_layout, is_folder_layout, read_split
from unimatch import atomic
from unimatch.errors import DataError
from unimatch.paths import refuse_existing

DEFAULT_SOURCE_SPLITS = {
    "pascal": ("ImageSets/Segmentation/train.txt",),
    "synthetic": ("splits/train.txt", "ImageSets/Segmentation/train.txt"),
}
SPLIT_NAMES = ("labeled.txt", "unlabeled.txt", "val.txt", "test.txt")


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
    if dataset == "folder":
        return [(image, layout.mask_for_image(image)) for image in folder_images(data_root)]
    pattern = {"cityscapes": "leftImg8bit/train/*/*_leftImg8bit.png", "coco": "train2017/*.jpg"}[dataset]
    images = sorted(path.relative_to(data_root).as_posix() for path in data_root.glob(pattern))
    if not images:
        raise DataError(f"no training images match {data_root / pattern}; check --data-root or pass --source-split")
    return [(image, layout.mask_for_image(image)) for image in images]


def _pair(entry: SplitEntry) -> tuple[str, str]:
    return entry.image_rel, entry.mask_rel


def parse_count(text: str, total: int, flag: str) -> int:
    """A count (``92``) or a fraction of ``total`` (``1/16``, ``0.125``), rounded up."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"{flag} {text!r} is neither a count (92) nor a fraction (1/16)") from None
    if value.denominator == 1 and "/" not in text and "." not in text:
        count = int(value)
    else:
        if not 0 < value < 1:
            raise DataError(f"{flag} fraction {text} must lie strictly between 0 and 1")
        count = math.ceil(value * total)
    if count < 0:
        raise DataError(f"{flag} must not be negative; got {text}")
    return count


def parse_num_labeled(text: str, pool_size: int) -> int:
    """The labelled count: at least 1, and fewer than the pool, which must keep unlabelled images."""
    count = parse_count(text, pool_size, "--num-labeled")
    if count < 1:
        raise DataError(f"--num-labeled must be at least 1; got {text}")
    if count >= pool_size:
        raise DataError(
            f"--num-labeled {text} leaves no unlabelled image: the training pool holds {pool_size} images"
        )
    return count


def draw_labeled(candidates: list[tuple[str, str]], num_labeled: int, seed: int) -> list[tuple[str, str]]:
    """``num_labeled`` candidates drawn without replacement by ``seed``, in draw order."""
    return draw_in_order(candidates, (num_labeled,), seed)[0]


def draw_in_order(candidates: list[tuple[str, str]], counts: tuple[int, ...], seed: int) -> list[list]:
    """Consecutive slices of sizes ``counts`` of one permutation of ``candidates`` by ``seed``."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    drawn, start = [], 0
    for count in counts:
        drawn.append([candidates[i] for i in order[start:start + count]])
        start += count
    return drawn


def split_line(image: str, mask: str, dataset: str, data_root: Path) -> str:
    """``IMAGE MASK``; ``IMAGE`` alone for an image of the folder layout without a mask (unlabelled
    material), whose list would otherwise name a file that does not exist."""
    return f"{image}\n" if dataset == "folder" and not (data_root / mask).is_file() else f"{image} {mask}\n"


def make_splits(
    dataset: str,
    data_root: str | os.PathLike,
    num_labeled: int | str,
    seed: int,
    out_dir: str | os.PathLike,
    source_split: str | os.PathLike | None = None,
    overwrite: bool = False,
    val: int | str = 0,
    test: int | str = 0,
) -> tuple[Path, ...]:
    """Write ``labeled.txt``, ``unlabeled.txt`` and, when ``val`` / ``test`` are not 0, ``val.txt`` /
    ``test.txt`` into ``out_dir``; returns the paths written, in that order."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise DataError(f"data root {data_root} is not a directory; check --data-root")
    refuse_existing([out_dir / name for name in SPLIT_NAMES], overwrite)

    pool = training_pool(dataset, data_root, Path(source_split) if source_split is not None else None)
    unique_pool = list(dict.fromkeys(pool))
    with_masks = [pair for pair in unique_pool if (data_root / pair[1]).is_file()]
    n_val = parse_count(str(val), len(with_masks), "--val")
    n_test = parse_count(str(test), len(with_masks), "--test")
    count = parse_num_labeled(str(num_labeled), len(unique_pool) - n_val - n_test)
    if len(with_masks) < n_val + n_test + count:
        raise DataError(
            f"only {len(with_masks)} of {len(unique_pool)} images have a mask under {data_root}, fewer than "
            f"--val {val} + --test {test} + --num-labeled {num_labeled} ({n_val + n_test + count}); check the masks "
            "or draw fewer"
        )
    val_pairs, test_pairs, labeled = draw_in_order(with_masks, (n_val, n_test, count), seed)
    chosen = set(val_pairs + test_pairs + labeled)
    unlabeled = [pair for pair in unique_pool if pair not in chosen]

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pairs in zip(SPLIT_NAMES, (labeled, unlabeled, val_pairs, test_pairs)):
        if pairs or name in SPLIT_NAMES[:2]:
            atomic.write_text(out_dir / name, "".join(split_line(image, mask, dataset, data_root)
                                                      for image, mask in pairs))
            written.append(out_dir / name)
    return tuple(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.natural.make_splits",
        description="Write labeled.txt / unlabeled.txt (and val.txt / test.txt) in the official UniMatch line "
                    "format for a natural-image dataset.",
    )
    parser.add_argument("--dataset", choices=sorted(LAYOUTS),
                        help="the layout; default: folder when the data root holds images/, else required")
    parser.add_argument("--data-root", required=True,
                        help="dataset root (holds JPEGImages/, leftImg8bit/, images/, ...)")
    labeled = parser.add_mutually_exclusive_group(required=True)
    labeled.add_argument("--num-labeled", help="labelled count (92) or fraction of the pool (1/16)")
    labeled.add_argument("--labeled-fraction", type=float, help="labelled fraction of the pool (0.25)")
    parser.add_argument("--val", default="0", help="validation images with masks: count (20) or fraction (0.1)")
    parser.add_argument("--test", default="0", help="test images with masks: count (20) or fraction (0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder that receives the lists (default: the data root)")
    parser.add_argument("--source-split", default=None, help="split file listing the pool")
    parser.add_argument("--overwrite", action="store_true", help="replace existing lists")
    args = parser.parse_args(argv)
    num_labeled = args.num_labeled if args.num_labeled is not None else str(args.labeled_fraction)
    try:
        dataset = args.dataset or detected_dataset(Path(args.data_root))
        written = make_splits(dataset, args.data_root, num_labeled, args.seed, args.out or args.data_root,
                              args.source_split, args.overwrite, val=args.val, test=args.test)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{len(path.read_text(encoding='utf-8').splitlines())} to {path.name}" for path in written)
    print(f"{dataset}: wrote {counts} in {written[0].parent}")
    return 0


def detected_dataset(data_root: Path) -> str:
    """``folder`` for a root in the folder layout; any other layout must be named."""
    if is_folder_layout(data_root):
        print(f"dataset: folder (detected: {data_root} holds images/)", file=sys.stderr)
        return "folder"
    raise DataError(f"{data_root} has no images/ folder; name its layout with --dataset ({', '.join(sorted(LAYOUTS))})")


if __name__ == "__main__":
    sys.exit(main())
