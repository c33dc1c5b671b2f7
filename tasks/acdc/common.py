"""The ACDC task (cardiac MRI: raw NIfTI or the official preprocessed ``.h5``, and the synthetic
phantom default) as an implementation of :class:`unimatch.task.Task`: the config, data resolution,
training sets, the per-volume evaluation (:mod:`tasks.acdc.evaluation`) and NIfTI prediction
(:mod:`tasks.acdc.prediction`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from tasks.acdc.data import ACDCDatasets, VolumeDataset, build_acdc_datasets, build_eval_volumes
from tasks.acdc.msd import (AUTO_NORM, MSD_DATASET, build_msd_datasets, build_msd_eval_volumes, case_id_of,
                            msd_image_of, with_msd_layout)
from tasks.acdc.readers import DEFAULT_CT_WINDOW, NORMALIZATIONS, find_raw_root
from tasks.acdc.evaluation import evaluate_volumes
from tasks.acdc.nifti_io import reference_grid, write_label_nifti
from tasks.acdc.prediction import add_prediction_arguments, plan_predictions, predict_files
from tasks.acdc.splits import case_parts, patient_of
from tasks.acdc.synthetic import PhantomParams, ensure_synthetic_acdc
from unimatch.cli import checkpoint_config, default_save_dir
from unimatch.config import Bounds, Config, above, at_least
from unimatch.distributed import DistContext, barrier, main_rank_first
from unimatch.errors import ConfigError, DataError
from unimatch.inference import Predictor
from unimatch.paths import config_path, find_split_file, refuse_existing
from unimatch.pretrained import resolve_pretrained
from unimatch.report import EvalResult, write_json
from unimatch.task import EvaluationReport, Task

ACDC_CLASSES = ("background", "RV", "Myo", "LV")
# "auto": chosen from the modality of a dataset.json (tasks.acdc.msd)
INTENSITY_NORMS = NORMALIZATIONS + (AUTO_NORM,)


@dataclass
class AcdcConfig(Config):
    """:class:`unimatch.config.Config` with the ACDC defaults of the official medical script and
    the fields only ACDC has.

    ``cases`` is the number of labelled training patients (the partition of
    ``tasks.acdc.splits``); the official list files (``labeled_split``, ``unlabeled_split``,
    ``val_split`` and optionally ``test_split``) replace it when given. ``h5_spacing`` (z, y, x mm)
    is the voxel size assumed for the preprocessed ``.h5`` volumes, which store none.
    ``synthetic_*`` describe the phantom written when no ``data_root`` is given.
    """
    section_keys: ClassVar[dict] = {"data": ("slice_size", "cases", "test_split", "intensity_norm", "image_order",
                                             "h5_spacing", "ct_window", "synthetic_patients", "synthetic_size",
                                             "synthetic_slices", "synthetic_seed")}
    task: str = "acdc"
    dataset: str = "synthetic"
    nclass: int = 4
    crop_size: int = 256      # the official key for slice_size (nothing is cropped)
    in_channels: int = 1
    mean: list = field(default_factory=lambda: [0.0])
    std: list = field(default_factory=lambda: [1.0])
    model: str = "unet"
    criterion: dict = field(default_factory=lambda: {"name": "CEDice", "kwargs": {}})
    unsup_loss: str = "dice"
    grayscale_p: float = 0.0
    channel_group_size: int = 1
    epochs: int = 300
    batch_size: int = 12
    lr: float = 0.01
    lr_multi: float = 1.0
    select_metric: str = "mean_dice"
    # ACDC only
    # the side every slice is resized to for training and evaluation; null: crop_size, as the
    # official configs call it
    slice_size: Optional[int] = None
    cases: Optional[int] = None
    test_split: Optional[str] = None
    intensity_norm: str = "minmax"
    image_order: int = 0
    h5_spacing: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    synthetic_patients: int = PhantomParams.n_patients   # the phantom's defaults, defined once
    synthetic_size: int = PhantomParams.image_size
    synthetic_slices: list = field(default_factory=lambda: [PhantomParams.min_slices, PhantomParams.max_slices])
    synthetic_seed: int = PhantomParams.seed
    # intensity_norm: ct_window clips to these Hounsfield units [low, high], then scales to [0, 1]
    ct_window: list = field(default_factory=lambda: list(DEFAULT_CT_WINDOW))

    @property
    def effective_slice_size(self) -> int:
        """``slice_size``, or ``crop_size`` when it is null (the official configs' name for it,
        although nothing is cropped)."""
        return self.crop_size if self.slice_size is None else self.slice_size

    def default_class_names(self) -> tuple:
        return ACDC_CLASSES

    def keys_not_read(self) -> dict[str, str]:
        why = "ACDC evaluates whole volumes, one at a time, every slice resized to slice_size"
        return {**super().keys_not_read(), **{key: why for key in ("eval_mode", "eval_window", "eval_batch_size")}}

    def select_metric_keys(self) -> list[str]:
        """Dice only: the engine keeps the checkpoint with the highest score, and a distance would
        pick the worst."""
        return ["mean_dice"] + [f"dice/{name}" for name in self.report_class_names()[1:]]

    def validate(self) -> None:
        super().validate()
        self.check_bounds({
            "cases": at_least(1),                          # labelled patients
            "slice_size": at_least(1, whole=True),         # pixels
            "image_order": Bounds(0, 5),                   # spline order, 0 = nearest (official)
            "h5_spacing": above(0.0, count=3),             # (z, y, x) in mm
            "synthetic_patients": at_least(1), "synthetic_size": at_least(1),
            "synthetic_slices": at_least(1, count=2, whole=True, ordered=True),   # [min, max]
            "synthetic_seed": at_least(0),
            "ct_window": Bounds(count=2, ordered=True),    # [low, high] Hounsfield units
        })
        if self.intensity_norm not in INTENSITY_NORMS:
            raise ConfigError(f"intensity_norm: {self.intensity_norm!r} must be one of {', '.join(INTENSITY_NORMS)}")
        if self.model == "unet" and self.effective_slice_size % 16:
            key = "crop_size" if self.slice_size is None else "slice_size"
            raise ConfigError(f"{key}: {self.effective_slice_size} must be a multiple of 16 (the UNet halves it "
                              f"4 times)")
        if self.in_channels != 1:
            raise ConfigError(f"in_channels: {self.in_channels}; ACDC images have one channel")


# ----------------------------------------------------------------------------- data

def uses_split_files(cfg: AcdcConfig) -> bool:
    return any(p is not None for p in (cfg.labeled_split, cfg.unlabeled_split, cfg.val_split))


_loaded: dict = {}


def load_datasets(cfg: AcdcConfig) -> ACDCDatasets:
    """The four sets of ``cfg`` (decoded once per process: train and the evaluator share them)."""
    key = (cfg.data_root, cfg.cases, cfg.effective_slice_size, cfg.seed, cfg.intensity_norm, cfg.image_order,
           cfg.labeled_split, cfg.unlabeled_split, cfg.val_split, cfg.test_split, tuple(cfg.h5_spacing),
           cfg.pseudo_label_accuracy, cfg.allow_labeled_in_unlabeled, cfg.dataset, tuple(cfg.ct_window))
    if key not in _loaded and cfg.dataset == MSD_DATASET:
        _loaded.clear()
        _loaded[key] = build_msd_datasets(cfg)
    if key not in _loaded:
        if cfg.cases is None and not uses_split_files(cfg):
            raise ConfigError("ACDC: give the number of labelled patients with --cases N (or cases=N), or the "
                              "official list files --labeled-split, --unlabeled-split and --val-split")
        _loaded.clear()
        _loaded[key] = build_acdc_datasets(
            cfg.data_root, None if uses_split_files(cfg) else cfg.cases, slice_size=cfg.effective_slice_size,
            seed=cfg.seed, normalization=cfg.intensity_norm, image_order=cfg.image_order,
            labeled_list=cfg.labeled_split, unlabeled_list=cfg.unlabeled_split, val_list=cfg.val_split,
            test_list=cfg.test_split,
            h5_spacing=tuple(float(s) for s in cfg.h5_spacing),
            unlabeled_labels_for_stats=cfg.pseudo_label_accuracy,
            allow_labeled_in_unlabeled=cfg.allow_labeled_in_unlabeled)
    return _loaded[key]


def write_split(cfg: AcdcConfig, sets: ACDCDatasets) -> Path:
    """Record which patients are in which set in the run folder (``split.json``)."""
    path = default_save_dir(cfg) / "split.json"
    split = sets.split
    payload = {"layout": sets.layout, "data_root": str(cfg.data_root), "seed": cfg.seed,
               **{name: list(getattr(split, name)) for name in ("labeled", "unlabeled", "val", "test")}}
    write_json(path, payload)
    return path


def run_patients(cfg: AcdcConfig, which: str, checkpoint: Path) -> tuple[dict, str]:
    """How to pick the run's own ``val``/``test`` patients, and where they come from: the
    ``split.json`` beside the checkpoint when it records this data root, else the partition of the
    seed stored in the checkpoint (a ``--config`` of another seed would pick other patients)."""
    record = Path(checkpoint).parent / "split.json"
    if record.is_file():
        split = json.loads(record.read_text())
        if which in split and Path(split.get("data_root", "")).resolve() == Path(cfg.data_root).resolve():
            return {"patients": split[which]}, f"the {which} patients recorded in {record}"
    stored = checkpoint_config(checkpoint) or {}
    seed = stored.get("seed", cfg.seed)
    return {"seed": seed}, f"the {which} patients of seed {seed} (the {'checkpoint' if 'seed' in stored else 'config'}'s)"


def eval_volumes(cfg: AcdcConfig, which: str, checkpoint: Path) -> tuple[VolumeDataset, str]:
    """``val``, ``test`` (the config's list files, else the run's own patients) or a list file's
    volumes, and a line saying which."""
    spacing = tuple(float(s) for s in cfg.h5_spacing)
    common = dict(seed=cfg.seed, normalization=cfg.intensity_norm, h5_spacing=spacing)
    if cfg.dataset == MSD_DATASET:
        return msd_eval_volumes(cfg, which, checkpoint)
    if which in ("val", "test"):
        if uses_split_files(cfg):
            list_file = cfg.val_split if which == "val" else cfg.test_split
            if list_file is None:
                raise ConfigError("--split test: the model was trained with official list files but no test list; "
                                  "pass the list with --split FILE (or test_split=FILE)")
            return build_eval_volumes(cfg.data_root, which, list_file=list_file, **common), f"the list {list_file}"
        chosen, source = run_patients(cfg, which, checkpoint)
        return build_eval_volumes(cfg.data_root, which, **{**common, **chosen}), source
    which = find_split_file(which, cfg.data_root)
    if not Path(which).is_file():
        raise DataError(f"--split {which}: not 'val', 'test' or an existing list file")
    return build_eval_volumes(cfg.data_root, which, list_file=which, **common), f"the list {which}"


def msd_eval_volumes(cfg: AcdcConfig, which: str, checkpoint: Path) -> tuple[VolumeDataset, str]:
    """:func:`eval_volumes` of ``dataset: msd``: the config's case list, else the run's own cases."""
    if which in ("val", "test"):
        list_file = cfg.val_split if which == "val" else cfg.test_split
        if list_file is None:
            chosen, source = run_patients(cfg, which, checkpoint)
            return build_msd_eval_volumes(cfg, which, **chosen), source
        return build_msd_eval_volumes(cfg, which, list_file=list_file), f"the list {list_file}"
    which = find_split_file(which, cfg.data_root)
    if not Path(which).is_file():
        raise DataError(f"--split {which}: not 'val', 'test' or an existing list file")
    return build_msd_eval_volumes(cfg, which, list_file=which), f"the list {which}"


def prediction_writer(cfg: AcdcConfig, directory: Path, case_ids: list[str], overwrite: bool):
    """A callback writing ``<case>.nii.gz`` label maps on the source grid (see
    :func:`tasks.acdc.nifti_io.reference_grid`); refuses, on every rank alike, when a target exists."""
    targets = {case_id: directory / f"{case_id}.nii.gz" for case_id in case_ids}
    refuse_existing(targets.values(), overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.dataset == MSD_DATASET:
        source_of = msd_image_of(cfg)
    else:
        raw_root = find_raw_root(cfg.data_root) if cfg.data_root else None
        source_of = lambda case_id: (None if raw_root is None   # noqa: E731
                                     else raw_root / case_parts(case_id)[0] / f"{case_id}.nii.gz")

    def write(case_id: str, labels: np.ndarray, spacing) -> None:
        source = source_of(case_id)
        reference, slice_axis = reference_grid(source, labels.shape, spacing)
        write_label_nifti(labels.astype(np.uint8), reference, targets[case_id], overwrite=overwrite,
                          slice_axis=slice_axis)
    return write


class AcdcTask(Task):
    name = "acdc"
    config_class = AcdcConfig
    default_config = config_path("acdc", "synthetic.yaml")
    run_files = ("split.json",)   # which patients are in which set (record_split)

    def resolve_data(self, cfg: AcdcConfig, ctx: DistContext | None = None) -> AcdcConfig:
        """Fill in ``data_root`` (the synthetic phantom, written once by rank 0, when none is given)
        and find relative list files under it (:func:`unimatch.paths.find_split_file`); a
        ``dataset.json`` root is read as ``dataset: msd`` (:func:`tasks.acdc.msd.with_msd_layout`)."""
        cfg = with_msd_layout(cfg, ctx)
        cfg = dataclasses.replace(cfg, **resolve_pretrained(cfg, ctx))   # pretrained: synthetic (the V2 ViT's)
        if cfg.data_root_given:
            return dataclasses.replace(cfg, **{key: find_split_file(getattr(cfg, key), cfg.data_root)
                                               for key in ("labeled_split", "unlabeled_split", "val_split",
                                                           "test_split")})
        if cfg.dataset != "synthetic":
            raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root: the ACDC folder holding data/*.h5 "
                              "(preprocessed) or training/patientXXX/ (raw download)")

        def write():
            return ensure_synthetic_acdc(n_patients=cfg.synthetic_patients, image_size=cfg.synthetic_size,
                                         n_slices=tuple(cfg.synthetic_slices), seed=cfg.synthetic_seed)
        return dataclasses.replace(cfg, data_root=str(main_rank_first(write, ctx)))

    def split_key(self, cfg: AcdcConfig):
        """The patient (the case, for ``dataset: msd``): a patient's slices and frames belong to one set."""
        return case_id_of if cfg.dataset == MSD_DATASET else patient_of

    def training_sets(self, cfg: AcdcConfig):
        """(labelled slices, unlabelled slices or None when every training patient is labelled)."""
        sets = load_datasets(cfg)
        return sets.train_l, (sets.train_u if len(sets.train_u) else None)

    def val_evaluator(self, cfg: AcdcConfig, ctx: DistContext):
        """The training-time evaluator: the VALIDATION patients only (never the test patients)."""
        sets = load_datasets(cfg)
        if ctx.is_main:
            write_split(cfg, sets)

        def evaluate(model) -> EvalResult:
            result = evaluate_volumes(Predictor(model, cfg, ctx.device), sets.val, cfg, ctx)
            return EvalResult(result.metrics(), result.table("validation"))
        return evaluate

    def add_train_arguments(self, parser) -> None:
        parser.add_argument("--cases", type=int,
                            help="labelled training patients (ACDC: 1, 3 or 7 in the literature); "
                                 "ignored when official list files are given")

    def train_values(self, args) -> dict:
        return {"cases": args.cases}

    # ---- evaluate ------------------------------------------------------------------------
    def evaluate(self, predictor: Predictor, cfg: AcdcConfig, ctx: DistContext, args) -> EvaluationReport:
        split = args.split or "val"
        volumes, source = eval_volumes(cfg, split, args.checkpoint)
        writer = None
        if args.save_predictions is not None:
            writer = prediction_writer(cfg, args.save_predictions, [item.case_id for item in volumes.items],
                                       args.overwrite)
            barrier()
        result = evaluate_volumes(predictor, volumes, cfg, ctx, writer)
        name = split if split in ("val", "test") else Path(split).name
        record = {"split": split, "split_source": source, "data_root": str(cfg.data_root),
                  "slice_size": cfg.effective_slice_size, **result.record()}
        return EvaluationReport(f"{args.checkpoint} on {split} of {cfg.data_root} ({source})", result.table(name),
                                result.metrics(), record, result.per_case_rows(),
                                {"metrics": result.metrics(), "cases": [case_id for case_id, _ in result.per_case]})

    # ---- predict -------------------------------------------------------------------------
    def add_predict_arguments(self, parser) -> None:
        add_prediction_arguments(parser)

    def check_predict_outputs(self, cfg: AcdcConfig, args):
        return plan_predictions(args)

    def predict(self, predictor: Predictor, cfg: AcdcConfig, args, plan) -> list[Path]:
        return predict_files(predictor, cfg, args, plan)


TASK = AcdcTask()
