"""The natural-image task (Pascal VOC, Cityscapes, COCO, the synthetic VOC-layout default) as an
implementation of :class:`unimatch.task.Task`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from tasks.natural.data import ImageFolderDataset, LabeledDataset, UnlabeledDataset, ValDataset, check_entries
from tasks.natural.layouts import CITYSCAPES_CLASSES, COCO_CLASSES, PASCAL_CLASSES
from tasks.natural.palette import overlay, palette_for, save_palette_png
from tasks.natural.synthetic import (DEFAULT_LABELED_FRACTION, DEFAULT_N_IMAGES, SYNTHETIC_CLASSES, SceneStyle,
                                     ensure_synthetic_voc)
from unimatch import atomic
from unimatch.cli import add_mode_argument, prediction_folder
from unimatch.config import PROBABILITY, Config, at_least
from unimatch.data import sharded_eval_loader
from unimatch.distributed import DistContext, main_rank_first
from unimatch.errors import ConfigError, DataError
from unimatch.inference import Predictor, evaluate_segmentation, predict
from unimatch.paths import config_path, find_split_file, refuse_existing, refuse_overwriting_inputs
from unimatch.pretrained import resolve_pretrained
from unimatch.report import EvalResult, segmentation_report
from unimatch.task import EvaluationReport, Task

CLASS_NAMES = {"pascal": PASCAL_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "coco": COCO_CLASSES,
               "synthetic": SYNTHETIC_CLASSES}


@dataclass
class NaturalConfig(Config):
    """:class:`unimatch.config.Config` with the natural-image defaults (the official Pascal ones)."""

    section_keys: ClassVar[dict] = {"data": ("synthetic_images", "synthetic_labeled_fraction",
                                             "synthetic_class_hue_probability", "synthetic_class_hue_spread",
                                             "synthetic_clutter")}
    task: str = "natural"
    select_metric: str = "mIoU"
    # the built-in synthetic set (tasks/natural/synthetic.py): its size, labelled share and scenes
    synthetic_images: int = DEFAULT_N_IMAGES          # the generator's defaults, defined once
    synthetic_labeled_fraction: float = DEFAULT_LABELED_FRACTION
    synthetic_class_hue_probability: float = SceneStyle.class_hue_probability
    synthetic_class_hue_spread: float = SceneStyle.class_hue_spread
    synthetic_clutter: str = SceneStyle.clutter

    def default_class_names(self) -> Optional[tuple]:
        return CLASS_NAMES.get(self.dataset)

    def keys_not_read(self) -> dict[str, str]:
        return {**super().keys_not_read(), "eval_batch_size": "natural images are evaluated one at a time"}

    def select_metric_keys(self) -> list[str]:
        return ["mIoU", "OA"] + [f"IoU/{name}" for name in self.report_class_names()]

    def validate(self) -> None:
        super().validate()
        self.check_bounds({
            "synthetic_images": at_least(3),               # one labelled, one unlabelled, one val image
            "synthetic_labeled_fraction": PROBABILITY,
            "synthetic_class_hue_probability": PROBABILITY,
            "synthetic_class_hue_spread": at_least(0.0),
        })


def layout_of(cfg: Config) -> str:
    """The on-disk layout: the synthetic set is written in the Pascal VOC layout."""
    if cfg.dataset not in CLASS_NAMES:
        raise ConfigError(f"dataset: {cfg.dataset!r} is not one of {sorted(CLASS_NAMES)}")
    return "pascal" if cfg.dataset == "synthetic" else cfg.dataset


def val_loader(cfg: Config, ctx: DistContext, split: str | Path | None = None):
    dataset = ValDataset(layout_of(cfg), cfg.data_root, split or cfg.val_split, nclass=cfg.nclass)
    return sharded_eval_loader(dataset, cfg, ctx)


def evaluate_model(predictor: Predictor, cfg: Config, loader, mode: str | None = None,
                   on_prediction=None) -> EvalResult:
    confusion = evaluate_segmentation(predictor, loader, cfg.nclass, mode or cfg.eval_mode, cfg.effective_eval_window,
                                      on_prediction)
    metrics, table = segmentation_report(confusion, cfg.report_class_names())
    return EvalResult(metrics, table)


def synthetic_root(cfg: Config) -> Path:
    """The built-in set that the config's ``synthetic_*`` keys describe, written once."""
    style = SceneStyle(cfg.synthetic_class_hue_probability, cfg.synthetic_class_hue_spread, cfg.synthetic_clutter)
    return ensure_synthetic_voc(n_images=cfg.synthetic_images, labeled_fraction=cfg.synthetic_labeled_fraction,
                                style=style)


class NaturalTask(Task):
    name = "natural"
    config_class = NaturalConfig
    default_config = config_path("natural", "synthetic.yaml")

    def resolve_data(self, cfg: Config, ctx: DistContext | None = None) -> Config:
        """The synthetic set (written once, by rank 0) when no root is given, otherwise
        ``<root>/{labeled,unlabeled,val}.txt`` unless splits are named; ``pretrained: synthetic``
        becomes the built-in backbone file (:mod:`unimatch.pretrained`)."""
        changes = {}
        root = cfg.data_root
        if not cfg.data_root_given:
            if cfg.dataset != "synthetic":
                raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root (the folder holding its images)")
            root = main_rank_first(lambda: synthetic_root(cfg), ctx)
            changes["data_root"] = str(root)
            folder = Path(root) / "splits"
        else:
            folder = Path(root)
        for kind in ("labeled", "unlabeled", "val"):
            given = getattr(cfg, f"{kind}_split")
            changes[f"{kind}_split"] = str(folder / f"{kind}.txt") if given is None else find_split_file(given, root)
        changes.update(resolve_pretrained(cfg, ctx))
        return dataclasses.replace(cfg, **changes)

    def training_sets(self, cfg: Config):
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

    def val_evaluator(self, cfg: Config, ctx: DistContext):
        loader = val_loader(cfg, ctx)
        return lambda model: evaluate_model(Predictor(model, cfg, ctx.device), cfg, loader)

    # ---- evaluate ------------------------------------------------------------------------
    def add_evaluate_arguments(self, parser) -> None:
        add_mode_argument(parser)

    def evaluate(self, predictor: Predictor, cfg: Config, ctx: DistContext, args) -> EvaluationReport:
        split = find_split_file(args.split, cfg.data_root) or cfg.val_split
        loader = val_loader(cfg, ctx, split)
        mode = args.mode or cfg.eval_mode
        if args.save_predictions is not None or mode == "center_crop":
            check_entries(loader.dataset.entries, nclass=cfg.nclass,
                          centre_crop=cfg.effective_eval_window if mode == "center_crop" else None)
        writer = None
        directory = prediction_folder(args.save_predictions, args.overwrite, ctx)
        if directory is not None:
            palette = palette_for(cfg.dataset)

            def writer(sample_id, pred, mask):
                save_palette_png(pred.cpu().numpy(), directory / f"{sample_id}.png", palette, overwrite=args.overwrite)
        result = evaluate_model(predictor, cfg, loader, mode, writer)
        summary = {"split": str(split), "mode": mode}
        return EvaluationReport(f"{args.checkpoint} on {split} ({len(loader.dataset)} images, mode {mode})",
                                result.table, result.metrics, {**summary, "metrics": result.metrics},
                                [{**summary, **result.metrics}])

    # ---- predict -------------------------------------------------------------------------
    def add_predict_arguments(self, parser) -> None:
        parser.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
        parser.add_argument("--output", type=Path, required=True, help="folder for <name>.png masks")
        parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg")
        add_mode_argument(parser, default="original",
                          help="sliding_window for images much larger than the training crop")

    def check_predict_outputs(self, cfg: Config, args) -> ImageFolderDataset:
        dataset = ImageFolderDataset(args.input)
        if not len(dataset):
            raise DataError(f"{args.input}: no image to predict")
        outputs = [args.output / f"{entry.sample_id}{suffix}" for entry in dataset.entries
                   for suffix in ([".png", "_overlay.jpg"] if args.overlay else [".png"])]
        refuse_overwriting_inputs(outputs, [entry.image for entry in dataset.entries])
        refuse_existing(outputs, args.overwrite)
        check_entries(dataset.entries, orient=True,
                      centre_crop=cfg.effective_eval_window if args.mode == "center_crop" else None)
        return dataset

    def predict(self, predictor: Predictor, cfg: Config, args, dataset: ImageFolderDataset) -> list[Path]:
        palette = palette_for(cfg.dataset)
        args.output.mkdir(parents=True, exist_ok=True)
        written = []
        with predictor.evaluating():
            for i in tqdm(range(len(dataset)), desc="predict", unit="image"):
                image, sample_id = dataset[i]
                scores, origin = predict(predictor.forward, predictor.normalize(image.unsqueeze(0)), args.mode,
                                         cfg.effective_eval_window, cfg.nclass, sample_id)
                pred = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
                written.append(save_palette_png(pred, args.output / f"{sample_id}.png", palette, overwrite=True))
                if args.overlay:
                    shown = image if origin is None else image[:, origin[0]:origin[0] + pred.shape[0],
                                                               origin[1]:origin[1] + pred.shape[1]]
                    with atomic.atomic_output(args.output / f"{sample_id}_overlay.jpg") as temporary:
                        Image.fromarray(overlay(shown, pred, palette=palette)).save(temporary)
        print(f"wrote {len(written)} mask(s) to {args.output}")
        return written


TASK = NaturalTask()
