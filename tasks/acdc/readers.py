"""Reading ACDC: the raw NIfTI layout and the official preprocessed HDF5 layout.

Layouts
-------
raw (the ACDC download, or ``tasks.acdc.synthetic``)::

    <root>[/training]/patientXXX/Info.cfg                 (ED: n, ES: m, ...)
    <root>[/training]/patientXXX/patientXXX_frameNN.nii.gz
    <root>[/training]/patientXXX/patientXXX_frameNN_gt.nii.gz

  Each patient gives two volumes, its ED and ES frames named by Info.cfg. Intensities are
  normalised per volume to [0, 1]: ``"minmax"`` (default, what the official preprocessing
  did) maps min..max to 0..1; ``"percentile"`` first clips to the 0.5th-99.5th percentiles,
  so a few hot voxels do not squash the contrast.

h5 (the SSL4MIS/UniMatch preprocessed files)::

    <root>/data/patientXXX_frameYY.h5                 image, label: (D, H, W) volumes
    <root>/data/slices/patientXXX_frameYY_slice_N.h5  image, label: (H, W) slices

  Images there are already normalised per volume to [0, 1] and are used as they are. The
  files carry no voxel spacing; validation items get ``h5_spacing`` (default 1 mm).

Arrays are (Z, Y, X) = (D, H, W) everywhere (see ``tasks.acdc.nifti_io``); a NIfTI volume's
through-plane axis is read from its header (slices-first files too), and its ground truth is
read along the same axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from tasks.acdc.nifti_io import read_nifti_volume
from tasks.acdc.splits import case_parts
from unimatch.errors import DataError
from unimatch.finite import require_finite

NUM_CLASSES = 4
ACDC_LABELS = ("bg", "RV", "Myo", "LV")
NORMALIZATIONS = ("minmax", "percentile", "ct_window")
# Hounsfield units mapped to 0..1 by ``ct_window`` unless the config gives its own window
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)


# ----------------------------------------------------------------------------- intensities

def normalize_intensity(volume: np.ndarray, method: str = "minmax",
                        percentiles: tuple[float, float] = (0.5, 99.5),
                        window: tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """Map one volume to float32 [0, 1]: min-max, or clipped to ``percentiles`` first, or (CT)
    clipped to the fixed Hounsfield ``window``, the same mapping for every volume, so a value means
    the same tissue in every case (``DEFAULT_CT_WINDOW`` spans air to dense bone)."""
    volume = np.asarray(volume, dtype=np.float32)
    if method == "minmax":
        low, high = float(volume.min()), float(volume.max())
    elif method == "percentile":
        low, high = (float(v) for v in np.percentile(volume, percentiles))
    elif method == "ct_window":
        low, high = (float(v) for v in window)
    else:
        raise DataError(f"unknown intensity normalisation {method!r}; choose one of {NORMALIZATIONS}")
    if high <= low:
        return np.zeros_like(volume)
    return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def check_labels(label: np.ndarray, path: Path | str, names=ACDC_LABELS, named_by: str = "") -> np.ndarray:
    """Labels as int64, refusing anything but the integers 0..len(names)-1 (``named_by``: where
    the names come from, for the message)."""
    legend = ", ".join(f"{index} {name}" for index, name in enumerate(names))
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DataError(f"{path}: label volume holds non-integer values; expected {legend}")
    label = label.astype(np.int64)
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(names))]
    if bad.size:
        raise DataError(f"{path}: labels {bad[:10].tolist()} outside 0..{len(names) - 1} ({legend}{named_by})")
    return label


# ----------------------------------------------------------------------------- raw layout

@dataclass(frozen=True)
class RawCase:
    """One frame (ED or ES) of one patient in the raw layout."""

    patient: str
    frame: int
    phase: str
    image_path: Path
    label_path: Path

    @property
    def case_id(self) -> str:
        return f"{self.patient}_frame{self.frame:02d}"


def read_info_cfg(path: Path | str) -> dict[str, str]:
    """``key: value`` lines of an ACDC Info.cfg; ED and ES must be present and integers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: Info.cfg not found; every ACDC patient folder needs one (ED: n, ES: m)")
    info: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DataError(f"{path}, line {number}: {line!r} is not 'Key: value'")
        info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise DataError(f"{path}: no '{key}:' line; Info.cfg must name the ED and ES frames")
        if not info[key].isdigit():
            raise DataError(f"{path}: '{key}: {info[key]}' is not a frame number")
    return info


def find_raw_root(root: Path | str) -> Path | None:
    """The folder holding ``patientXXX/`` folders: ``root/training`` or ``root`` itself."""
    root = Path(root)
    for candidate in (root / "training", root):
        if candidate.is_dir() and any(p.is_dir() and p.name.startswith("patient") for p in candidate.iterdir()):
            return candidate
    return None


def list_raw_cases(root: Path | str, patients: Sequence[str] | None = None) -> dict[str, list[RawCase]]:
    """ED and ES frames of each patient (all, or ``patients``), from Info.cfg.

    A frame Info.cfg names whose image file is missing is a DataError naming both files.
    Ground-truth files are only looked for when labels are read.
    """
    folder = find_raw_root(root)
    if folder is None:
        raise DataError(f"{root}: no patientXXX folders found (expected <root>/training/patientXXX/Info.cfg)")
    available = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("patient"))
    wanted = list(patients) if patients is not None else available
    missing = [p for p in wanted if p not in available]
    if missing:
        raise DataError(f"{folder}: patient folders {missing[:5]} not found")
    cases: dict[str, list[RawCase]] = {}
    for patient in wanted:
        info_path = folder / patient / "Info.cfg"
        info = read_info_cfg(info_path)
        frames = []
        for phase in ("ED", "ES"):
            frame = int(info[phase])
            stem = f"{patient}_frame{frame:02d}"
            image_path = folder / patient / f"{stem}.nii.gz"
            if not image_path.is_file():
                raise DataError(f"{info_path}: {phase}: {frame} points to {image_path.name}, which does not exist")
            frames.append(RawCase(patient, frame, phase, image_path, folder / patient / f"{stem}_gt.nii.gz"))
        cases[patient] = frames
    return cases


def load_raw_case(case: RawCase, with_label: bool, normalization: str = "minmax"):
    """``(volume float32 [0,1] (D,H,W), label int64 or None, spacing (z,y,x), affine)``."""
    return load_labelled_volume(case.image_path, case.label_path if with_label else None, normalization)


def load_labelled_volume(image_path: Path, label_path: Path | None, normalization: str = "minmax",
                         window: tuple[float, float] = DEFAULT_CT_WINDOW, names=ACDC_LABELS, named_by: str = ""):
    """``(volume float32 [0,1] (D,H,W), label int64 or None, spacing (z,y,x), affine)`` of a NIfTI
    image and, unless ``label_path`` is None, its ground truth, which must share its shape and
    affine and hold only the classes ``names``."""
    image = read_nifti_volume(image_path)
    volume = normalize_intensity(image.data, normalization, window=window)
    if label_path is None:
        return volume, None, image.spacing, image.image.affine
    if not label_path.is_file():
        raise DataError(f"{label_path}: ground truth of {image_path.name} not found")
    truth = read_nifti_volume(label_path, dtype=np.float64, slice_axis=image.slice_axis)
    if truth.data.shape != image.data.shape:
        raise DataError(f"{label_path}: shape {truth.data.shape} differs from its image "
                        f"{image_path.name} {image.data.shape}")
    if not np.allclose(truth.image.affine, image.image.affine, rtol=1e-4, atol=1e-3):
        raise DataError(f"{label_path}: affine differs from that of its image {image_path.name}; "
                        "the ground truth is on another grid")
    return volume, check_labels(truth.data, label_path, names, named_by), image.spacing, image.image.affine


# ----------------------------------------------------------------------------- h5 layout

def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error}); re-copy it") from None


def read_h5(path: Path | str, with_label: bool, ndim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` (float32) and, if asked, ``label`` (int64) of an official .h5 file.

    ``ndim`` is 3 for ``data/*.h5`` volumes (D, H, W) and 2 for ``data/slices/*.h5`` slices.
    Without ``with_label`` the ``label`` dataset is not read.
    """
    path = Path(path)
    with _open_h5(path) as file:
        if "image" not in file:
            raise DataError(f"{path}: no 'image' dataset (found {sorted(file.keys())})")
        image = require_finite(np.asarray(file["image"][()], dtype=np.float32), f"{path} (dataset 'image')")
        label = None
        if with_label:
            if "label" not in file:
                raise DataError(f"{path}: no 'label' dataset (found {sorted(file.keys())})")
            label = np.asarray(file["label"][()])
    if image.ndim != ndim:
        raise DataError(f"{path}: 'image' has shape {image.shape}, expected {ndim} dimensions")
    if label is not None:
        if label.shape != image.shape:
            raise DataError(f"{path}: 'label' shape {label.shape} differs from 'image' {image.shape}")
        label = check_labels(label, path)
    return image, label


def find_h5_root(root: Path | str) -> Path | None:
    root = Path(root)
    return root if (root / "data").is_dir() and any((root / "data").glob("patient*_frame*.h5")) else None


def h5_volume_files(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted((root / "data").glob("patient*_frame*.h5")):
        patient, _, _ = case_parts(path.name)
        files.setdefault(patient, []).append(path)
    return files


def h5_slice_files(root: Path, volume: Path) -> list[Path]:
    stem = volume.name[: -len(".h5")]
    found = list((root / "data" / "slices").glob(f"{stem}_slice_*.h5"))
    return sorted(found, key=lambda p: case_parts(p.name)[2])
