"""What train, evaluate and predict share for natural images: data resolution and evaluation."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import DataLoader

from tasks.natural.data import (CITYSCAPES_CLASSES, COCO_CLASSES, PASCAL_CLASSES, LabeledDataset,
                                UnlabeledDataset, ValDataset)
from tasks.natural.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_voc
from unimatch.config import Config
from unimatch.distributed import DistContext, main_rank_first
from unimatch.engine import EvalResult, autocast_for, sharded_eval_loader
from unimatch.errors import ConfigError
from unimatch.inference import evaluate_segmentation
from unimatch.paths import config_path
from unimatch.perturb import Normalizer
from unimatch.report import segmentation_report

DEFAULT_CONFIG = config_path("natural", "synthetic.yaml")
CLASS_NAMES = {"pascal": PASCAL_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "coco": COCO_CLASSES,
               "synthetic": SYNTHETIC_CLASSES}


def layout_of(cfg: Config) -> str:
    """The on-disk layout: the synthetic set is written in the Pascal VOC layout."""
    if cfg.dataset not in CLASS_NAMES:
        raise ConfigError(f"dataset: {cfg.dataset!r} is not one of {sorted(CLASS_NAMES)}")
    return "pascal" if cfg.dataset == "synthetic" else cfg.dataset


def class_names(cfg: Config) -> list[str]:
    if cfg.class_names:
        return list(cfg.class_names)
    names = CLASS_NAMES.get(cfg.dataset)
    return list(names) if names and len(names) == cfg.nclass else [f"class {i}" for i in range(cfg.nclass)]


def resolve_data(cfg: Config, ctx: DistContext | None = None) -> Config:
    """Fill in the data root and split files: the synthetic set (written once, by rank 0) when no
    root is given, otherwise ``<root>/{labeled,unlabeled,val}.txt`` unless splits are named."""
    changes = {}
    root = cfg.data_root
    if not cfg.data_root_given:
        if cfg.dataset != "synthetic":
            raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root (the folder holding its images)")
        root = main_rank_first(ensure_synthetic_voc, ctx)
        changes["data_root"] = str(root)
        splits = Path(root) / "splits"
        defaults = {"labeled_split": splits / "labeled.txt", "unlabeled_split": splits / "unlabeled.txt",
                    "val_split": splits / "val.txt"}
    else:
        defaults = {"labeled_split": Path(root) / "labeled.txt", "unlabeled_split": Path(root) / "unlabeled.txt",
                    "val_split": Path(root) / "val.txt"}
    for key, path in defaults.items():
        if getattr(cfg, key) is None:
            changes[key] = str(path)
    return dataclasses.replace(cfg, **changes)


def build_training_sets(cfg: Config):
    """(labelled, unlabelled or None); the unlabelled set is not even read for ``supervised``
    unless it sets the epoch length (same number of iterations as the semi-supervised runs)."""
    layout = layout_of(cfg)
    labeled = LabeledDataset(layout, cfg.data_root, cfg.labeled_split, cfg.crop_size, nclass=cfg.nclass,
                             seed=cfg.seed)
    unlabeled = None
    if cfg.unlabeled_split and Path(cfg.unlabeled_split).is_file():
        unlabeled = UnlabeledDataset(layout, cfg.data_root, cfg.unlabeled_split, cfg.crop_size, seed=cfg.seed + 1,
                                     label_for_stats=cfg.pseudo_label_accuracy, nclass=cfg.nclass)
    elif cfg.method != "supervised":
        raise ConfigError(f"method {cfg.method!r} needs an unlabelled split; {cfg.unlabeled_split} does not exist")
    return labeled, unlabeled


def val_loader(cfg: Config, ctx: DistContext, split: str | Path | None = None) -> DataLoader:
    dataset = ValDataset(layout_of(cfg), cfg.data_root, split or cfg.val_split, nclass=cfg.nclass)
    return sharded_eval_loader(dataset, cfg, ctx)


def evaluate_model(model, cfg: Config, ctx: DistContext, loader: DataLoader, mode: str | None = None,
                   on_prediction=None) -> EvalResult:
    confusion = evaluate_segmentation(model, loader, cfg.nclass, Normalizer(cfg.mean, cfg.std, cfg.in_channels),
                                      mode or cfg.eval_mode, cfg.crop_size, ctx.device, on_prediction,
                                      autocast_for(cfg, ctx.device))
    metrics, table = segmentation_report(confusion, class_names(cfg))
    return EvalResult(metrics, table)


def make_val_evaluator(cfg: Config, ctx: DistContext):
    loader = val_loader(cfg, ctx)
    return lambda model: evaluate_model(model, cfg, ctx, loader)
