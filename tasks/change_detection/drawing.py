"""Raster drawing of the synthetic change-detection tiles: the ground, the roads and the buildings.

Why a module of its own: :mod:`tasks.change_detection.synthetic` decides what a tile holds and
what changes between its two dates (which buildings are built or demolished, mis-registration,
the label) and writes the dataset; this module paints it: fields with plough or crop rows (some
harvested by the second date), roads, roofs with a lit and a shaded slope or a parapet, cast
shadows along the sun, and each date's acquisition conditions (gain, colour cast, gamma, haze,
sensor noise). Colours are float RGB in [0, 1] until :func:`photometric` turns them into uint8.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

FIELD_COLOURS = {  # RGB in [0, 1]; "green" fields may be harvested between the dates
    "crop": ((0.30, 0.45, 0.20), True),
    "meadow": ((0.42, 0.52, 0.28), True),
    "soil": ((0.55, 0.45, 0.33), False),
    "dry_grass": ((0.62, 0.58, 0.40), False),
    "dark_soil": ((0.38, 0.32, 0.25), False),
}
HARVESTED = ((0.60, 0.54, 0.36), (0.52, 0.43, 0.31))
ROOF_COLOURS = ((0.62, 0.30, 0.24), (0.56, 0.56, 0.56), (0.30, 0.30, 0.33), (0.82, 0.80, 0.74),
                (0.40, 0.50, 0.64), (0.52, 0.42, 0.32))
ROAD_COLOURS = ((0.45, 0.45, 0.47), (0.60, 0.53, 0.42))
CANOPY = (0.17, 0.29, 0.14)
CANOPY_AUTUMN = (0.40, 0.30, 0.14)


@dataclass
class Building:
    """A rectangle in the padded tile's pixels, its change state, its roof colour and kind."""

    y: int
    x: int
    h: int
    w: int
    state: str  # "kept", "built" (only in B) or "demolished" (only in A)
    roof: np.ndarray
    gable: bool


def smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def field_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """Field id per pixel: a Voronoi partition with wobbly borders."""
    count = int(rng.integers(3, 9))
    seeds = rng.uniform(0, size, (count, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy = yy + 4 * smooth_noise(rng, (size, size), size / 10)
    xx = xx + 4 * smooth_noise(rng, (size, size), size / 10)
    distance = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return distance.argmin(-1)


def paint_fields(rng: np.random.Generator, size: int):
    """Ground of both dates: (ground_a, ground_b) float RGB, with some fields harvested in B."""
    fields = field_layout(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    kinds = list(FIELD_COLOURS)
    ground_a = np.zeros((size, size, 3))
    ground_b = np.zeros((size, size, 3))
    harvest_probability = rng.uniform(0.0, 0.6)
    for field_id in range(fields.max() + 1):
        inside = fields == field_id
        colour, green = FIELD_COLOURS[kinds[rng.integers(len(kinds))]]
        colour = np.clip(np.array(colour) + rng.normal(0, 0.03, 3), 0, 1)
        texture = np.zeros((size, size))
        if rng.random() < 0.6:  # plough or crop rows
            angle = rng.uniform(0, np.pi)
            period = rng.uniform(3, 7)
            texture = rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        ground_a[inside] = colour + texture[inside, None]
        colour_b = colour
        if green and rng.random() < harvest_probability:
            colour_b = np.array(HARVESTED[rng.integers(len(HARVESTED))]) + rng.normal(0, 0.03, 3)
        ground_b[inside] = colour_b + texture[inside, None]
    grain = 0.03 * smooth_noise(rng, (size, size), 1.0)[..., None]
    return ground_a + grain, ground_b + grain


def draw_roads(rng: np.random.Generator, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Road mask (bool) and colour image; roads do not change between the dates."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        side = rng.integers(4)
        start = rng.uniform(0, size, 2)
        end = rng.uniform(0, size, 2)
        if side % 2 == 0:
            start[0], end[0] = 0, size - 1
        else:
            start[1], end[1] = 0, size - 1
        thickness = max(2, int(round(rng.uniform(2, 5) * scale)))
        cv2.line(mask, (int(start[1]), int(start[0])), (int(end[1]), int(end[0])), 1, thickness)
    colour = np.array(ROAD_COLOURS[rng.integers(len(ROAD_COLOURS))]) + rng.normal(0, 0.02, 3)
    image = colour + 0.02 * smooth_noise(rng, (size, size), 0.7)[..., None]
    return mask.astype(bool), image


def cast_shadows(image: np.ndarray, buildings: list[Building], sun: np.ndarray) -> None:
    """Darken the ground behind each building along the shadow vector ``sun`` (dy, dx)."""
    size = image.shape[0]
    shadow = np.zeros((size, size), bool)
    steps = int(np.ceil(np.abs(sun).max())) + 1
    for building in buildings:
        for t in np.linspace(0, 1, steps + 1)[1:]:
            dy, dx = np.round(sun * t).astype(int)
            y0, x0 = max(0, building.y + dy), max(0, building.x + dx)
            shadow[y0:max(0, building.y + building.h + dy), x0:max(0, building.x + building.w + dx)] = True
    image[shadow] *= 0.5


def draw_roof(image: np.ndarray, building: Building, rng: np.random.Generator, light: float) -> None:
    """Roof with a lit and a shaded slope (gable) or a darker parapet (flat)."""
    patch = np.broadcast_to(building.roof, (building.h, building.w, 3)).copy()
    if building.gable:
        if building.w >= building.h:
            half = building.h // 2
            patch[:half] *= 1 + 0.15 * light
            patch[half:] *= 1 - 0.15 * light
            patch[half - 1:half + 1] *= 1.1
        else:
            half = building.w // 2
            patch[:, :half] *= 1 + 0.15 * light
            patch[:, half:] *= 1 - 0.15 * light
            patch[:, half - 1:half + 1] *= 1.1
    else:
        patch *= 0.98
        border = np.ones((building.h, building.w), bool)
        border[1:-1, 1:-1] = False
        patch[border] *= 0.75
    patch += rng.normal(0, 0.015, patch.shape)
    image[building.y:building.y + building.h, building.x:building.x + building.w] = patch


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Acquisition conditions of one date: gain, colour cast, gamma, haze, sensor noise."""
    image = image * rng.uniform(0.8, 1.2) * rng.uniform(0.93, 1.07, 3)
    image = np.clip(image, 0, 1) ** rng.uniform(0.85, 1.15)
    if rng.random() < 0.3:
        haze = rng.uniform(0.05, 0.2)
        image = image * (1 - haze) + haze * 0.75
    image = image + rng.normal(0, 0.012, image.shape)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
