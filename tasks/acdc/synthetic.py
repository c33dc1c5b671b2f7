"""A synthetic cardiac cine-MRI phantom written in the raw ACDC layout.

It lets every ACDC entry point and test run without the real dataset (which needs a
registration to download). The layout is ACDC's own::

    <root>/training/patient001/Info.cfg
    <root>/training/patient001/patient001_frame01.nii.gz       (ED image)
    <root>/training/patient001/patient001_frame01_gt.nii.gz    (ED labels)
    <root>/training/patient001/patient001_frameNN.nii.gz       (ES image, NN = Info.cfg "ES")
    <root>/training/patient001/patient001_frameNN_gt.nii.gz

Labels: 0 background, 1 right ventricle (RV), 2 myocardium, 3 left-ventricle cavity (LV).
Images are int16 with a patient-specific scale, ~1.5 mm in-plane and 10 mm between
slices, an oblique affine and sform/qform code 1 ("scanner"), like ACDC's files.

What makes it a segmentation problem rather than a threshold: a body ellipse with fat rim,
lungs, vessels and pericardial fat as bright/dark distractors that are background; a
myocardium about as dark as the surrounding muscle; dark papillary muscles inside the LV
that belong to the LV; an outflow-tract gap in some basal rings whose blood is background;
apical slices without a cavity or without an RV; and per patient a different heart size,
position, RV orientation, disease group (DCM: big thin LV, HCM: thick wall, RV: big RV,
MINF: thinned wall segment), contrast, smooth bias field, blur and Rician noise. The ES frame
has a smaller cavity and a thicker wall than ED. With one labelled patient a UNet sees only one
contrast, size and pose, so it has room to gain from the unlabelled patients. The phantom is a
pure function of the parameters and ``seed``, written once (``unimatch.paths.write_once``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from tasks.acdc.nifti_io import to_nibabel
from unimatch.errors import DataError
from unimatch.paths import data_home, write_once

SYNTHETIC_VERSION = "synthetic-v2"  # v2: 40 patients by default (v1: 20), so validation has 4
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
_MANIFEST = "synthetic.json"


@dataclass(frozen=True)
class PhantomParams:
    """Parameters that define a phantom; written to the manifest and checked on reuse."""

    n_patients: int = 40
    image_size: int = 128
    min_slices: int = 6
    max_slices: int = 10
    seed: int = 0

    def as_dict(self) -> dict:
        return {"version": SYNTHETIC_VERSION, **dataclasses.asdict(self)}


def default_synthetic_root(params: PhantomParams) -> Path:
    """``data_home()/acdc/synthetic-v2`` for the defaults; a parameter-hashed sibling otherwise."""
    base = data_home() / "acdc"
    if params == PhantomParams():
        return base / SYNTHETIC_VERSION
    digest = hashlib.sha1(json.dumps(params.as_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return base / f"{SYNTHETIC_VERSION}-{digest}"


def ensure_synthetic_acdc(root: Path | str | None = None, n_patients: int = PhantomParams.n_patients,
                          image_size: int = PhantomParams.image_size,
                          n_slices: tuple[int, int] = (PhantomParams.min_slices, PhantomParams.max_slices),
                          seed: int = PhantomParams.seed) -> Path:
    """Write the phantom once (if ``root`` does not hold it yet) and return ``root``.

    ``root`` defaults to a folder under ``unimatch.paths.data_home()/acdc``. ``image_size`` is
    the in-plane width in pixels (heights vary a little per patient); ``n_slices`` the range
    of slices per volume. Asking for different parameters in a ``root`` that already holds a
    phantom is a DataError (never overwritten).
    """
    if n_patients < 1 or image_size < 16 or not 1 <= n_slices[0] <= n_slices[1]:
        raise DataError(f"synthetic ACDC: bad parameters n_patients={n_patients}, image_size={image_size} "
                        f"(>=16), n_slices={n_slices}")
    params = PhantomParams(n_patients, image_size, int(n_slices[0]), int(n_slices[1]), seed)
    root = Path(root) if root is not None else default_synthetic_root(params)
    return write_once(root, params.as_dict(), lambda folder: _write_phantom(folder, params), manifest=_MANIFEST)


def _write_phantom(folder: Path, params: PhantomParams) -> None:
    training = folder / "training"
    for index in range(1, params.n_patients + 1):
        rng = np.random.default_rng([params.seed, index])
        patient = f"patient{index:03d}"
        case = _draw_patient(rng, params)
        out = training / patient
        out.mkdir(parents=True)
        affine = _draw_affine(rng, case.spacing_zyx)
        for frame, phase in ((case.ed_frame, "ED"), (case.es_frame, "ES")):
            image, label = _render_volume(case, phase, np.random.default_rng([params.seed, index, frame]))
            stem = f"{patient}_frame{frame:02d}"
            _save(out / f"{stem}.nii.gz", image.astype(np.int16), affine)
            _save(out / f"{stem}_gt.nii.gz", label.astype(np.uint8), affine)
        (out / "Info.cfg").write_text(
            f"ED: {case.ed_frame}\nES: {case.es_frame}\nGroup: {case.group}\n"
            f"Height: {case.height:.1f}\nNbFrame: {case.n_frames}\nWeight: {case.weight:.1f}\n")


def _save(path: Path, array_zyx: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(to_nibabel(array_zyx), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, str(path))


def _draw_affine(rng: np.random.Generator, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """An oblique short-axis orientation (rotation about all three axes) and a scanner offset."""
    angles = rng.uniform(-0.6, 0.6, size=3)
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    affine = np.eye(4)
    z, y, x = spacing_zyx
    affine[:3, :3] = rot_z @ rot_y @ rot_x @ np.diag([x, y, z])
    affine[:3, 3] = rng.uniform(-180, 180, size=3)
    return affine


@dataclass
class _Patient:
    """Everything drawn once per patient; slices and phases are rendered from it."""

    group: str
    shape_hw: tuple[int, int]
    n_slices: int
    spacing_zyx: tuple[float, float, float]
    ed_frame: int
    es_frame: int
    n_frames: int
    height: float
    weight: float
    centre: np.ndarray          # (y, x) of the LV at the base, pixels
    drift: np.ndarray           # centre shift from base to apex, pixels
    lv_radius: float            # ED endocardial radius at the base, pixels
    wall: float                 # ED wall thickness, pixels
    es_factor: float            # ES/ED cavity radius
    lv_ellipticity: float
    lv_angle: float
    rv_angle: float             # direction from LV centre to RV
    rv_twist: float             # change of that direction from base to apex
    rv_thickness: float
    rv_width: float
    rv_es_factor: float
    rv_extent: float            # fraction of slices (from the base) that show the RV
    infarct_angle: float | None
    apex_without_cavity: bool
    outflow_gap: float | None   # angle of an opening of the basal ring, or None
    papillary: list             # (angle, depth fraction, radius fraction)
    body_axes: tuple[float, float]
    body_centre: np.ndarray
    fat_width: float
    lungs: list                 # (centre yx, axes, angle)
    vessels: list               # (centre yx, radius, drift yx)
    pericardial_fat_arc: tuple[float, float] | None
    intensities: dict


def _draw_patient(rng: np.random.Generator, params: PhantomParams) -> _Patient:
    width = params.image_size
    height_px = int(round(width * rng.uniform(0.85, 1.0)))
    size = min(width, height_px)
    group = GROUPS[int(rng.integers(len(GROUPS)))]
    n_slices = int(rng.integers(params.min_slices, params.max_slices + 1))
    in_plane = float(rng.uniform(1.3, 1.75))
    spacing = (float(rng.choice([10.0, 10.0, 10.0, 8.0, 6.5])), in_plane, in_plane)
    n_frames = int(rng.integers(20, 31))
    scale = rng.uniform(0.85, 1.2)
    lv_radius = 0.085 * size * scale
    wall = 0.05 * size * scale
    es_factor = rng.uniform(0.58, 0.75)
    rv_thickness = 0.07 * size * scale * rng.uniform(0.8, 1.2)
    if group == "DCM":
        lv_radius *= 1.3
        wall *= 0.75
        es_factor = rng.uniform(0.85, 0.95)
    elif group == "HCM":
        lv_radius *= 0.8
        wall *= 1.6
        es_factor = rng.uniform(0.4, 0.55)
    elif group == "RV":
        rv_thickness *= 1.6
    centre = np.array([height_px / 2, width / 2]) + rng.uniform(-0.08, 0.08, size=2) * size
    body_axes = (height_px * rng.uniform(0.36, 0.46), width * rng.uniform(0.42, 0.49))
    lungs = []
    for side in (-1, 1):
        lung_centre = centre + np.array([rng.uniform(-0.1, 0.05), side * rng.uniform(0.22, 0.3)]) * size
        lungs.append((lung_centre, (rng.uniform(0.12, 0.2) * size, rng.uniform(0.07, 0.11) * size),
                      rng.uniform(-0.5, 0.5)))
    vessels = []
    for _ in range(int(rng.integers(2, 5))):
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.24, 0.34) * size * scale
        vessels.append((centre + distance * np.array([np.sin(angle), np.cos(angle)]),
                        rng.uniform(0.02, 0.045) * size, rng.uniform(-0.04, 0.04, size=2) * size))
    blood = rng.uniform(0.7, 0.95)
    intensities = {  # drawn in this order
        "air": rng.uniform(0.0, 0.04), "tissue": rng.uniform(0.22, 0.38), "fat": rng.uniform(0.55, 0.8),
        "lung": rng.uniform(0.04, 0.12), "lv_blood": blood, "rv_blood": blood * rng.uniform(0.82, 1.0),
        "vessel": blood * rng.uniform(0.85, 1.05), "myo": rng.uniform(0.15, 0.33),
        "papillary": rng.uniform(0.2, 0.4), "scale": rng.uniform(150.0, 900.0),
        "noise": rng.uniform(0.02, 0.07), "blur": rng.uniform(0.4, 1.0), "bias": rng.uniform(0.1, 0.4),
    }
    return _Patient(
        group=group, shape_hw=(height_px, width), n_slices=n_slices, spacing_zyx=spacing,
        ed_frame=1, es_frame=int(rng.integers(8, min(16, n_frames))), n_frames=n_frames,
        height=float(rng.uniform(150, 195)), weight=float(rng.uniform(50, 110)),
        centre=centre, drift=rng.uniform(-0.06, 0.06, size=2) * size,
        lv_radius=lv_radius, wall=wall, es_factor=es_factor,
        lv_ellipticity=rng.uniform(0.8, 1.0), lv_angle=rng.uniform(0, np.pi),
        rv_angle=np.pi + rng.uniform(-0.6, 0.6), rv_twist=rng.uniform(-0.4, 0.4),
        rv_thickness=rv_thickness, rv_width=rng.uniform(0.9, 1.25), rv_es_factor=rng.uniform(0.6, 0.8),
        rv_extent=rng.uniform(0.6, 0.9),
        infarct_angle=rng.uniform(0, 2 * np.pi) if group == "MINF" else None,
        apex_without_cavity=bool(rng.random() < 0.5),
        outflow_gap=rng.uniform(0, 2 * np.pi) if rng.random() < 0.5 else None,
        papillary=[(rng.uniform(0, 2 * np.pi), rng.uniform(0.65, 0.85), rng.uniform(0.15, 0.25))
                   for _ in range(int(rng.integers(1, 4)))],
        body_axes=body_axes, body_centre=np.array([height_px / 2, width / 2]) + rng.uniform(-0.03, 0.03, 2) * size,
        fat_width=rng.uniform(0.02, 0.045) * size, lungs=lungs, vessels=vessels,
        pericardial_fat_arc=(rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 2.5)) if rng.random() < 0.6 else None,
        intensities=intensities,
    )


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def _ellipse(yy, xx, centre, axes, angle) -> np.ndarray:
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u = c * dy + s * dx
    v = -s * dy + c * dx
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def _render_volume(case: _Patient, phase: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image (float, scanner units) and labels, both (Z, Y, X)."""
    height, width = case.shape_hw
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    images, labels = [], []
    bias = _bias_field(case, rng)
    for z in range(case.n_slices):
        image, label = _render_slice(case, phase, z, yy, xx)
        image = ndimage.gaussian_filter(image, case.intensities["blur"])
        image *= bias * rng.uniform(0.92, 1.08)
        images.append(image)
        labels.append(label)
    image = np.stack(images)
    sigma = case.intensities["noise"]
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return np.round(image * case.intensities["scale"]), np.stack(labels)


def _bias_field(case: _Patient, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative coil inhomogeneity, about 1 +- ``bias``."""
    height, width = case.shape_hw
    field = ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=min(height, width) / 4, mode="wrap")
    field /= np.abs(field).max() + 1e-8
    return np.exp(case.intensities["bias"] * field)


def _render_slice(case: _Patient, phase: str, z: int, yy: np.ndarray, xx: np.ndarray):
    inten = case.intensities
    # u runs from 0 at the base to 1 at the apex
    u = z / (case.n_slices - 1) if case.n_slices > 1 else 0.5
    image = np.full(yy.shape, inten["air"])
    label = np.zeros(yy.shape, dtype=np.uint8)

    body = _ellipse(yy, xx, case.body_centre, case.body_axes, 0.0)
    inner = _ellipse(yy, xx, case.body_centre,
                     (case.body_axes[0] - case.fat_width, case.body_axes[1] - case.fat_width), 0.0)
    image[body] = inten["fat"]
    image[inner] = inten["tissue"]
    for centre, axes, angle in case.lungs:
        image[_ellipse(yy, xx, centre + case.drift * u * 0.5, axes, angle) & inner] = inten["lung"]
    for centre, radius, drift in case.vessels:
        image[_ellipse(yy, xx, centre + drift * u, (radius, radius), 0.0) & inner] = inten["vessel"]

    centre = case.centre + case.drift * u
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx)
    # endocardium: an ellipse shrinking towards the apex; wall area kept between ED and ES
    profile = 0.3 + 0.7 * np.sqrt(max(1.0 - u, 0.0))
    r_endo_ed = case.lv_radius * profile
    r_epi_ed = r_endo_ed + case.wall * (0.9 + 0.25 * u)
    r_endo = r_endo_ed * (case.es_factor if phase == "ES" else 1.0)
    r_epi = np.sqrt(r_endo ** 2 + r_epi_ed ** 2 - r_endo_ed ** 2)
    if u >= 1.0 and case.apex_without_cavity:
        r_endo = 0.0
    c, s = np.cos(case.lv_angle), np.sin(case.lv_angle)
    a = (c * dy + s * dx) / case.lv_ellipticity
    b = -s * dy + c * dx
    radius = np.sqrt(a ** 2 + b ** 2)
    wall_scale = np.ones_like(radius)
    if case.infarct_angle is not None:
        wall_scale = np.where(_angle_diff(theta, case.infarct_angle) < 0.6, 0.5, 1.0)
    epi = radius <= r_endo + (r_epi - r_endo) * wall_scale
    endo = radius <= r_endo

    # pericardial fat hugging part of the epicardium (background)
    if case.pericardial_fat_arc is not None:
        start, span = case.pericardial_fat_arc
        arc = _angle_diff(theta, start + span / 2) < span / 2
        fat = (radius <= r_epi + 0.025 * min(yy.shape) + 1.0) & ~epi & arc
        image[fat] = inten["fat"]

    # RV: an ellipse on one side, minus the LV epicardium, with a thin dark free wall around it
    rv_scale = 1.0 - u / case.rv_extent
    if rv_scale > 0.05:
        rv_dir = case.rv_angle + case.rv_twist * u
        thickness = case.rv_thickness * np.sqrt(rv_scale) * (case.rv_es_factor if phase == "ES" else 1.0)
        offset = 0.75 * r_epi_ed
        along = 0.25 * r_epi_ed + thickness
        across = case.rv_width * (r_epi_ed + 0.3 * thickness) * (0.6 + 0.4 * rv_scale)
        rv_centre = centre + offset * np.array([np.sin(rv_dir), np.cos(rv_dir)])
        rv_outer = _ellipse(yy, xx, rv_centre, (along + 1.5, across + 1.5), rv_dir)
        rv = _ellipse(yy, xx, rv_centre, (along, across), rv_dir) & ~epi
        image[rv_outer & ~epi] = inten["myo"]
        image[rv] = inten["rv_blood"]
        label[rv] = 1

    image[epi] = inten["myo"]
    label[epi] = 2
    if r_endo > 0:
        image[endo] = inten["lv_blood"]
        label[endo] = 3
        for angle, depth, size in case.papillary:
            pos = centre + depth * r_endo * np.array([np.sin(angle), np.cos(angle)])
            muscle = _ellipse(yy, xx, pos, (size * r_endo, size * r_endo), 0.0) & endo
            image[muscle] = inten["papillary"]
        if u == 0.0 and case.outflow_gap is not None:
            # the basal ring opens into the outflow tract: blood there is background
            gap = (_angle_diff(theta, case.outflow_gap) < 0.45) & epi & ~endo
            image[gap] = inten["lv_blood"]
            label[gap] = 0
    return image, label
