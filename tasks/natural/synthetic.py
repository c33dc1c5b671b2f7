"""A small synthetic segmentation dataset written in the real Pascal VOC layout.

Why synthetic: the suite must train, evaluate and be tested without downloading anything.
Why this design: an object's class is told by its SHAPE and its TEXTURE (light/dark pattern);
colour is only a prior (by default usually a hue near the class's own, spread so that neighbouring
classes overlap, otherwise any colour), on a background of every hue. Colour jitter and grayscale
are therefore real perturbations and the task is learnable from scratch by a small DeepLabV3+ on
a CPU. :class:`SceneStyle` sets how busy the background is: the default clutter (2-6 irregular
blobs, a fifth of them wearing an object texture, and lines) makes a set where a few labelled
images do not saturate the model but the teacher stays unsure of the objects; the demo config
uses ``plain`` clutter (1-3 plain blobs) with 8 labelled images, where the unlabelled images
measurably help (docs/benchmarks.md, "Natural images: 8 labelled images").

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

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tasks.natural.palette import save_palette_png, voc_palette
from unimatch.errors import DataError
from unimatch.paths import data_home, write_once

SYNTHETIC_VERSION = 2  # 2: a held-out test split (as many images as val) for the benchmarks
SYNTHETIC_CLASSES = (
    "background",
    "striped disc",
    "checkered square",
    "dotted triangle",
    "hatched ring",
    "speckled cross",
)
SYNTHETIC_NCLASS = len(SYNTHETIC_CLASSES)
# Which texture (id as in _texture) each class wears. The source set pairs the same shapes with
# other textures, so its classes are not the demo's: it plays ImageNet to the demo's Pascal
# (tasks/natural/pretrain.py, unimatch/pretrained.py).
DEMO_TEXTURES = (0, 1, 2, 3, 4, 5)
SOURCE_TEXTURES = (0, 2, 3, 4, 5, 1)
SOURCE_CLASSES = (
    "background",
    "checkered disc",
    "dotted square",
    "hatched triangle",
    "speckled ring",
    "striped cross",
)
SOURCE_SEED = 7
IGNORE_INDEX = 255

DEFAULT_N_IMAGES = 400
DEFAULT_SIZE = 96
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_LABELED_FRACTION = 0.1
JPEG_QUALITY = 90
# Hue (0..1) around which each class's main colour is drawn (SceneStyle says how widely and how often).
CLASS_HUES = (0.0, 0.0, 0.2, 0.4, 0.6, 0.8)
CLUTTER_KINDS = ("textured", "plain")


@dataclass(frozen=True)
class SceneStyle:
    """How much an object's colour tells its class, and how busy the background is.

    The defaults are the scenes of the first versions (and of the pretraining source set): a colour
    that is usually (``class_hue_probability``) a hue near the class's own, spread
    (``class_hue_spread``) so that neighbouring classes overlap, on a background of 2-6 clutter
    blobs, a fifth of them wearing an object texture, and up to 3 lines (``clutter="textured"``).
    ``clutter="plain"`` draws 1-3 blobs of plain colour and no lines.
    """

    class_hue_probability: float = 0.8
    class_hue_spread: float = 0.08
    clutter: str = "textured"

    def validate(self) -> None:
        if not 0.0 <= self.class_hue_probability <= 1.0 or self.class_hue_spread < 0.0:
            raise DataError(f"class_hue_probability must lie in [0, 1] and class_hue_spread be >= 0; got {self}")
        if self.clutter not in CLUTTER_KINDS:
            raise DataError(f"clutter must be one of {CLUTTER_KINDS}; got {self.clutter!r}")

    def suffix(self) -> str:
        """The cache folder's suffix for a non-default style."""
        return "" if self == SceneStyle() else \
            f"-hue{self.class_hue_probability:g}-{self.class_hue_spread:g}-{self.clutter}"


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
    for index, sample_id in enumerate(ids):
        image, label = render_sample(np.random.default_rng([seed, index]), size, textures, style)
        Image.fromarray(image).save(out / "JPEGImages" / f"{sample_id}.jpg", quality=JPEG_QUALITY)
        save_palette_png(label, out / "SegmentationClass" / f"{sample_id}.png", palette)
        counts = np.bincount(np.where(label == IGNORE_INDEX, SYNTHETIC_NCLASS, label).ravel(),
                             minlength=SYNTHETIC_NCLASS + 1)
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


# ----------------------------------------------------------------------------- rendering

def render_sample(rng: np.random.Generator, size: int, textures: tuple = DEMO_TEXTURES,
                  style: SceneStyle = SceneStyle()) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its label (H, W) uint8 with class ids and a 255 void ring;
    an object of class c has shape c and texture ``textures[c]``, on a background of ``style``."""
    height = int(rng.integers(math.ceil(0.75 * size), size + 1))
    width = int(rng.integers(math.ceil(0.75 * size), size + 1))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

    canvas = _background(rng, height, width, ys, xs, style.clutter)
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        class_id = int(rng.integers(1, SYNTHETIC_NCLASS))
        radius = float(rng.uniform(0.16, 0.36)) * min(height, width)
        centre_y = float(rng.uniform(-0.05, 1.05)) * height
        centre_x = float(rng.uniform(-0.05, 1.05)) * width
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        u, v = _local_coordinates(xs, ys, centre_x, centre_y, angle)
        region = _shape(class_id, u, v, radius, rng)
        if not region.any():
            continue
        canvas[region] = _object_fill(rng, class_id, _texture(textures[class_id], u, v, rng), style)[region]
        label[region] = class_id

    image = _finish(rng, canvas, height, width)
    return image, _with_void_ring(label)


def _local_coordinates(xs, ys, centre_x, centre_y, angle):
    """Pixel coordinates rotated into an object's frame (units stay pixels)."""
    dx, dy = xs - centre_x, ys - centre_y
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _smooth_noise(rng, height, width, cells, channels) -> np.ndarray:
    """Low-frequency noise in [0, 1], (H, W, channels) float32."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.reshape(height, width, channels), 0.0, 1.0)


def _random_colour(rng) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _class_colour(rng, class_id: int, style: SceneStyle) -> np.ndarray:
    """A colour with a class prior: with probability ``style.class_hue_probability`` a hue near the
    class's own (spread by ``style.class_hue_spread``), otherwise any colour."""
    if rng.random() >= style.class_hue_probability:
        return _random_colour(rng)
    hue = (CLASS_HUES[class_id] + rng.normal(0.0, style.class_hue_spread)) % 1.0
    hsv = np.array([[[hue * 180.0, rng.uniform(0.45, 1.0) * 255.0, rng.uniform(0.45, 1.0) * 255.0]]], dtype=np.float32)
    return (cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0] / 255.0).astype(np.float32)


def _object_fill(rng, class_id: int, pattern: np.ndarray, style: SceneStyle) -> np.ndarray:
    """(H, W, 3) colours of an object: its colour where ``pattern`` is set, a darker (or, for a
    dark colour, lighter) shade of it elsewhere, so the texture is a light/dark pattern."""
    base = _class_colour(rng, class_id, style)
    if base.mean() > 0.4:
        shade = base * rng.uniform(0.25, 0.55)
    else:
        shade = base + rng.uniform(0.35, 0.6)
    return np.where(pattern[..., None], base, np.clip(shade, 0.0, 1.0).astype(np.float32))


def _two_colour_fill(rng, pattern: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours for clutter: ``pattern`` picks between two random colours that differ visibly."""
    first = _random_colour(rng)
    second = _random_colour(rng)
    for _ in range(20):
        if np.abs(first - second).mean() >= 0.2:
            break
        second = _random_colour(rng)
    return np.where(pattern[..., None], first, second).astype(np.float32)


def _texture(texture_id: int, u: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """Boolean texture (1 stripes ... 5 speckle) in the object's frame; the period (pixels) is random per object."""
    period = float(rng.uniform(5.0, 9.0))
    if texture_id == 1:  # stripes
        return np.sin(2.0 * math.pi * u / period) > 0.0
    if texture_id == 2:  # checkerboard
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if texture_id == 3:  # dots on a square grid
        du = u / period - np.round(u / period)
        dv = v / period - np.round(v / period)
        return du * du + dv * dv < 0.3 ** 2
    if texture_id == 4:  # diagonal cross-hatching
        return (np.abs(np.sin(math.pi * (u + v) / period)) < 0.3) | (np.abs(np.sin(math.pi * (u - v) / period)) < 0.3)
    # speckle: random cells of about 2 px
    cell = 2.0
    grid = rng.random((64, 64)) < 0.5
    iu = np.mod(np.floor(u / cell).astype(np.int64), 64)
    iv = np.mod(np.floor(v / cell).astype(np.int64), 64)
    return grid[iv, iu]


def _shape(class_id: int, u: np.ndarray, v: np.ndarray, radius: float, rng) -> np.ndarray:
    """Boolean region of a class's shape centred at the frame origin."""
    aspect = float(rng.uniform(0.7, 1.0))
    if class_id == 1:  # disc (slightly elliptic)
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    if class_id == 2:  # square (slightly rectangular)
        half = radius * 0.85
        return (np.abs(u) <= half) & (np.abs(v) <= half * aspect)
    if class_id == 3:  # equilateral triangle
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = 2.0 * math.pi * k / 3.0 + math.pi / 2.0
            inside &= u * math.cos(theta) + v * math.sin(theta) <= 0.5 * radius * 1.15
        return inside
    if class_id == 4:  # ring
        distance = np.sqrt(u * u + v * v)
        return (distance <= radius) & (distance >= radius * float(rng.uniform(0.45, 0.6)))
    # cross (plus sign)
    arm = radius * float(rng.uniform(0.25, 0.35))
    return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))


def _background(rng, height, width, ys, xs, clutter: str = "textured") -> np.ndarray:
    """Smooth colour field with irregular clutter blobs: ``textured`` 2-6 of them, a fifth carrying an
    object texture, and up to 3 lines; ``plain`` 1-3 blobs of plain colour."""
    canvas = 0.15 + 0.7 * _smooth_noise(rng, height, width, int(rng.integers(3, 7)), 3)
    textured = clutter == "textured"
    for _ in range(int(rng.integers(2, 7) if textured else rng.integers(1, 4))):
        blob = _irregular_blob(rng, height, width, ys, xs)
        if textured and rng.random() < 0.2:
            u, v = _local_coordinates(xs, ys, 0.0, 0.0, float(rng.uniform(0.0, 2.0 * math.pi)))
            fill = _two_colour_fill(rng, _texture(int(rng.integers(1, SYNTHETIC_NCLASS)), u, v, rng))
        else:
            fill = _random_colour(rng) * (0.6 + 0.4 * _smooth_noise(rng, height, width, 3, 1))
        canvas[blob] = np.broadcast_to(fill, canvas.shape)[blob]
    lines = np.ascontiguousarray(canvas)
    for _ in range(int(rng.integers(0, 4)) if textured else 0):
        start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(lines, start, end, _random_colour(rng).tolist(), int(rng.integers(1, 3)))
    return lines


def _irregular_blob(rng, height, width, ys, xs) -> np.ndarray:
    """A star-convex blob with a wobbly outline: clutter that matches none of the class shapes."""
    centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
    base = float(rng.uniform(0.08, 0.3)) * min(height, width)
    harmonics = rng.normal(0.0, 0.25, size=4)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=4)
    angle = np.arctan2(ys - centre_y, xs - centre_x)
    boundary = base * (1.0 + sum(h * np.sin((k + 2) * angle + p) for k, (h, p) in enumerate(zip(harmonics, phases))))
    return np.hypot(ys - centre_y, xs - centre_x) <= np.maximum(boundary, 0.2 * base)


def _finish(rng, canvas, height, width) -> np.ndarray:
    """Uneven lighting, a slight blur and sensor noise; returns uint8 RGB."""
    lighting = 0.7 + 0.5 * _smooth_noise(rng, height, width, 2, 1)
    picture = cv2.GaussianBlur(np.ascontiguousarray(canvas * lighting), (0, 0), sigmaX=0.7)
    picture = picture + rng.normal(0.0, 0.03, size=picture.shape).astype(np.float32)
    return np.clip(np.round(picture * 255.0), 0, 255).astype(np.uint8)


def _with_void_ring(label: np.ndarray) -> np.ndarray:
    """Mark a thin ring (about one pixel) where classes meet as 255, as VOC marks object outlines."""
    kernel = np.ones((2, 2), dtype=np.uint8)
    boundary = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    out = label.copy()
    out[boundary] = IGNORE_INDEX
    return out
