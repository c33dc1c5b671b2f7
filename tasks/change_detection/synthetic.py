"""A small synthetic bi-temporal building-change dataset in the WHU-CD / LEVIR-CD layout.

Each tile is an aerial-looking scene (fields with plough rows, roads, tree canopy, buildings with
gable or flat roofs and cast shadows) seen twice. Between the two dates some buildings are built
(only in B) or demolished (only in A): their footprints are the labelled change (255). Everything
else that differs is *not* change and is there to make the task non-trivial:

- illumination: global gain, colour cast, gamma and haze drawn per date;
- season: fields harvested or ploughed (a green field turns brown), autumn tree colour;
- sun angle: shadows point another way and have another length;
- mis-registration: B is shifted by up to ``MAX_JITTER`` pixels against A;
- sensor: noise, and a slight blur on some B images (another ground resolution);
- hard negatives: bare-soil patches (cleared plots) appear without a building, roofs of the
  colour of soil.

Labels follow the annotator: a new building is outlined where it is seen in B, a demolished one
where it was seen in A.

On disk (the layout the official UniMatch remote-sensing code reads)::

    root/A/<name>.png  root/B/<name>.png  root/label/<name>.png   (labels 0/255)
    root/splits/train.txt  val.txt  test.txt
    root/splits/5%/labeled.txt  unlabeled.txt   (and 1.25%, 10%, 20%, 40%)
    root/meta.json  (the generation parameters)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from tasks.change_detection.make_splits import choose_labeled, percent_name, write_name_list
from unimatch.errors import DataError
from unimatch.paths import data_home, write_once

VERSION = "v2"   # v2: the 1.25% split (4 of 320 tiles) of the demo config
FRACTIONS = (0.0125, 0.05, 0.1, 0.2, 0.4)
MAX_JITTER = 2

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


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated files (stored in ``meta.json``)."""

    n_train: int = 320
    n_val: int = 64
    n_test: int = 64
    tile: int = 128
    seed: int = 0
    version: str = VERSION
    # share of tiles without change, share of changed buildings, building sides at 128 px (2.8% changed)
    no_change_share: float = 0.3
    change_rate: tuple = (0.2, 0.8)
    building_side: tuple = (6, 20)


    def change_parameters(self) -> tuple:
        return self.no_change_share, self.change_rate, self.building_side


@dataclass
class Building:
    y: int
    x: int
    h: int
    w: int
    state: str  # "kept", "built" (only in B) or "demolished" (only in A)
    roof: np.ndarray
    gable: bool


def ensure_synthetic_cd(root: str | Path | None = None, n_train: int = SyntheticSpec.n_train,
                        seed: int = SyntheticSpec.seed, tile: int = SyntheticSpec.tile, n_val: int = SyntheticSpec.n_val,
                        n_test: int = SyntheticSpec.n_test, no_change_share: float = SyntheticSpec.no_change_share,
                        change_rate: tuple = SyntheticSpec.change_rate,
                        building_side: tuple = SyntheticSpec.building_side) -> Path:
    """Path of the synthetic dataset, generating it once if it is not there yet.

    Default root: ``data_home()/change_detection/synthetic-v2`` for the default parameters, a
    name with the parameters appended otherwise, so two configurations never share a folder.
    Written into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a folder that looks complete. An existing root made with other parameters is an error.
    """
    spec = SyntheticSpec(n_train=n_train, n_val=n_val, n_test=n_test, tile=tile, seed=seed,
                         no_change_share=float(no_change_share), change_rate=tuple(float(v) for v in change_rate),
                         building_side=tuple(int(v) for v in building_side))
    if min(n_train, n_val, n_test) < 1 or tile < 32:
        raise DataError(f"synthetic change detection needs at least one tile per split and tile >= 32, got {spec}")
    if root is None:
        name = f"synthetic-{VERSION}"
        if spec != SyntheticSpec():
            name += f"-train{n_train}-val{n_val}-test{n_test}-tile{tile}-seed{seed}"
        if spec.change_parameters() != SyntheticSpec().change_parameters():
            name += "-change{:g}-{:g}-{:g}-side{}-{}".format(spec.no_change_share, *spec.change_rate, *spec.building_side)
        root = data_home() / "change_detection" / name
    return write_once(Path(root), manifest_parameters(spec), lambda folder: write_dataset(folder, spec))


def manifest_parameters(spec: SyntheticSpec) -> dict:
    """``meta.json``'s parameters; the change parameters only when not the defaults, so a folder
    written before they existed still matches."""
    default = spec.change_parameters() == SyntheticSpec().change_parameters()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()
            if not (default and k in ("no_change_share", "change_rate", "building_side"))}


def tile_names(spec: SyntheticSpec) -> dict[str, list[str]]:
    total = spec.n_train + spec.n_val + spec.n_test
    names = [f"synth_{i:05d}.png" for i in range(total)]
    return {"train": names[:spec.n_train],
            "val": names[spec.n_train:spec.n_train + spec.n_val],
            "test": names[spec.n_train + spec.n_val:]}


def write_dataset(out: Path, spec: SyntheticSpec) -> None:
    for sub in ("A", "B", "label", "splits"):
        (out / sub).mkdir(parents=True)
    splits = tile_names(spec)
    index = 0
    for split in ("train", "val", "test"):
        for name in splits[split]:
            image_a, image_b, label = render_pair(np.random.default_rng([spec.seed, index]), spec.tile, spec)
            Image.fromarray(image_a).save(out / "A" / name)
            Image.fromarray(image_b).save(out / "B" / name)
            Image.fromarray(label).save(out / "label" / name)
            index += 1
        write_name_list(out / "splits" / f"{split}.txt", splits[split])
    for fraction in FRACTIONS:
        labeled, unlabeled = choose_labeled(splits["train"], fraction, spec.seed)
        fraction_dir = out / "splits" / percent_name(fraction)
        fraction_dir.mkdir()
        write_name_list(fraction_dir / "labeled.txt", labeled)
        write_name_list(fraction_dir / "unlabeled.txt", unlabeled)
    (out / "meta.json").write_text(json.dumps(manifest_parameters(spec), indent=1))


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


def place_buildings(rng: np.random.Generator, size: int, scale: float, blocked: np.ndarray,
                    spec: SyntheticSpec = SyntheticSpec()) -> list[Building]:
    """Non-overlapping rectangles off the roads, each kept, built or demolished."""
    occupied = blocked.copy()
    # no draw when every tile has change, so the tiles of such a set do not depend on the default share
    no_change = spec.no_change_share > 0 and rng.random() < spec.no_change_share
    change_rate = 0.0 if no_change else rng.uniform(*spec.change_rate)
    count = int(rng.poisson(9 * scale * scale))
    buildings = []
    for _ in range(count * 4):
        if len(buildings) == count:
            break
        h, w = (int(rng.integers(round(spec.building_side[0] * scale), round(spec.building_side[1] * scale) + 1))
                for _ in range(2))
        y = int(rng.integers(1, size - h - 1))
        x = int(rng.integers(1, size - w - 1))
        if occupied[max(0, y - 3):y + h + 3, max(0, x - 3):x + w + 3].any():
            continue
        occupied[y:y + h, x:x + w] = True
        state = "kept"
        if rng.random() < change_rate:
            state = "built" if rng.random() < 0.7 else "demolished"
        roof = np.array(ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]) + rng.normal(0, 0.04, 3)
        buildings.append(Building(y, x, h, w, state, roof, bool(rng.random() < 0.5)))
    return buildings


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


def render_pair(rng: np.random.Generator, tile: int,
                spec: SyntheticSpec = SyntheticSpec()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile: (A uint8 (tile,tile,3), B uint8 (tile,tile,3), label uint8 (tile,tile) in {0,255})."""
    scale = tile / 128
    size = tile + 2 * MAX_JITTER
    ground_a, ground_b = paint_fields(rng, size)
    roads, road_image = draw_roads(rng, size, scale)
    ground_a[roads] = road_image[roads]
    ground_b[roads] = road_image[roads]

    canopy = smooth_noise(rng, (size, size), 2.0 * scale) > rng.uniform(0.8, 2.2)
    canopy &= ~roads
    canopy_texture = 0.05 * smooth_noise(rng, (size, size), 0.8)[..., None]
    autumn = rng.random() < 0.4
    ground_a[canopy] = (np.array(CANOPY) + canopy_texture)[canopy]
    ground_b[canopy] = (np.array(CANOPY_AUTUMN if autumn else CANOPY) + canopy_texture)[canopy]

    buildings = place_buildings(rng, size, scale, roads, spec)
    free = np.ones((size, size), bool)
    for building in buildings:
        free[max(0, building.y - 3):building.y + building.h + 3, max(0, building.x - 3):building.x + building.w + 3] = False
    for _ in range(int(rng.poisson(0.6))):  # cleared plots in B without a building: not change
        h, w = (int(v) for v in rng.integers(round(8 * scale), round(22 * scale) + 1, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        if free[y:y + h, x:x + w].all():
            ground_b[y:y + h, x:x + w] = np.array(HARVESTED[1]) + rng.normal(0, 0.03, (h, w, 3))
    for building in buildings:
        if building.state == "demolished" and rng.random() < 0.5:
            pad = 2
            ys, xs = slice(max(0, building.y - pad), building.y + building.h + pad), \
                slice(max(0, building.x - pad), building.x + building.w + pad)
            ground_b[ys, xs] = np.array(HARVESTED[1]) + rng.normal(0, 0.03, ground_b[ys, xs].shape)

    dates = {}
    for date, ground, present in (("A", ground_a, ("kept", "demolished")), ("B", ground_b, ("kept", "built"))):
        image = ground.copy()
        visible = [b for b in buildings if b.state in present]
        angle = rng.uniform(0, 2 * np.pi)
        sun = np.array([np.sin(angle), np.cos(angle)]) * rng.uniform(1.5, 4.0) * scale
        cast_shadows(image, visible, sun)
        for building in visible:
            draw_roof(image, building, rng, light=rng.uniform(0.5, 1.0))
        dates[date] = image

    jitter = rng.integers(-MAX_JITTER, MAX_JITTER + 1, 2)
    top_a = left_a = MAX_JITTER
    top_b, left_b = MAX_JITTER + int(jitter[0]), MAX_JITTER + int(jitter[1])
    image_a = photometric(rng, dates["A"][top_a:top_a + tile, left_a:left_a + tile])
    crop_b = dates["B"][top_b:top_b + tile, left_b:left_b + tile]
    if rng.random() < 0.5:
        crop_b = ndimage.gaussian_filter(crop_b, (rng.uniform(0.4, 0.9),) * 2 + (0,))
    image_b = photometric(rng, crop_b)

    label = np.zeros((tile, tile), np.uint8)
    for building in buildings:
        if building.state == "kept":
            continue
        top, left = (top_b, left_b) if building.state == "built" else (top_a, left_a)
        y0, x0 = max(0, building.y - top), max(0, building.x - left)
        y1, x1 = min(tile, building.y + building.h - top), min(tile, building.x + building.w - left)
        label[y0:y1, x0:x1] = 255
    return image_a, image_b, label
