"""What train, evaluate and predict share for ACDC: the config, data resolution and the
per-volume evaluation protocol.

Evaluation follows the official medical script, done per volume: every slice is resized
(bilinear) to the training size ``crop_size``, predicted, its logits resized back (bilinear) to
the slice's size and arg-maxed; the volume is then scored per class (RV, Myo, LV) with
``unimatch.metrics.volume`` (Dice, HD95, ASD, in mm and in voxels) and the cases are averaged.
Under torchrun the volumes are sharded over the ranks and the per-case scores gathered to every
rank, so all ranks report the same numbers (and select the same best checkpoint). Dice is
reported in percent, as the paper does.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from tasks.acdc.data import ACDCDatasets, VolumeDataset, build_acdc_datasets, build_eval_volumes, find_raw_root
from tasks.acdc.nifti_io import to_nibabel, write_label_nifti
from tasks.acdc.splits import case_parts
from tasks.acdc.synthetic import ensure_synthetic_acdc
from unimatch.cli import default_save_dir
from unimatch.config import Config, load_config
from unimatch.distributed import DistContext, main_rank_first, unwrap
from unimatch.engine import EvalResult, ShardSampler, autocast_for
from unimatch.errors import ConfigError, DataError
from unimatch.metrics.volume import ACDC_CLASSES, aggregate, score_volume
from unimatch.paths import config_path
from unimatch.perturb import Normalizer
from unimatch.report import format_table

DEFAULT_CONFIG = config_path("acdc", "synthetic.yaml")
DISTANCE_METRICS = ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox")
METRIC_UNITS = {"dice": "percent", "hd95_mm": "mm", "asd_mm": "mm", "hd95_vox": "voxels", "asd_vox": "voxels"}


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
    task: str = "acdc"
    dataset: str = "synthetic"
    nclass: int = 4
    crop_size: int = 256
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
    cases: Optional[int] = None
    test_split: Optional[str] = None
    intensity_norm: str = "minmax"
    image_order: int = 0
    h5_spacing: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    synthetic_patients: int = 20
    synthetic_size: int = 128
    synthetic_slices: list = field(default_factory=lambda: [6, 10])
    synthetic_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.cases is not None and self.cases < 1:
            raise ConfigError(f"cases: {self.cases} labelled patients; give at least 1")
        if self.intensity_norm not in ("minmax", "percentile"):
            raise ConfigError(f"intensity_norm: {self.intensity_norm!r} must be 'minmax' or 'percentile'")
        if not 0 <= self.image_order <= 5:
            raise ConfigError(f"image_order: {self.image_order} must be a spline order 0..5 (0 = nearest, official)")
        dice_keys = ["mean_dice"] + [f"dice/{name}" for name in class_map(self).values()]
        if self.select_metric not in dice_keys:
            # the engine keeps the checkpoint with the highest score: a distance would pick the worst
            raise ConfigError(f"select_metric: {self.select_metric!r} must be one of {dice_keys}")
        if len(self.h5_spacing) != 3 or any(not isinstance(s, (int, float)) or s <= 0 for s in self.h5_spacing):
            raise ConfigError(f"h5_spacing: {self.h5_spacing} must be three positive numbers (z, y, x) in mm")
        if len(self.synthetic_slices) != 2 or not 1 <= self.synthetic_slices[0] <= self.synthetic_slices[1]:
            raise ConfigError(f"synthetic_slices: {self.synthetic_slices} must be [min, max] with 1 <= min <= max")
        if self.crop_size % 16:
            raise ConfigError(f"crop_size: {self.crop_size} must be a multiple of 16 (the UNet halves it 4 times)")
        if self.in_channels != 1:
            raise ConfigError(f"in_channels: {self.in_channels}; ACDC images have one channel")


def load_acdc_config(path: str | Path | None, overrides=(), **values) -> AcdcConfig:
    return load_config(path, overrides, schema=AcdcConfig, **values)


def class_map(cfg: Config) -> dict[int, str]:
    """Foreground class id -> name: ``class_names`` (background first) if given, else RV/Myo/LV."""
    if cfg.class_names and len(cfg.class_names) == cfg.nclass:
        return {i: str(name) for i, name in enumerate(cfg.class_names) if i > 0}
    if cfg.nclass == len(ACDC_CLASSES) + 1:
        return dict(ACDC_CLASSES)
    return {i: f"class {i}" for i in range(1, cfg.nclass)}


# ----------------------------------------------------------------------------- data

def uses_split_files(cfg: AcdcConfig) -> bool:
    return any(p is not None for p in (cfg.labeled_split, cfg.unlabeled_split, cfg.val_split))


def resolve_data(cfg: AcdcConfig, ctx: DistContext | None = None) -> AcdcConfig:
    """Fill in ``data_root``: the synthetic phantom (written once, by rank 0) when none is given."""
    if cfg.data_root_given:
        return cfg
    if cfg.dataset != "synthetic":
        raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root: the ACDC folder holding data/*.h5 "
                          "(preprocessed) or training/patientXXX/ (raw download)")

    def write():
        return ensure_synthetic_acdc(n_patients=cfg.synthetic_patients, image_size=cfg.synthetic_size,
                                     n_slices=tuple(cfg.synthetic_slices), seed=cfg.synthetic_seed)
    return dataclasses.replace(cfg, data_root=str(main_rank_first(write, ctx)))


_loaded: dict = {}


def load_datasets(cfg: AcdcConfig) -> ACDCDatasets:
    """The four sets of ``cfg`` (decoded once per process: train and the evaluator share them)."""
    key = (cfg.data_root, cfg.cases, cfg.crop_size, cfg.seed, cfg.intensity_norm, cfg.image_order,
           cfg.labeled_split, cfg.unlabeled_split, cfg.val_split, cfg.test_split, tuple(cfg.h5_spacing),
           cfg.pseudo_label_accuracy)
    if key not in _loaded:
        if cfg.cases is None and not uses_split_files(cfg):
            raise ConfigError("ACDC: give the number of labelled patients with --cases N (or cases=N), or the "
                              "official list files --labeled-split, --unlabeled-split and --val-split")
        _loaded.clear()
        _loaded[key] = build_acdc_datasets(
            cfg.data_root, None if uses_split_files(cfg) else cfg.cases, crop_size=cfg.crop_size, seed=cfg.seed,
            normalization=cfg.intensity_norm, image_order=cfg.image_order, labeled_list=cfg.labeled_split,
            unlabeled_list=cfg.unlabeled_split, val_list=cfg.val_split, test_list=cfg.test_split,
            h5_spacing=tuple(float(s) for s in cfg.h5_spacing),
            unlabeled_labels_for_stats=cfg.pseudo_label_accuracy)
    return _loaded[key]


def build_training_sets(cfg: AcdcConfig):
    """(labelled slices, unlabelled slices or None when every training patient is labelled)."""
    sets = load_datasets(cfg)
    return sets.train_l, (sets.train_u if len(sets.train_u) else None)


def write_split(cfg: AcdcConfig, sets: ACDCDatasets) -> Path:
    """Record which patients are in which set in the run folder (``split.json``)."""
    path = default_save_dir(cfg) / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    split = sets.split
    payload = {"layout": sets.layout, "data_root": str(cfg.data_root), "seed": cfg.seed,
               **{name: list(getattr(split, name)) for name in ("labeled", "unlabeled", "val", "test")}}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def eval_volumes(cfg: AcdcConfig, which: str) -> VolumeDataset:
    """``val``, ``test`` (the partition of ``cfg``, or its list files) or a list file's volumes."""
    spacing = tuple(float(s) for s in cfg.h5_spacing)
    common = dict(seed=cfg.seed, normalization=cfg.intensity_norm, h5_spacing=spacing)
    if which in ("val", "test"):
        if uses_split_files(cfg):
            list_file = cfg.val_split if which == "val" else cfg.test_split
            if list_file is None:
                raise ConfigError("--split test: the model was trained with official list files but no test list; "
                                  "pass the list with --split FILE (or test_split=FILE)")
            return build_eval_volumes(cfg.data_root, which, list_file=list_file, **common)
        return build_eval_volumes(cfg.data_root, which, **common)
    if not Path(which).is_file():
        raise DataError(f"--split {which}: not 'val', 'test' or an existing list file")
    return build_eval_volumes(cfg.data_root, which, list_file=which, **common)


# ----------------------------------------------------------------------------- prediction

@torch.no_grad()
def predict_volume(model: nn.Module, volume: torch.Tensor, crop_size: int, normalizer: Normalizer,
                   device: torch.device, autocast=None, chunk: int = 16) -> torch.Tensor:
    """Labels (D, H, W) int64 of a volume (D, H, W) in [0, 1]: every slice resized to
    ``crop_size`` (bilinear), predicted, logits resized back (bilinear), arg-maxed.

    ``model`` must be in eval mode; slices go through in chunks of ``chunk`` (eval-mode
    BatchNorm makes that the same as one batch).
    """
    autocast = autocast or torch.autocast("cpu", enabled=False)
    depth, height, width = volume.shape
    slices = volume.to(device=device, dtype=torch.float32).unsqueeze(1)
    labels = []
    for start in range(0, depth, chunk):
        x = F.interpolate(slices[start:start + chunk], size=(crop_size, crop_size), mode="bilinear",
                          align_corners=False)
        with autocast:
            logits = model(normalizer(x))
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        labels.append(logits.argmax(1))
    return torch.cat(labels).cpu()


def gather_to_all(items: list) -> list:
    """Every rank's ``items`` concatenated, on every rank (no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


@dataclass
class VolumeEvaluation:
    """Per-case scores (sorted by case id) and their aggregate (``unimatch.metrics.volume.aggregate``)."""
    per_case: list  # [(case_id, {class name: ClassScore})]
    summary: dict

    def metrics(self) -> dict:
        """Flat floats: ``mean_dice`` (%), ``mean_hd95_mm`` ..., ``dice/RV`` ..., ``n_cases``."""
        out = {f"mean_{m}": self.summary["mean"][m] * (100 if m == "dice" else 1) for m in METRIC_UNITS}
        for name, row in self.summary["classes"].items():
            for m in METRIC_UNITS:
                out[f"{m}/{name}"] = row[m] * (100 if m == "dice" else 1)
        out["n_cases"] = float(self.summary["n_cases"])
        return out

    def table(self, title: str = "") -> str:
        rows = []
        for name, row in self.summary["classes"].items():
            rows.append([name, row["dice"] * 100] + [row[m] for m in DISTANCE_METRICS] + [row["n_undefined"]])
        mean = self.summary["mean"]
        undefined = sum(row["n_undefined"] for row in self.summary["classes"].values())
        rows.append(["mean", mean["dice"] * 100] + [mean[m] for m in DISTANCE_METRICS] + [undefined])
        text = format_table(["class", "Dice %", "HD95 mm", "ASD mm", "HD95 vox", "ASD vox", "undefined"], rows)
        header = f"{title + ': ' if title else ''}{self.summary['n_cases']} volumes"
        return f"{header}\n{text}"

    def per_case_rows(self) -> list[dict]:
        rows = []
        for case_id, scores in self.per_case:
            for name, score in scores.items():
                rows.append({"case": case_id, "class": name, "dice": score.dice * 100,
                             **{m: getattr(score, m) for m in DISTANCE_METRICS}, "status": score.status})
        return rows


def evaluate_volumes(model: nn.Module, dataset: VolumeDataset, cfg: Config, ctx: DistContext,
                     on_prediction: Optional[Callable] = None) -> VolumeEvaluation:
    """Score every volume of ``dataset``; this rank predicts its shard, all ranks get all scores.

    ``on_prediction(case_id, labels (D,H,W) numpy, spacing)`` is called for this rank's volumes.
    """
    net = unwrap(model)  # no DDP collectives: the shards hold different numbers of volumes
    was_training = net.training
    net.eval()
    normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
    autocast = autocast_for(cfg, ctx.device)
    classes = class_map(cfg)
    local = []
    for index in ShardSampler(len(dataset), ctx.rank, ctx.world_size):
        volume, label, case_id, spacing = dataset[index]
        pred = predict_volume(net, volume, cfg.crop_size, normalizer, ctx.device, autocast).numpy()
        local.append((case_id, score_volume(pred, label.numpy(), spacing, classes)))
        if on_prediction is not None:
            on_prediction(case_id, pred, spacing)
    net.train(was_training)
    per_case = sorted(gather_to_all(local), key=lambda item: item[0])
    if not per_case:
        raise DataError("evaluation set is empty: no validation/test volumes")
    return VolumeEvaluation(per_case, aggregate(scores for _, scores in per_case))


def make_val_evaluator(cfg: AcdcConfig, ctx: DistContext):
    """The training-time evaluator: the VALIDATION patients only (never the test patients)."""
    sets = load_datasets(cfg)
    if ctx.is_main:
        write_split(cfg, sets)

    def evaluate(model) -> EvalResult:
        result = evaluate_volumes(model, sets.val, cfg, ctx)
        return EvalResult(result.metrics(), result.table("validation"))
    return evaluate


# ----------------------------------------------------------------------------- output files

def finite_or_none(value):
    """NaN -> None so JSON files stay standard (undefined HD95/ASD of an empty class)."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_evaluation_json(path: Path, result: VolumeEvaluation, context: dict) -> None:
    summary = {"classes": {name: {k: finite_or_none(v * 100 if k == "dice" else v) for k, v in row.items()}
                           for name, row in result.summary["classes"].items()},
               "mean": {k: finite_or_none(v * 100 if k == "dice" else v) for k, v in result.summary["mean"].items()},
               "n_cases": result.summary["n_cases"]}
    payload = {**context, "units": METRIC_UNITS, "summary": summary,
               "per_case": [{k: finite_or_none(v) for k, v in row.items()} for row in result.per_case_rows()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_evaluation_csv(path: Path, result: VolumeEvaluation) -> None:
    """One row per case and class; undefined distances are empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["case", "class", "dice", *DISTANCE_METRICS, "status"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in result.per_case_rows():
            writer.writerow({k: ("" if finite_or_none(v) is None else v) for k, v in row.items()})


def reference_image(cfg: AcdcConfig, case_id: str, shape_zyx: tuple, spacing_zyx) -> nib.Nifti1Image:
    """The grid a predicted label map is written on: the source NIfTI's (raw layout), else an
    identity orientation scaled by the voxel spacing (``.h5`` volumes carry no orientation)."""
    raw_root = find_raw_root(cfg.data_root) if cfg.data_root else None
    if raw_root is not None:
        patient, _, _ = case_parts(case_id)
        source = raw_root / patient / f"{case_id}.nii.gz"
        if source.is_file():
            return nib.load(str(source))
    z, y, x = (float(s) for s in spacing_zyx)
    affine = np.diag([x, y, z, 1.0])
    image = nib.Nifti1Image(to_nibabel(np.zeros(shape_zyx, dtype=np.uint8)), affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def prediction_writer(cfg: AcdcConfig, directory: Path, case_ids: list[str], overwrite: bool):
    """A callback writing ``<case>.nii.gz`` label maps; refuses (on every rank alike) when any
    target exists already and ``overwrite`` is not set."""
    targets = {case_id: directory / f"{case_id}.nii.gz" for case_id in case_ids}
    clashes = [str(t) for t in targets.values() if t.exists()]
    if clashes and not overwrite:
        raise DataError(f"{len(clashes)} prediction file(s) exist already (first: {clashes[0]}); "
                        "choose another --save-predictions folder or pass --overwrite")
    directory.mkdir(parents=True, exist_ok=True)

    def write(case_id: str, labels: np.ndarray, spacing) -> None:
        reference = reference_image(cfg, case_id, labels.shape, spacing)
        write_label_nifti(labels.astype(np.uint8), reference, targets[case_id], overwrite=overwrite)
    return write


def checkpoint_config(path: Path) -> Optional[dict]:
    """The config stored in one of our checkpoints (None for official ones or unreadable files)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    stored = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return stored if isinstance(stored, dict) else None


def inference_config(config: Optional[Path], checkpoint: Path, overrides=(), **values) -> tuple[AcdcConfig, str]:
    """The config to evaluate/predict with, and where it came from.

    An explicit ``--config`` wins; otherwise the config stored in our checkpoints, so evaluation
    uses the training run's model, normalisation, crop size and seed (the seed decides which
    patients are test patients); otherwise (official checkpoints) the synthetic default.
    """
    if config is not None:
        return load_acdc_config(config, overrides, **values), str(config)
    stored = checkpoint_config(checkpoint)
    if stored is None:
        return load_acdc_config(DEFAULT_CONFIG, overrides, **values), str(DEFAULT_CONFIG)
    known = {f.name for f in dataclasses.fields(AcdcConfig)}
    stored = {k: v for k, v in stored.items() if k in known}
    stored.update({k: v for k, v in values.items() if v is not None})
    return load_acdc_config(None, overrides, **stored), f"{checkpoint} (stored config)"
