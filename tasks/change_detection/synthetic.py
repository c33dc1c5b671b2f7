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

This module decides what each tile holds and what changes between its dates, and writes the
dataset; :mod:`tasks.change_detection.drawing` paints the ground, roads, roofs, shadows and each
date's acquisition conditions.

On disk (the layout the official UniMatch remote-sensing code reads)::

    root/A/<name>.png  root/B/<name>.png  root/label/<name>.png   (labels 0/255)
    root/splits/train.txt  val.txt  test.txt
    root/splits/5%/labeled.txt  unlabeled.txt   (and 1.25%, 10%, 20%, 40%)
    root/meta.json  (the generation parameters)
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tasks.change_detection.drawing import (CANOPY, CANOPY_AUTUMN, HARVESTED, ROOF_COLOURS, Building, cast_shadows,
                                            draw_roads, draw_roof, paint_fields, photometric, smooth_noise)
from tasks.change_detection.make_splits import choose_labeled, percent_name, write_name_list
from unimatch.errors import DataError
from unimatch.paths import data_home, map_in_processes, write_once

VERSION = "v2"   # v2: the 1.25% split (4 of 320 tiles) of the demo config
FRACTIONS = (0.0125, 0.05, 0.1, 0.2, 0.4)
MAX_JITTER = 2


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
    names = [name for split in ("train", "val", "test") for name in splits[split]]
    map_in_processes(functools.partial(_write_tile, out, spec, names), len(names))
    for split in ("train", "val", "test"):
        write_name_list(out / "splits" / f"{split}.txt", splits[split])
    for fraction in FRACTIONS:
        labeled, unlabeled = choose_labeled(splits["train"], fraction, spec.seed)
        fraction_dir = out / "splits" / percent_name(fraction)
        fraction_dir.mkdir()
        write_name_list(fraction_dir / "labeled.txt", labeled)
        write_name_list(fraction_dir / "unlabeled.txt", unlabeled)
    (out / "meta.json").write_text(json.dumps(manifest_parameters(spec), indent=1))


def _write_tile(out: Path, spec: SyntheticSpec, names: list[str], index: int) -> None:
    """Tile ``index``: its pair and change mask from its own generator, saved as PNGs."""
    image_a, image_b, label = render_pair(np.random.default_rng([spec.seed, index]), spec.tile, spec)
    Image.fromarray(image_a).save(out / "A" / names[index])
    Image.fromarray(image_b).save(out / "B" / names[index])
    Image.fromarray(label).save(out / "label" / names[index])


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
