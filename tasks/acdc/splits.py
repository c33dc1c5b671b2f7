"""Patient-level ACDC splits: labelled / unlabelled / validation / test.

Every split is by patient, so the ED and ES frames (and all slices) of one patient always
land in the same set.

Real ACDC (the 100 training patients ``patient001..patient100``) uses the partition of the
semi-supervised literature (SSL4MIS, UniMatch): the 10 validation and 20 test patients in
``LITERATURE_VAL`` / ``LITERATURE_TEST``; the other 70 are training patients, labelled in the
order of ``LITERATURE_LABELED_ORDER`` (``cases=1`` -> 099; ``3`` -> 099, 038, 050;
``7`` -> those and 021, 049, 058, 100).

Any other patient set (the synthetic phantom, a subset) is partitioned by ``seed``: the sorted
patient ids are shuffled with ``numpy.random.default_rng(seed)``; the first
``round(10%)`` (at least 1) are validation, the next ``round(20%)`` (at least 1) test, the
rest training. Training patients are labelled in a fixed order: the literature order first
(for real ACDC and ``cases`` beyond 7) and then the seeded order, so the labelled set for
``cases=k`` always contains the one for ``cases<k``.

The official UniMatch/SSL4MIS list files (``labeled.txt``, ``unlabeled.txt``, ``val.txt``,
``test.txt``: one entry per line such as ``data/slices/patient099_frame01_slice_15.h5`` or
``data/patient028_frame01.h5``) can be used instead: ``read_split_list`` parses one, and
``split_from_lists`` checks that no patient is in two of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from unimatch.errors import DataError
from unimatch.splits import check_disjoint, read_split_lines

LITERATURE_VAL = tuple(f"patient{i:03d}" for i in (2, 19, 28, 30, 39, 45, 78, 82, 85, 87))
LITERATURE_TEST = tuple(f"patient{i:03d}" for i in (1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75,
                                                     80, 81, 83, 84, 93))
LITERATURE_LABELED_ORDER = tuple(f"patient{i:03d}" for i in (99, 38, 50, 21, 49, 58, 100))
ACDC_TRAINING_PATIENTS = tuple(f"patient{i:03d}" for i in range(1, 101))

_PATIENT = re.compile(r"(patient\d{3})")
_ENTRY = re.compile(r"^(?:.*/)?(patient\d{3})_frame(\d{2})(?:_slice_(\d+))?(?:\.h5)?$")


@dataclass(frozen=True)
class FourSets:
    """What each of the four sets holds: the labelled, unlabelled, validation and test entries."""

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class PatientSplit(FourSets):
    """Patient ids (``patientXXX``) of each set; no patient is in two sets."""

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name in ("labeled", "unlabeled", "val", "test"):
            for patient in getattr(self, name):
                if patient in seen:
                    raise DataError(f"patient split: {patient} is in both the {seen[patient]} and the {name} set")
                seen[patient] = name

    @property
    def training(self) -> tuple[str, ...]:
        return self.labeled + self.unlabeled


def patient_of(entry: str) -> str:
    """``patientXXX`` of a case id, file name or split-file entry."""
    match = _PATIENT.search(str(entry))
    if match is None:
        raise DataError(f"{entry!r} names no ACDC patient (patientXXX)")
    return match.group(1)


def is_literature_acdc(patients: Iterable[str]) -> bool:
    """True when the patients are exactly ACDC's 100 training patients."""
    return set(patients) == set(ACDC_TRAINING_PATIENTS)


def make_patient_split(patients: Iterable[str], cases: int, seed: int = 0,
                       val_fraction: float = 0.1, test_fraction: float = 0.2) -> PatientSplit:
    """The patient partition with ``cases`` labelled training patients (see the module docstring)."""
    patients = sorted(set(patients))
    if not patients:
        raise DataError("patient split: no patients found")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    if is_literature_acdc(patients):
        val, test = list(LITERATURE_VAL), list(LITERATURE_TEST)
        held_out = set(val) | set(test)
        training = [p for p in order if p not in held_out]
        priority = list(LITERATURE_LABELED_ORDER)
    else:
        if len(patients) < 3:
            raise DataError(f"patient split: {len(patients)} patients cannot fill training, validation and test sets")
        n_val = max(1, int(round(val_fraction * len(patients))))
        n_test = max(1, int(round(test_fraction * len(patients))))
        n_val = min(n_val, len(patients) - 2)
        n_test = min(n_test, len(patients) - n_val - 1)
        val, test, training = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
        priority = []
    if not 1 <= cases <= len(training):
        raise DataError(f"patient split: cases={cases} labelled patients asked for, but there are "
                        f"{len(training)} training patients; choose cases between 1 and {len(training)}")
    ranked = [p for p in priority if p in training] + [p for p in training if p not in priority]
    labeled = ranked[:cases]
    unlabeled = sorted(p for p in training if p not in labeled)
    return PatientSplit(tuple(labeled), tuple(unlabeled), tuple(sorted(val)), tuple(sorted(test)))


def read_split_list(path: Path | str) -> list[str]:
    """Entries of an official list file (:func:`unimatch.splits.read_split_lines`).

    Each entry must name an ACDC case (``...patientXXX_frameYY[_slice_N][.h5]``); otherwise a
    DataError names the file and line.
    """
    entries = []
    for number, entry in read_split_lines(path):
        if _ENTRY.match(entry) is None:
            raise DataError(f"{path}, line {number}: {entry!r} is not an ACDC entry such as "
                            "'data/slices/patient099_frame01_slice_1.h5' or 'data/patient028_frame01.h5'")
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class ListSplit(FourSets):
    """Entries read from official list files, with the patient-level partition they imply."""

    patients: PatientSplit


def split_from_lists(labeled: Path | str, unlabeled: Path | str, val: Path | str,
                     test: Path | str | None = None, allow_labeled_in_unlabeled: bool = False) -> ListSplit:
    """Read the official list files; a patient listed in two of them is a DataError naming both
    (:func:`unimatch.splits.check_disjoint`), a labelled one among the unlabelled lists only a
    warning with ``allow_labeled_in_unlabeled``."""
    paths = {"labeled": labeled, "unlabeled": unlabeled, "val": val, "test": test}
    check_disjoint(paths, patient_of, allow_labeled_in_unlabeled)
    entries: dict[str, list[str]] = {name: read_split_list(p) if p is not None else [] for name, p in paths.items()}
    by_set = {name: tuple(dict.fromkeys(patient_of(e) for e in listed)) for name, listed in entries.items()}
    unlabeled_patients = tuple(p for p in by_set["unlabeled"] if p not in by_set["labeled"])
    return ListSplit(*(tuple(entries[n]) for n in ("labeled", "unlabeled", "val", "test")),
                     patients=PatientSplit(by_set["labeled"], unlabeled_patients, by_set["val"], by_set["test"]))


def case_parts(entry: str) -> tuple[str, int, int | None]:
    """(patient, frame, slice or None) of a list entry or file name."""
    match = _ENTRY.match(Path(entry).name)
    if match is None:
        raise DataError(f"{entry!r} is not an ACDC case name (patientXXX_frameYY[_slice_N])")
    patient, frame, slice_index = match.groups()
    return patient, int(frame), int(slice_index) if slice_index is not None else None
