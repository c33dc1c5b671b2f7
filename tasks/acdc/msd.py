"""Your own volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (``dataset: msd``).

Layout::

    ROOT/dataset.json     labels, modality (MSD) or channel_names (nnU-Net v2), training (MSD)
    ROOT/imagesTr/        MSD: <case>.nii.gz; nnU-Net v2: <case>_0000<file_ending>
    ROOT/labelsTr/        <case><file_ending>: class ids named by dataset.json's labels
    ROOT/imagesTs/        images without labels: unlabelled training material and prediction inputs

``labels`` is read in either spelling (MSD ``{"0": "background", "1": "left atrium"}``, nnU-Net
v2 ``{"background": 0, "left atrium": 1}``); the ids must be 0..N-1, and they set ``nclass`` and
the class names, so the per-volume scores (:mod:`tasks.acdc.evaluation`) name the dataset's classes.
MSD lists its cases under ``training``; nnU-Net v2 lists none, so every ``labelsTr/<case>`` with
its ``imagesTr/<case>_0000`` is a case. Only one input channel is read for now.

Cases are split as ACDC patients are (:func:`tasks.acdc.splits.make_patient_split`): ``cases``
labelled training cases, validation and test cases drawn by ``seed``, or read from the
``val_split`` / ``test_split`` lists (one case id per line). The training cases that are not
labelled and every ``imagesTs/`` volume are unlabelled; their labels are never opened.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.acdc.data import ACDCDatasets, LabeledSlices, UnlabeledSlices, VolumeDataset, VolumeItem
from tasks.acdc.nifti_io import list_nifti_files, nifti_stem
from tasks.acdc.readers import load_labelled_volume
from tasks.acdc.splits import PatientSplit, make_patient_split
from unimatch.errors import ConfigError, DataError
from unimatch.splits import read_split_lines

MSD_DATASET = "msd"
DATASET_JSON = "dataset.json"
AUTO_NORM = "auto"
CHANNEL_SUFFIX = "_0000"     # nnU-Net v2: the first (here the only) input channel of a case


def modality_norm(modality: str) -> str:
    """``intensity_norm: auto``: a fixed Hounsfield window for CT (a CT value names a tissue in
    every scan, so every volume gets the same mapping), min-max per volume for MRI and anything
    else, whose intensities have no absolute unit."""
    return "ct_window" if modality.strip().upper() == "CT" else "minmax"


@dataclass(frozen=True)
class MsdCase:
    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class MsdLayout:
    """What ``dataset.json`` and the folders say: class names, modality, labelled cases, imagesTs."""

    root: Path
    class_names: tuple[str, ...]
    modality: str
    training: tuple[MsdCase, ...]
    test_images: tuple[Path, ...]

    @property
    def named_by(self) -> str:
        return f", as named in {self.root / DATASET_JSON}"

    def case(self, case_id: str) -> MsdCase:
        found = [case for case in self.training if case.case_id == case_id]
        if not found:
            raise DataError(f"{self.root / DATASET_JSON}: no training case {case_id!r}")
        return found[0]


def is_msd_root(root: Path | str) -> bool:
    return (Path(root) / DATASET_JSON).is_file()


def case_id_of(entry: str) -> str:
    """The case of an image, label or list entry: the file name without ``.nii[.gz]`` and the
    nnU-Net channel suffix ``_0000``."""
    stem = nifti_stem(Path(str(entry).strip()).name)
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) else stem


def _class_names(labels, path: Path) -> tuple[str, ...]:
    """Names by id from MSD's ``{"0": "background"}`` or nnU-Net v2's ``{"background": 0}``."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' must map class ids to names, "
                        "e.g. {\"0\": \"background\", \"1\": \"organ\"}")
    msd_form = all(str(key).isdigit() for key in labels)
    pairs = [(key, value) if msd_form else (value, key) for key, value in labels.items()]
    if not all(isinstance(i, int) or str(i).isdigit() for i, _ in pairs):
        raise DataError(f"{path}: 'labels' {labels} holds a non-integer id (region labels are not supported)")
    by_id = {int(i): str(name) for i, name in pairs}
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: label ids {sorted(by_id)} must be 0..{len(by_id) - 1}, 0 the background")
    return tuple(by_id[i] for i in range(len(by_id)))


def _modality(data: dict, path: Path) -> str:
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{path}: no 'channel_names' (nnU-Net v2) or 'modality' (MSD), e.g. {{\"0\": \"CT\"}}")
    if len(channels) != 1:
        raise DataError(f"{path}: {len(channels)} input channels {list(channels.values())}; "
                        "only one is supported for now")
    return str(next(iter(channels.values())))


def _existing(root: Path, entry: str, path: Path) -> Path:
    file = root / entry
    if not file.is_file():
        raise DataError(f"{path}: {entry} not found under {root}")
    return file


def read_msd_layout(root: Path | str) -> MsdLayout:
    """The layout of ``root`` (see the module docstring); a missing or malformed part is one DataError."""
    root = Path(root)
    path = root / DATASET_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'labels' and 'channel_names' or 'modality'")
    class_names, modality = _class_names(data.get("labels"), path), _modality(data, path)
    ending = str(data.get("file_ending", ".nii.gz"))
    if isinstance(data.get("training"), list) and data["training"]:
        entries = data["training"]
        if not all(isinstance(e, dict) and "image" in e and "label" in e for e in entries):
            raise DataError(f"{path}: every 'training' entry needs 'image' and 'label' paths")
        training = [MsdCase(case_id_of(e["label"]), _existing(root, e["image"], path),
                            _existing(root, e["label"], path)) for e in entries]
    else:
        labels = sorted((root / "labelsTr").glob(f"*{ending}"))
        if not labels:
            raise DataError(f"{root / 'labelsTr'}: no *{ending} label files (and {path} lists no 'training' cases)")
        training = [MsdCase(case_id_of(p.name),
                            _existing(root, f"imagesTr/{case_id_of(p.name)}{CHANNEL_SUFFIX}{ending}", path), p)
                    for p in labels]
    if isinstance(data.get("test"), list) and data["test"]:
        test_images = [_existing(root, str(entry), path) for entry in data["test"]]
    else:
        test_images = list_nifti_files(root / "imagesTs") if (root / "imagesTs").is_dir() else []
    return MsdLayout(root, class_names, modality, tuple(training), tuple(test_images))


def with_msd_layout(cfg, ctx=None):
    """``dataset: msd`` when the config says so, or when a given root holds a ``dataset.json`` and
    the config names no dataset of its own; then ``nclass`` and the class names from it (a config
    ``nclass`` other than the task's default that disagrees is refused) and ``intensity_norm: auto``
    resolved from the modality (also when detected: the demo config's normalisation is the
    phantom's). ``pseudo_label_accuracy`` is switched off when ``imagesTs/`` (no labels) is
    unlabelled material. One line says all of it."""
    if not cfg.data_root_given:
        return cfg
    detected = cfg.dataset == "synthetic" and is_msd_root(cfg.data_root)
    if cfg.dataset == MSD_DATASET:
        reason = "from the config"
    elif detected:
        reason = f"detected: {cfg.data_root} holds {DATASET_JSON}"
    else:
        return cfg
    layout = read_msd_layout(cfg.data_root)
    default_nclass = next(f.default for f in dataclasses.fields(cfg) if f.name == "nclass")
    if cfg.nclass not in (default_nclass, len(layout.class_names)):
        raise ConfigError(f"nclass: {cfg.nclass}, but {layout.root / DATASET_JSON} names {len(layout.class_names)} "
                          f"classes {list(layout.class_names)}; drop nclass or set it to {len(layout.class_names)}")
    norm = modality_norm(layout.modality) if cfg.intensity_norm == AUTO_NORM or detected else cfg.intensity_norm
    no_stats = cfg.pseudo_label_accuracy and bool(layout.test_images)
    cfg = dataclasses.replace(cfg, dataset=MSD_DATASET, nclass=len(layout.class_names),
                              class_names=list(layout.class_names), intensity_norm=norm,
                              pseudo_label_accuracy=cfg.pseudo_label_accuracy and not no_stats)
    window = f" {[int(v) if float(v).is_integer() else v for v in cfg.ct_window]} HU" if norm == "ct_window" else ""
    line = (f"dataset: msd ({reason}); {len(layout.training)} labelled cases, {len(layout.test_images)} in imagesTs, "
            f"{cfg.nclass} classes {list(layout.class_names)}, {layout.modality}, intensity {norm}{window}"
            f"{'; pseudo_label_accuracy off: imagesTs/ has no labels' if no_stats else ''}")
    log = logging.getLogger("unimatch")
    if log.handlers:
        log.info(line)
    elif ctx is None or ctx.is_main:
        print(line, file=sys.stderr)
    return cfg


def read_case_list(path: Path | str, layout: MsdLayout) -> list[str]:
    """Case ids of a list file (one case, or an image/label path, per line), each a training case."""
    known = {case.case_id for case in layout.training}
    cases = []
    for number, entry in read_split_lines(path):
        case_id = case_id_of(entry)
        if case_id not in known:
            raise DataError(f"{path}, line {number}: {entry!r} is not a training case of {layout.root / DATASET_JSON}")
        cases.append(case_id)
    return cases


def msd_split(layout: MsdLayout, cases: int, seed: int, val_split=None, test_split=None) -> PatientSplit:
    """The case partition: drawn by ``seed`` as ACDC patients are, except the validation and test
    cases a list names; ``cases`` of the rest are labelled."""
    case_ids = [case.case_id for case in layout.training]
    if val_split is None and test_split is None:
        return make_patient_split(case_ids, cases, seed)
    listed = {name: read_case_list(p, layout) if p is not None else None
              for name, p in (("val", val_split), ("test", test_split))}
    held_out = {c for chosen in listed.values() if chosen for c in chosen}
    order = [c for c in np.random.default_rng(seed).permutation(sorted(case_ids)).tolist() if c not in held_out]
    for name, fraction in (("val", 0.1), ("test", 0.2)):
        if listed[name] is None:
            count = max(1, int(round(fraction * len(case_ids))))
            listed[name], order = order[:count], order[count:]
    if not 1 <= cases <= len(order):
        raise DataError(f"case split: cases={cases} labelled cases asked for, but {len(order)} training cases remain; "
                        f"choose cases between 1 and {len(order)}")
    return PatientSplit(tuple(order[:cases]), tuple(sorted(order[cases:])), tuple(sorted(listed["val"])),
                        tuple(sorted(listed["test"])))


class _VolumeReader:
    """Reads the cases of one layout with one normalisation; labels only when asked."""

    def __init__(self, cfg):
        self.layout = read_msd_layout(cfg.data_root)
        self.norm, self.window = cfg.intensity_norm, tuple(float(v) for v in cfg.ct_window)

    def read(self, image: Path, label: Path | None):
        return load_labelled_volume(image, label, self.norm, self.window, self.layout.class_names,
                                    self.layout.named_by)

    def slices(self, case_id: str, with_label: bool) -> list:
        case = self.layout.case(case_id)
        volume, label, _, _ = self.read(case.image, case.label if with_label else None)
        return [(volume[z], None if label is None else label[z]) for z in range(volume.shape[0])]

    def volume(self, case_id: str) -> VolumeItem:
        case = self.layout.case(case_id)
        volume, label, spacing, _ = self.read(case.image, case.label)
        return VolumeItem(volume, label, case_id, spacing)


def build_msd_datasets(cfg) -> ACDCDatasets:
    """Labelled, unlabelled (incl. ``imagesTs/``), validation and test sets of ``cfg.data_root``."""
    if cfg.cases is None:
        raise ConfigError("dataset msd: give the number of labelled cases with --cases N (or cases=N)")
    reader = _VolumeReader(cfg)
    split = msd_split(reader.layout, cfg.cases, cfg.seed, cfg.val_split, cfg.test_split)
    labeled = [s for c in split.labeled for s in reader.slices(c, True)]
    unlabeled = [s for c in split.unlabeled for s in reader.slices(c, cfg.pseudo_label_accuracy)]
    for image in reader.layout.test_images:
        volume = reader.read(image, None)[0]
        unlabeled += [(volume[z], None) for z in range(volume.shape[0])]
    stats = [label for _, label in unlabeled] if cfg.pseudo_label_accuracy else None
    return ACDCDatasets(
        train_l=LabeledSlices(labeled, cfg.effective_slice_size, image_order=cfg.image_order, seed=cfg.seed),
        train_u=UnlabeledSlices([image for image, _ in unlabeled], cfg.effective_slice_size, image_order=cfg.image_order,
                                seed=cfg.seed + 1, labels_for_stats=stats),
        val=VolumeDataset([reader.volume(c) for c in split.val]),
        test=VolumeDataset([reader.volume(c) for c in split.test]), split=split, layout=MSD_DATASET)


def build_msd_eval_volumes(cfg, which: str, seed: int | None = None, patients=None,
                           list_file: Path | str | None = None) -> VolumeDataset:
    """The ``val``/``test`` cases (a run's recorded ``patients``, else those of ``seed``) or a list
    file's cases, without reading any training slice."""
    reader = _VolumeReader(cfg)
    if list_file is not None:
        cases = read_case_list(list_file, reader.layout)
    elif patients is not None:
        cases = list(patients)
    else:
        split = msd_split(reader.layout, 1, cfg.seed if seed is None else seed, cfg.val_split, cfg.test_split)
        cases = list(split.val if which == "val" else split.test)
    return VolumeDataset([reader.volume(c) for c in cases])


def msd_image_of(cfg):
    """``case id -> its image`` (the grid a label map of that case is written on)."""
    layout = read_msd_layout(cfg.data_root)
    return lambda case_id: layout.case(case_id).image
