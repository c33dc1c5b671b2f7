"""ACDC readers and datasets (raw NIfTI layout and the official preprocessed HDF5 layout).

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

Arrays are (Z, Y, X) = (D, H, W) everywhere (see ``tasks.acdc.nifti_io``).

Datasets (the project's data contract)
--------------------------------------
* ``LabeledSlices``: ``(image float32 (1, S, S) in [0, 1], mask int64 (S, S))``.
* ``UnlabeledSlices``: ``(image, ignore_mask int64 zeros (S, S))``: ACDC slices are resized,
  never padded, so nothing is ignored. It is built from images only; label files are never
  opened for unlabelled patients.
* ``VolumeDataset``: ``(volume float32 (D, H, W), label int64 (D, H, W), case_id, spacing (z, y, x) mm)``
  at full resolution.

Training slices get the official weak augmentation: with p=0.5 a random rot90 (k in 0..3)
plus a flip along a random axis, else with p=0.5 a rotation by an integer angle in [-20, 20)
degrees (nearest neighbour, no reshape, zero fill); then both image and mask are resized to
``crop_size`` x ``crop_size``. Labels always use order 0; the image uses ``image_order``
(default 0, the official's choice). The datasets own a numpy Generator that the engine
reseeds per worker and epoch (``reseed(seed)``); see ``_Augmenting``.

All slices and volumes are decoded once, at construction, and kept in memory (ACDC is about
1.5k slices), so an epoch never re-decodes a ``.nii.gz``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from tasks.acdc.nifti_io import read_nifti_volume
from tasks.acdc.splits import PatientSplit, case_parts, make_patient_split, read_split_list, split_from_lists
from unimatch.errors import DataError

NUM_CLASSES = 4
CLASS_NAMES = ("RV", "Myo", "LV")
NORMALIZATIONS = ("minmax", "percentile")


# ----------------------------------------------------------------------------- intensities

def normalize_intensity(volume: np.ndarray, method: str = "minmax",
                        percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map one volume to float32 [0, 1]: min-max, or clipped to ``percentiles`` first."""
    volume = np.asarray(volume, dtype=np.float32)
    if method == "minmax":
        low, high = float(volume.min()), float(volume.max())
    elif method == "percentile":
        low, high = (float(v) for v in np.percentile(volume, percentiles))
    else:
        raise DataError(f"unknown intensity normalisation {method!r}; choose one of {NORMALIZATIONS}")
    if high <= low:
        return np.zeros_like(volume)
    return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def check_labels(label: np.ndarray, path: Path | str) -> np.ndarray:
    """Labels as int64, refusing anything but the integers 0..3."""
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DataError(f"{path}: label volume holds non-integer values; expected 0 bg, 1 RV, 2 Myo, 3 LV")
    label = label.astype(np.int64)
    values = np.unique(label)
    bad = values[(values < 0) | (values >= NUM_CLASSES)]
    if bad.size:
        raise DataError(f"{path}: labels {bad[:10].tolist()} outside 0..{NUM_CLASSES - 1} "
                        "(0 bg, 1 RV, 2 Myo, 3 LV)")
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
    """``(volume float32 [0,1] (D,H,W), label int64 or None, spacing (z,y,x), affine)``.

    With labels, the image and ground truth must share shape and affine.
    """
    image = read_nifti_volume(case.image_path)
    volume = normalize_intensity(image.data, normalization)
    if not with_label:
        return volume, None, image.spacing, image.image.affine
    if not case.label_path.is_file():
        raise DataError(f"{case.label_path}: ground truth of {case.image_path.name} not found")
    truth = read_nifti_volume(case.label_path, dtype=np.float64)
    if truth.data.shape != image.data.shape:
        raise DataError(f"{case.label_path}: shape {truth.data.shape} differs from its image "
                        f"{case.image_path.name} {image.data.shape}")
    if not np.allclose(truth.image.affine, image.image.affine, rtol=1e-4, atol=1e-3):
        raise DataError(f"{case.label_path}: affine differs from that of its image {case.image_path.name}; "
                        "the ground truth is on another grid")
    return volume, check_labels(truth.data, case.label_path), image.spacing, image.image.affine


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
        image = np.asarray(file["image"][()], dtype=np.float32)
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


def _h5_volume_files(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted((root / "data").glob("patient*_frame*.h5")):
        patient, _, _ = case_parts(path.name)
        files.setdefault(patient, []).append(path)
    return files


def _h5_slice_files(root: Path, volume: Path) -> list[Path]:
    stem = volume.name[: -len(".h5")]
    found = list((root / "data" / "slices").glob(f"{stem}_slice_*.h5"))
    return sorted(found, key=lambda p: case_parts(p.name)[2])


# ----------------------------------------------------------------------------- augmentation

def weak_augment(image: np.ndarray, mask: np.ndarray | None, crop_size: int, rng: np.random.Generator,
                 image_order: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The official medical weak view: rot90+flip (p=.5) or else rotation (p=.5), then resize."""
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = np.flip(np.rot90(image, k), axis=axis)
        if mask is not None:
            mask = np.flip(np.rot90(mask, k), axis=axis)
    elif rng.random() > 0.5:
        angle = int(rng.integers(-20, 20))
        image = ndimage.rotate(image, angle, order=image_order, reshape=False)
        if mask is not None:
            mask = ndimage.rotate(mask, angle, order=0, reshape=False)
    height, width = image.shape
    factors = (crop_size / height, crop_size / width)
    image = ndimage.zoom(np.ascontiguousarray(image), factors, order=image_order)
    if mask is not None:
        mask = ndimage.zoom(np.ascontiguousarray(mask), factors, order=0)
    return image, mask


class _Augmenting(Dataset):
    """Owns the numpy Generator of the weak augmentation.

    The engine calls ``reseed(seed)`` in every worker and at every epoch (and in the main
    process when it loads without workers), which makes views reproducible across a resume. A
    worker that was not reseeded (a plain DataLoader) seeds itself from ``torch.initial_seed()``,
    which PyTorch makes distinct per worker and epoch, so workers never repeat each other's views.
    """

    def __init__(self, seed: int):
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._rng_pid = os.getpid()

    def rng(self) -> np.random.Generator:
        if self._rng_pid != os.getpid():
            self.reseed(torch.initial_seed())
        return self._rng


# ----------------------------------------------------------------------------- datasets

class LabeledSlices(_Augmenting):
    """Labelled training slices; ``nsample`` repeats the list (like the official) to that length."""

    def __init__(self, slices: Sequence[tuple[np.ndarray, np.ndarray]], crop_size: int = 256,
                 nsample: int | None = None, image_order: int = 0, seed: int = 0):
        super().__init__(seed)
        if not slices:
            raise DataError("labelled ACDC set is empty: no labelled slices were found")
        self.slices = list(slices)
        self.crop_size = crop_size
        self.image_order = image_order
        self.indices = list(range(len(self.slices)))
        if nsample is not None and nsample > len(self.indices):
            self.indices = (self.indices * math.ceil(nsample / len(self.indices)))[:nsample]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        image, mask = self.slices[self.indices[item]]
        image, mask = weak_augment(image, mask, self.crop_size, self.rng(), self.image_order)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0), \
            torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


class UnlabeledSlices(_Augmenting):
    """Unlabelled training slices (images only): the weak view and an all-zero ignore mask.

    With ``labels_for_stats`` (one label per image) items are ``(image, ignore, label_for_stats)``,
    the label augmented like the view, for the pseudo-label statistics only (unimatch/health.py).
    """

    def __init__(self, images: Sequence[np.ndarray], crop_size: int = 256, image_order: int = 0, seed: int = 0,
                 labels_for_stats: Sequence[np.ndarray] | None = None):
        super().__init__(seed)
        self.images = list(images)
        self.labels_for_stats = list(labels_for_stats) if labels_for_stats is not None else None
        self.crop_size = crop_size
        self.image_order = image_order

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int):
        label = self.labels_for_stats[item] if self.labels_for_stats is not None else None
        image, label = weak_augment(self.images[item], label, self.crop_size, self.rng(), self.image_order)
        ignore = torch.zeros((self.crop_size, self.crop_size), dtype=torch.int64)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0)
        if label is None:
            return image, ignore
        return image, ignore, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


@dataclass(frozen=True)
class VolumeItem:
    volume: np.ndarray
    label: np.ndarray
    case_id: str
    spacing: tuple[float, float, float]


class VolumeDataset(Dataset):
    """Whole volumes for validation/testing, at full resolution."""

    def __init__(self, items: Sequence[VolumeItem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int):
        entry = self.items[item]
        return (torch.from_numpy(entry.volume.astype(np.float32, copy=False)),
                torch.from_numpy(entry.label.astype(np.int64, copy=False)),
                entry.case_id, tuple(float(s) for s in entry.spacing))


# ----------------------------------------------------------------------------- building

@dataclass
class ACDCDatasets:
    train_l: LabeledSlices
    train_u: UnlabeledSlices
    val: VolumeDataset
    test: VolumeDataset
    split: PatientSplit
    layout: str


def detect_layout(root: Path | str) -> str:
    """``"h5"`` for ``<root>/data/*.h5``, ``"raw"`` for patient folders; else a DataError."""
    if find_h5_root(root) is not None:
        return "h5"
    if find_raw_root(root) is not None:
        return "raw"
    raise DataError(f"{root}: neither ACDC layout found: expected <root>/data/patientXXX_frameYY.h5 "
                    "(preprocessed) or <root>/training/patientXXX/Info.cfg (raw)")


class _Reader:
    """Turns case/slice references into arrays for one layout; labels only when asked."""

    def __init__(self, root: Path, layout: str, normalization: str, h5_spacing: tuple[float, float, float]):
        self.root, self.layout = root, layout
        self.normalization, self.h5_spacing = normalization, h5_spacing
        if layout == "raw":
            self.raw_cases = list_raw_cases(root)
            self.raw_by_id = {c.case_id: c for frames in self.raw_cases.values() for c in frames}
            self.patients = sorted(self.raw_cases)
        else:
            self.h5_volumes = _h5_volume_files(root)
            self.patients = sorted(self.h5_volumes)

    # --- by patient
    def patient_slices(self, patient: str, with_label: bool):
        """All slices of the patient's frames: [(image, label or None)]."""
        out = []
        if self.layout == "raw":
            for case in self.raw_cases[patient]:
                volume, label, _, _ = load_raw_case(case, with_label, self.normalization)
                out += [(volume[z], label[z] if label is not None else None) for z in range(volume.shape[0])]
            return out
        for volume_path in self.h5_volumes[patient]:
            slice_files = _h5_slice_files(self.root, volume_path)
            if slice_files:
                out += [read_h5(p, with_label, ndim=2) for p in slice_files]
            else:
                volume, label = read_h5(volume_path, with_label, ndim=3)
                out += [(volume[z], label[z] if label is not None else None) for z in range(volume.shape[0])]
        return out

    def patient_volumes(self, patient: str) -> list[VolumeItem]:
        if self.layout == "raw":
            return [self.raw_volume(case) for case in self.raw_cases[patient]]
        return [self.h5_volume(path) for path in self.h5_volumes[patient]]

    # --- by list entry
    def raw_volume(self, case: RawCase) -> VolumeItem:
        volume, label, spacing, _ = load_raw_case(case, True, self.normalization)
        return VolumeItem(volume, label, case.case_id, spacing)

    def h5_volume(self, path: Path) -> VolumeItem:
        volume, label = read_h5(path, True, ndim=3)
        return VolumeItem(volume, label, path.name[: -len(".h5")], self.h5_spacing)

    def entry_volume(self, entry: str, list_path: Path) -> VolumeItem:
        patient, frame, slice_index = case_parts(entry)
        if slice_index is not None:
            raise DataError(f"{list_path}: {entry!r} is a slice; validation/test lists name whole volumes")
        if self.layout == "h5":
            return self.h5_volume(self._entry_path(entry, list_path))
        return self.raw_volume(self._raw_case(patient, frame, entry, list_path))

    def entry_slices(self, entries: Sequence[str], with_label: bool, list_path: Path):
        out, volumes = [], {}
        for entry in entries:
            patient, frame, slice_index = case_parts(entry)
            if self.layout == "h5":
                path = self._entry_path(entry, list_path)
                if slice_index is not None:
                    out.append(read_h5(path, with_label, ndim=2))
                else:
                    volume, label = read_h5(path, with_label, ndim=3)
                    out += [(volume[z], label[z] if label is not None else None) for z in range(volume.shape[0])]
                continue
            case = self._raw_case(patient, frame, entry, list_path)
            if case.case_id not in volumes:
                volume, label, _, _ = load_raw_case(case, with_label, self.normalization)
                volumes[case.case_id] = (volume, label)
            volume, label = volumes[case.case_id]
            indices = range(volume.shape[0]) if slice_index is None else [slice_index]
            for z in indices:
                if not 0 <= z < volume.shape[0]:
                    raise DataError(f"{list_path}: {entry!r}: slice {z} outside 0..{volume.shape[0] - 1}")
                out.append((volume[z], label[z] if label is not None else None))
        return out

    def _entry_path(self, entry: str, list_path: Path) -> Path:
        path = self.root / entry
        if not path.is_file():
            raise DataError(f"{list_path}: {entry!r} not found under {self.root}")
        return path

    def _raw_case(self, patient: str, frame: int, entry: str, list_path: Path) -> RawCase:
        case = self.raw_by_id.get(f"{patient}_frame{frame:02d}")
        if case is None:
            raise DataError(f"{list_path}: {entry!r} is not an ED/ES frame listed by {patient}/Info.cfg")
        return case


def build_acdc_datasets(root: Path | str, cases: int | None = None, *, crop_size: int = 256, seed: int = 0,
                        normalization: str = "minmax", image_order: int = 0,
                        labeled_list: Path | str | None = None, unlabeled_list: Path | str | None = None,
                        val_list: Path | str | None = None, test_list: Path | str | None = None,
                        h5_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                        unlabeled_labels_for_stats: bool = False) -> ACDCDatasets:
    """Labelled, unlabelled, validation and test sets of an ACDC folder (either layout).

    Either ``cases`` (labelled training patients; partition from ``tasks.acdc.splits`` with
    ``seed``) or the official list files ``labeled_list``, ``unlabeled_list``, ``val_list``
    (and optionally ``test_list``; entries relative to ``root``) choose who is in which set.
    The labelled set is not repeated here: the engine repeats it to the unlabelled length (the
    official ``nsample``); ``LabeledSlices(nsample=...)`` does the same for standalone use.
    ``unlabeled_labels_for_stats`` also reads the unlabelled patients' labels, for the pseudo-label
    statistics only (:class:`UnlabeledSlices`).
    """
    root = Path(root)
    if normalization not in NORMALIZATIONS:
        raise DataError(f"unknown intensity normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    reader = _Reader(root, detect_layout(root), normalization, h5_spacing)
    lists = (labeled_list, unlabeled_list, val_list)
    if any(p is not None for p in lists + (test_list,)):
        if any(p is None for p in lists):
            raise DataError("ACDC split lists: give labeled_list, unlabeled_list and val_list together")
        listed = split_from_lists(labeled_list, unlabeled_list, val_list, test_list)
        split = listed.patients
        labeled = reader.entry_slices(listed.labeled, True, Path(labeled_list))
        unlabeled = reader.entry_slices(listed.unlabeled, unlabeled_labels_for_stats, Path(unlabeled_list))
        val = [reader.entry_volume(e, Path(val_list)) for e in listed.val]
        test = [reader.entry_volume(e, Path(test_list)) for e in listed.test]
    else:
        if cases is None:
            raise DataError("ACDC: give the number of labelled patients (cases) or the split list files")
        split = make_patient_split(reader.patients, cases, seed)
        labeled = [s for p in split.labeled for s in reader.patient_slices(p, with_label=True)]
        unlabeled = [s for p in split.unlabeled for s in reader.patient_slices(p, unlabeled_labels_for_stats)]
        val = [v for p in split.val for v in reader.patient_volumes(p)]
        test = [v for p in split.test for v in reader.patient_volumes(p)]
    return ACDCDatasets(
        train_l=LabeledSlices(labeled, crop_size, image_order=image_order, seed=seed),
        train_u=UnlabeledSlices([image for image, _ in unlabeled], crop_size, image_order=image_order, seed=seed + 1,
                                labels_for_stats=[label for _, label in unlabeled] if unlabeled_labels_for_stats
                                else None),
        val=VolumeDataset(val), test=VolumeDataset(test), split=split, layout=reader.layout)


def build_eval_volumes(root: Path | str, which: str = "val", *, seed: int = 0, normalization: str = "minmax",
                       list_file: Path | str | None = None,
                       h5_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> VolumeDataset:
    """The validation or test volumes of an ACDC folder, without reading any training data.

    ``which`` (``"val"`` or ``"test"``) picks from the partition ``build_acdc_datasets`` makes
    with the same ``seed`` (its validation and test patients do not depend on ``cases``); a
    ``list_file`` (an official list such as ``val.txt`` or ``test.txt``) names the volumes instead.
    """
    root = Path(root)
    if normalization not in NORMALIZATIONS:
        raise DataError(f"unknown intensity normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    reader = _Reader(root, detect_layout(root), normalization, h5_spacing)
    if list_file is not None:
        return VolumeDataset([reader.entry_volume(e, Path(list_file)) for e in read_split_list(list_file)])
    if which not in ("val", "test"):
        raise DataError(f"evaluation set {which!r}: expected 'val', 'test' or an official list file")
    split = make_patient_split(reader.patients, 1, seed)
    patients = split.val if which == "val" else split.test
    return VolumeDataset([v for p in patients for v in reader.patient_volumes(p)])
