"""The scenes of the synthetic natural-image sets: what an object looks like and what lies behind it.

Why a module of its own: :mod:`tasks.natural.synthetic` writes the datasets (folders, splits,
``meta.json``); this one draws the pictures. A class is told by its SHAPE and its TEXTURE
(light/dark pattern): class c has shape c and wears texture ``textures[c]``. :data:`DEMO_TEXTURES`
gives the demo's classes (:data:`SYNTHETIC_CLASSES`), :data:`SOURCE_TEXTURES` those of the
pretraining source set (:data:`SOURCE_CLASSES`). Colour is only a prior (by default usually a hue
near the class's own, spread so that neighbouring classes overlap, otherwise any colour), on a
background of every hue. Colour jitter and grayscale are therefore real perturbations and the task
is learnable from scratch by a small DeepLabV3+ on a CPU. :class:`SceneStyle` sets how colourful the
objects and how busy the background are. :func:`render_sample` draws one image and its label, with
a thin void (255) ring where classes meet, as VOC marks object outlines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from unimatch.errors import DataError

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
IGNORE_INDEX = 255
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
