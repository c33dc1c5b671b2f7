"""Colour palettes for class-index masks, palette PNG writing and prediction overlays.

Pascal VOC stores its labels as palette ("P" mode) PNGs whose pixel values are class ids
and whose palette is the VOC bit-interleaved colour map; writing our masks the same way
keeps them readable by every VOC tool and viewable as colour images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unimatch import atomic
from unimatch.data import IGNORE_INDEX
from unimatch.errors import DataError
from unimatch.paths import refuse_existing

# Cityscapes colours of the 19 evaluation classes in train-id order (road, sidewalk, building, wall,
# fence, pole, traffic light, traffic sign, vegetation, terrain, sky, person, rider, car, truck, bus,
# train, motorcycle, bicycle), as RGB hex codes.
CITYSCAPES_TRAIN_ID_COLORS = tuple(
    tuple(bytes.fromhex(code)) for code in
    "804080 f423e8 464646 66669c be9999 999999 faaa1e dcdc00 6b8e23 98fb98"
    " 4682b4 dc143c ff0000 00008e 000046 003c64 005064 0000e6 770b20".split()
)


def voc_palette() -> np.ndarray:
    """The 256-entry Pascal VOC colour map, (256, 3) uint8: bits of the index spread over R, G, B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette[index] = (red, green, blue)
    return palette


def cityscapes_palette() -> np.ndarray:
    """(256, 3) uint8 palette with the official Cityscapes colour of each train id; others black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_TRAIN_ID_COLORS)] = np.asarray(CITYSCAPES_TRAIN_ID_COLORS, dtype=np.uint8)
    return palette


def palette_for(dataset: str) -> np.ndarray:
    """Palette conventionally used to show masks of ``dataset`` (Cityscapes colours or the VOC map)."""
    return cityscapes_palette() if dataset == "cityscapes" else voc_palette()


def class_colours(colours) -> np.ndarray:
    """(256, 3) uint8 palette whose first entries are ``colours`` (one [R, G, B] per class, the
    config's ``palette``) and whose rest is the VOC map: how masks of such a dataset are read and written."""
    palette = voc_palette()
    palette[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return palette


def ids_of_colours(rgb: np.ndarray, colours) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """(H, W) uint8 class ids of an (H, W, 3) colour mask whose class ``i`` is drawn in ``colours[i]``,
    and the first colour (in R, G, B order) that is no class's, or None."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    known = {(int(r) << 16) | (int(g) << 8) | int(b): index for index, (r, g, b) in enumerate(colours)}
    present, inverse = np.unique(codes, return_inverse=True)
    for code in present.tolist():
        if code not in known:
            return np.zeros(rgb.shape[:2], np.uint8), (code >> 16, (code >> 8) & 255, code & 255)
    ids = np.asarray([known[code] for code in present.tolist()], dtype=np.uint8)
    return ids[inverse.reshape(rgb.shape[:2])], None


def _as_index_mask(mask) -> np.ndarray:
    """A (H, W) uint8 array of class ids from a numpy array or torch tensor; refuses out-of-range ids."""
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if array.ndim != 2:
        raise DataError(f"a class-index mask must be 2-D (H, W); got shape {tuple(array.shape)}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(
            f"mask values must lie in 0..255 to be stored as a palette PNG; got {array.min()}..{array.max()}"
        )
    return array.astype(np.uint8)


def colorize(mask, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 colour image of a class-index mask (VOC palette unless one is given)."""
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    return palette[_as_index_mask(mask)]


def save_palette_png(mask, path, palette: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write ``mask`` (class ids, 255 = ignore) as a palette PNG; the stored values stay the class ids.

    Refuses to replace an existing file unless ``overwrite`` is true, so a run never
    silently destroys earlier predictions or labels.
    """
    path = Path(path)
    refuse_existing([path], overwrite)
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    image = Image.fromarray(_as_index_mask(mask))
    image.putpalette(palette.reshape(-1).tolist())  # turns the "L" image into "P", values unchanged
    with atomic.atomic_output(path) as temporary:
        image.save(temporary)
    return path


def _as_hwc_image(image) -> np.ndarray:
    """(H, W, 3) uint8 from an (H, W, 3) array or a (3, H, W) tensor/array (uint8 or float in [0, 1])."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"an overlay needs an RGB image (H, W, 3) or (3, H, W); got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return array


def overlay(
    image,
    mask,
    alpha: float = 0.5,
    palette: np.ndarray | None = None,
    background_index: int | None = 0,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Blend class colours over ``image`` with weight ``alpha``: a (H, W, 3) uint8 picture for predictions.

    Pixels of ``background_index`` (None: none) and ``ignore_index`` keep the image unchanged,
    so the scene stays visible where nothing was found.
    """
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"overlay alpha must lie in [0, 1]; got {alpha}")
    picture = _as_hwc_image(image)
    labels = _as_index_mask(mask)
    if labels.shape != picture.shape[:2]:
        raise DataError(
            f"overlay: mask shape {labels.shape} differs from image shape {picture.shape[:2]}; "
            "resize the prediction to the image first"
        )
    colours = colorize(labels, palette).astype(np.float32)
    blended = (1.0 - alpha) * picture.astype(np.float32) + alpha * colours
    keep = labels == ignore_index
    if background_index is not None:
        keep |= labels == background_index
    blended[keep] = picture[keep]
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
