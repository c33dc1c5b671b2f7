"""A small synthetic segmentation dataset written in the real Pascal VOC layout.

Why synthetic: the suite must train, evaluate and be tested without downloading anything. This
module writes the datasets (folders, split lists, ``meta.json``, the cache folder's name); the
pictures are drawn by :mod:`tasks.natural.scenes`, where an object's class is told by its shape
and texture and colour is only a prior. :class:`~tasks.natural.scenes.SceneStyle` sets how busy
the background is: the default clutter (2-6 irregular blobs, a fifth of them wearing an object
texture, and lines) makes a set where a few labelled images do not saturate the model but the
teacher stays unsure of the objects; the demo config uses ``plain`` clutter (1-3 plain blobs) with
8 labelled images, where the unlabelled images measurably help (docs/benchmarks.md, "Natural
images: 8 labelled images"). :func:`ensure_synthetic_source` writes the pretraining source set:
the same shapes wearing other textures.

On disk (read by :mod:`tasks.natural.data` exactly like Pascal VOC)::

    JPEGImages/<id>.jpg          RGB JPEG, sizes vary between 3/4 * size and size per side
    SegmentationClass/<id>.png   palette PNG (VOC colour map), class ids, 255 = void boundary ring
    splits/train.txt             every training image  } official UniMatch line format:
    splits/labeled.txt           the labelled subset   } "JPEGImages/<id>.jpg SegmentationClass/<id>.png"
    splits/unlabeled.txt         the other train images}
    splits/val.txt               held-out images (checkpoint selection)
    splits/test.txt              as many other held-out images, scored once (benchmarks/label_efficiency.py)
    meta.json                    parameters, class names, counts (written last)

The whole directory is written into a temporary sibling and renamed into place, so a crash
never leaves a half-written dataset that later looks complete.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.natural.palette import save_palette_png, voc_palette
from tasks.natural.scenes import (DEMO_TEXTURES, IGNORE_INDEX, SOURCE_CLASSES, SOURCE_TEXTURES, SYNTHETIC_CLASSES,
                                  SYNTHETIC_NCLASS, SceneStyle, render_sample)
from unimatch.errors import DataError
from unimatch.paths import data_home, map_in_processes, write_once

SYNTHETIC_VERSION = 2  # 2: a held-out test split (as many images as val) for the benchmarks
SOURCE_SEED = 7

DEFAULT_N_IMAGES = 400
DEFAULT_SIZE = 96
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_LABELED_FRACTION = 0.1
JPEG_QUALITY = 90


def default_synthetic_root(
    n_images: int = DEFAULT_N_IMAGES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    labeled_fraction: float = DEFAULT_LABELED_FRACTION,
    style: SceneStyle = SceneStyle(),
) -> Path:
    """Cache directory of one parameter set: ``synthetic-vN`` for the defaults, a suffixed name otherwise."""
    name = f"synthetic-v{SYNTHETIC_VERSION}"
    defaults = (DEFAULT_N_IMAGES, DEFAULT_SIZE, 0, DEFAULT_LABELED_FRACTION)
    if (n_images, size, seed, labeled_fraction) != defaults:
        name += f"-n{n_images}-s{size}-seed{seed}-lab{labeled_fraction:g}"
    return data_home() / "natural" / (name + style.suffix())


def split_counts(n_images: int, labeled_fraction: float, val_fraction: float = DEFAULT_VAL_FRACTION):
    """(n_train, n_val, n_labeled) for a dataset of ``n_images``; each part has at least one image."""
    n_val = max(1, int(round(n_images * val_fraction)))
    n_train = n_images - n_val
    n_labeled = min(n_train - 1, max(1, int(round(n_train * labeled_fraction))))
    return n_train, n_val, n_labeled


def ensure_synthetic_voc(
    root: str | os.PathLike | None = None,
    n_images: int = DEFAULT_N_IMAGES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    labeled_fraction: float = DEFAULT_LABELED_FRACTION,
    textures: tuple = DEMO_TEXTURES,
    style: SceneStyle = SceneStyle(),
) -> Path:
    """Return the root of the synthetic VOC-layout dataset, writing it once if it is not there yet.

    ``root`` None means the shared cache (:func:`default_synthetic_root`). An existing root
    written with other parameters is never overwritten: a :class:`DataError` says so.
    ``textures`` gives each class its texture (:data:`DEMO_TEXTURES`, or :data:`SOURCE_TEXTURES`
    for the pretraining source set, :func:`ensure_synthetic_source`), ``style`` how colourful and
    busy the scenes are (:class:`SceneStyle`).
    """
    if n_images < 3:
        raise DataError(f"the synthetic dataset needs at least 3 images (train, labelled, val); got {n_images}")
    if size < 16:
        raise DataError(f"the synthetic image size must be at least 16 pixels; got {size}")
    if not 0.0 < labeled_fraction < 1.0:
        raise DataError(f"labeled_fraction must lie strictly between 0 and 1; got {labeled_fraction}")
    if sorted(textures) != list(range(SYNTHETIC_NCLASS)) or textures[0] != 0:
        raise DataError(f"textures must give classes 1..{SYNTHETIC_NCLASS - 1} the texture ids 1..{SYNTHETIC_NCLASS - 1} "
                        f"in some order (background 0); got {textures}")
    style.validate()
    root = Path(root) if root is not None else default_synthetic_root(n_images, size, seed, labeled_fraction, style)
    parameters = _parameters(n_images, size, seed, labeled_fraction, tuple(textures), style)
    return write_once(root, parameters, lambda folder: _write_dataset(folder, parameters))


def ensure_synthetic_source(root: str | os.PathLike | None = None) -> Path:
    """The pretraining source set: the demo's generator, other shape/texture pairs, another seed.

    Default root: ``data_home()/natural/synthetic-source-vN``. Every training image is in
    ``splits/train.txt``; pretraining uses all of them as labelled.
    """
    root = root if root is not None else data_home() / "natural" / f"synthetic-source-v{SYNTHETIC_VERSION}"
    return ensure_synthetic_voc(root, seed=SOURCE_SEED, textures=SOURCE_TEXTURES)


def _parameters(n_images: int, size: int, seed: int, labeled_fraction: float,
                textures: tuple = DEMO_TEXTURES, style: SceneStyle = SceneStyle()) -> dict:
    """``meta.json``'s parameters; ``textures`` and ``style`` only when not the defaults, so the
    folders written before they existed still match."""
    parameters = {
        "version": SYNTHETIC_VERSION,
        "n_images": n_images,
        "size": size,
        "seed": seed,
        "labeled_fraction": labeled_fraction,
    }
    if tuple(textures) != DEMO_TEXTURES:
        parameters["textures"] = list(textures)
    if style != SceneStyle():
        parameters["style"] = asdict(style)
    return parameters


def _write_sample(out: Path, ids: list[str], seed: int, size: int, textures: tuple, style: SceneStyle, palette,
                  index: int) -> np.ndarray:
    """Sample ``index`` from its own generator, saved as JPEG and palette PNG; its pixels per class
    (the last entry: ignored pixels)."""
    image, label = render_sample(np.random.default_rng([seed, index]), size, textures, style)
    Image.fromarray(image).save(out / "JPEGImages" / f"{ids[index]}.jpg", quality=JPEG_QUALITY)
    save_palette_png(label, out / "SegmentationClass" / f"{ids[index]}.png", palette)
    return np.bincount(np.where(label == IGNORE_INDEX, SYNTHETIC_NCLASS, label).ravel(), minlength=SYNTHETIC_NCLASS + 1)


def _write_dataset(out: Path, parameters: dict) -> None:
    n_images, size, seed = parameters["n_images"], parameters["size"], parameters["seed"]
    n_train, n_val, n_labeled = split_counts(n_images, parameters["labeled_fraction"])
    (out / "JPEGImages").mkdir()
    (out / "SegmentationClass").mkdir()
    (out / "splits").mkdir()
    palette = voc_palette()
    # the test images come after the first n_images, so train/val are those of version 1
    ids = [f"synth_{index:05d}" for index in range(n_images + n_val)]
    pixel_counts = np.zeros(SYNTHETIC_NCLASS + 1, dtype=np.int64)
    textures = tuple(parameters.get("textures", DEMO_TEXTURES))
    style = SceneStyle(**parameters.get("style", {}))
    render = functools.partial(_write_sample, out, ids, seed, size, textures, style, palette)
    for counts in map_in_processes(render, len(ids)):
        pixel_counts += counts

    def line(sample_id: str) -> str:
        return f"JPEGImages/{sample_id}.jpg SegmentationClass/{sample_id}.png\n"

    train_ids, val_ids, test_ids = ids[:n_train], ids[n_train:n_images], ids[n_images:]
    chosen = np.random.default_rng([seed, n_images]).permutation(n_train)[:n_labeled]
    labeled_ids = [train_ids[i] for i in chosen]
    labeled_set = set(labeled_ids)
    unlabeled_ids = [sample_id for sample_id in train_ids if sample_id not in labeled_set]
    for name, subset in (("train", train_ids), ("labeled", labeled_ids),
                         ("unlabeled", unlabeled_ids), ("val", val_ids), ("test", test_ids)):
        (out / "splits" / f"{name}.txt").write_text("".join(line(sample_id) for sample_id in subset))

    meta = dict(parameters)
    class_names = SYNTHETIC_CLASSES if textures == DEMO_TEXTURES else SOURCE_CLASSES if textures == SOURCE_TEXTURES \
        else tuple(f"class {i}" for i in range(SYNTHETIC_NCLASS))
    meta.update({
        "layout": "pascal",
        "classes": list(class_names),
        "nclass": SYNTHETIC_NCLASS,
        "ignore_index": IGNORE_INDEX,
        "counts": {"train": n_train, "labeled": n_labeled, "unlabeled": n_train - n_labeled, "val": n_val,
                   "test": n_val},
        "pixel_fraction": {
            name: round(float(count) / float(pixel_counts.sum()), 4)
            for name, count in zip(list(class_names) + ["void"], pixel_counts)
        },
    })
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
