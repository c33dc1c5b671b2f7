"""ACDC datasets on the files of :mod:`tasks.acdc.readers`.

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
``slice_size`` x ``slice_size`` (the official config calls it ``crop_size``; nothing is cropped).
Labels always use order 0; the image uses ``image_order`` (default 0, the official's choice). The
random stream is :class:`unimatch.data.WeakViewDataset`'s, reseeded per worker and epoch.

All slices and volumes are decoded once, at construction, and kept in memory (ACDC is about
1.5k slices), so an epoch never re-decodes a ``.nii.gz``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from tasks.acdc.readers import (NORMALIZATIONS, RawCase, find_h5_root, find_raw_root, h5_slice_files, h5_volume_files,
                                list_raw_cases, load_raw_case, read_h5)
from tasks.acdc.splits import PatientSplit, case_parts, make_patient_split, read_split_list, split_from_lists
from unimatch.data import WeakViewDataset
from unimatch.errors import DataError

# ----------------------------------------------------------------------------- augmentation

def weak_augment(image: np.ndarray, mask: np.ndarray | None, slice_size: int, rng: np.random.Generator,
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
    factors = (slice_size / height, slice_size / width)
    image = ndimage.zoom(np.ascontiguousarray(image), factors, order=image_order)
    if mask is not None:
        mask = ndimage.zoom(np.ascontiguousarray(mask), factors, order=0)
    return image, mask


def _slice_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0)


# ----------------------------------------------------------------------------- datasets

class LabeledSlices(WeakViewDataset):
    """Labelled training slices: ``(image float32 (1, s, s), mask int64 (s, s))``, s = ``slice_size``."""

    def __init__(self, slices: Sequence[tuple[np.ndarray, np.ndarray]], slice_size: int = 256,
                 image_order: int = 0, seed: int = 0):
        if not slices:
            raise DataError("labelled ACDC set is empty: no labelled slices were found")
        super().__init__(slices, seed)
        self.slice_size, self.image_order = slice_size, image_order

    def view(self, item, rng):
        image, mask = weak_augment(*item, self.slice_size, rng, self.image_order)
        return _slice_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


class UnlabeledSlices(WeakViewDataset):
    """Unlabelled training slices (images only): the weak view and an all-zero ignore mask.

    With ``labels_for_stats`` (one label per image) items are ``(image, ignore, label_for_stats)``,
    the label augmented like the view, for the pseudo-label statistics only (unimatch/health.py).
    """

    def __init__(self, images: Sequence[np.ndarray], slice_size: int = 256, image_order: int = 0, seed: int = 0,
                 labels_for_stats: Sequence[np.ndarray] | None = None):
        self.with_labels = labels_for_stats is not None
        super().__init__(list(zip(images, labels_for_stats)) if self.with_labels else list(images), seed)
        self.slice_size, self.image_order = slice_size, image_order

    def view(self, item, rng):
        image, label = item if self.with_labels else (item, None)
        image, label = weak_augment(image, label, self.slice_size, rng, self.image_order)
        ignore = torch.zeros((self.slice_size, self.slice_size), dtype=torch.int64)
        if label is None:
            return _slice_tensor(image), ignore
        return _slice_tensor(image), ignore, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


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
            self.h5_volumes = h5_volume_files(root)
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
            slice_files = h5_slice_files(self.root, volume_path)
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


def build_acdc_datasets(root: Path | str, cases: int | None = None, *, slice_size: int = 256, seed: int = 0,
                        normalization: str = "minmax", image_order: int = 0,
                        labeled_list: Path | str | None = None, unlabeled_list: Path | str | None = None,
                        val_list: Path | str | None = None, test_list: Path | str | None = None,
                        h5_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                        unlabeled_labels_for_stats: bool = False,
                        allow_labeled_in_unlabeled: bool = False) -> ACDCDatasets:
    """Labelled, unlabelled, validation and test sets of an ACDC folder (either layout).

    Either ``cases`` (labelled training patients; partition from ``tasks.acdc.splits`` with
    ``seed``) or the official list files ``labeled_list``, ``unlabeled_list``, ``val_list``
    (and optionally ``test_list``; entries relative to ``root``) choose who is in which set.
    The labelled set is not repeated here: the engine repeats it to the unlabelled length (the
    official ``nsample``, :class:`unimatch.data.RepeatDataset`).
    ``unlabeled_labels_for_stats`` also reads the unlabelled patients' labels, for the pseudo-label
    statistics only (:class:`UnlabeledSlices`). ``allow_labeled_in_unlabeled``: see
    :func:`tasks.acdc.splits.split_from_lists`.
    """
    root = Path(root)
    if normalization not in NORMALIZATIONS:
        raise DataError(f"unknown intensity normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    reader = _Reader(root, detect_layout(root), normalization, h5_spacing)
    lists = (labeled_list, unlabeled_list, val_list)
    if any(p is not None for p in lists + (test_list,)):
        if any(p is None for p in lists):
            raise DataError("ACDC split lists: give labeled_list, unlabeled_list and val_list together")
        listed = split_from_lists(labeled_list, unlabeled_list, val_list, test_list, allow_labeled_in_unlabeled)
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
        train_l=LabeledSlices(labeled, slice_size, image_order=image_order, seed=seed),
        train_u=UnlabeledSlices([image for image, _ in unlabeled], slice_size, image_order=image_order, seed=seed + 1,
                                labels_for_stats=[label for _, label in unlabeled] if unlabeled_labels_for_stats
                                else None),
        val=VolumeDataset(val), test=VolumeDataset(test), split=split, layout=reader.layout)


def build_eval_volumes(root: Path | str, which: str = "val", *, seed: int = 0, normalization: str = "minmax",
                       list_file: Path | str | None = None, patients: Sequence[str] | None = None,
                       h5_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> VolumeDataset:
    """The validation or test volumes of an ACDC folder, without reading any training data.

    ``which`` (``"val"`` or ``"test"``) picks from the partition ``build_acdc_datasets`` makes
    with the same ``seed`` (its validation and test patients do not depend on ``cases``); a
    ``list_file`` (an official list such as ``val.txt`` or ``test.txt``) names the volumes instead, and
    ``patients`` (a run's recorded split) the patients.
    """
    root = Path(root)
    if normalization not in NORMALIZATIONS:
        raise DataError(f"unknown intensity normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    reader = _Reader(root, detect_layout(root), normalization, h5_spacing)
    if list_file is not None:
        return VolumeDataset([reader.entry_volume(e, Path(list_file)) for e in read_split_list(list_file)])
    if which not in ("val", "test"):
        raise DataError(f"evaluation set {which!r}: expected 'val', 'test' or an official list file")
    if patients is None:
        split = make_patient_split(reader.patients, 1, seed)
        patients = split.val if which == "val" else split.test
    missing = sorted(set(patients) - set(reader.patients))
    if missing:
        raise DataError(f"{root} holds no {missing[0]} ({len(missing)} of the {which} patients missing); give the "
                        "data root the run was trained on, or --split FILE")
    return VolumeDataset([v for p in patients for v in reader.patient_volumes(p)])
