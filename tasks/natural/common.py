"""The natural-image task (Pascal VOC, Cityscapes, COCO, a folder of your own images, the synthetic
VOC-layout default) as an implementation of :class:`unimatch.task.Task`."""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from tasks.natural.data import ImageFolderDataset, LabeledDataset, UnlabeledDataset, ValDataset, check_entries
from tasks.natural.layouts import (CITYSCAPES_CLASSES, COCO_CLASSES, LAYOUTS, PASCAL_CLASSES, get_layout,
                                   is_folder_layout, parse_split_line)
from tasks.natural.palette import class_colours, overlay, palette_for, save_palette_png
from tasks.natural.synthetic import (DEFAULT_LABELED_FRACTION, DEFAULT_N_IMAGES, SYNTHETIC_CLASSES, SceneStyle,
                                     ensure_synthetic_voc)
from unimatch import atomic
from unimatch.cli import add_mode_argument
from unimatch.config import PROBABILITY, Config, at_least
from unimatch.errors import ConfigError, DataError
from unimatch.inference import Predictor, predict
from unimatch.paths import config_path, guard_outputs
from unimatch.report import EvalResult, segmentation_report
from unimatch.splits import first_field
from unimatch.task2d import SegmentationTask2D

CLASS_NAMES = {"pascal": PASCAL_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "coco": COCO_CLASSES,
               "synthetic": SYNTHETIC_CLASSES}


@dataclass
class NaturalConfig(Config):
    """:class:`unimatch.config.Config` with the natural-image defaults (the official Pascal ones)."""

    section_keys: ClassVar[dict] = {"data": ("palette", "synthetic_images", "synthetic_labeled_fraction",
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
    # colour masks: the [R, G, B] colour of each class, class 0 first (``[[0,0,0],[128,0,0],...]``);
    # an RGB mask is read by these colours (any other colour is refused) and predictions are drawn in
    # them; None: masks are index PNGs (values = class ids, 255 = ignore)
    palette: Optional[list] = None

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
        if self.palette is not None:
            self.check_palette()

    def check_palette(self) -> None:
        """One distinct 8-bit [R, G, B] colour per class."""
        colours = self.palette
        if not isinstance(colours, list) or len(colours) != self.nclass or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in colours):
            raise ConfigError(f"palette must list one [R, G, B] colour (0..255) per class, {self.nclass} in all "
                              f"(nclass); got {colours!r}")
        if len({tuple(c) for c in colours}) != len(colours):
            raise ConfigError(f"palette gives one colour to two classes: {colours!r}")


def layout_of(cfg: Config) -> str:
    """The on-disk layout: the synthetic set is written in the Pascal VOC layout."""
    if cfg.dataset not in LAYOUTS:
        raise ConfigError(f"dataset: {cfg.dataset!r} is not one of {sorted(LAYOUTS)}")
    return "pascal" if cfg.dataset == "synthetic" else cfg.dataset


def with_folder_layout(cfg: Config, ctx=None) -> Config:
    """``dataset: folder`` when the config says so, or when a given root has the folder layout and the
    config names no dataset of its own (the synthetic default); one line says which."""
    if not cfg.data_root_given:
        return cfg
    if cfg.dataset == "folder":
        reason = "from the config"
    elif cfg.dataset == "synthetic" and is_folder_layout(Path(cfg.data_root)):
        reason = f"detected: {cfg.data_root} holds images/ and none of the VOC, Cityscapes or COCO folders"
        cfg = dataclasses.replace(cfg, dataset="folder")
    else:
        return cfg
    line = (f"dataset: folder ({reason}); images/ + masks/, {cfg.nclass} classes, masks as "
            f"{'colours of palette' if cfg.palette else 'class ids'}")
    log = logging.getLogger("unimatch")
    if log.handlers:        # a training run: its console and train.log
        log.info(line)
    elif ctx is None or ctx.is_main:
        print(line, file=sys.stderr)
    return cfg


def mask_palette(cfg: Config) -> np.ndarray:
    """The colours predicted masks are drawn in: the config's palette, else the dataset's convention."""
    return class_colours(cfg.palette) if cfg.palette else palette_for(cfg.dataset)


class NaturalTask(SegmentationTask2D):
    name = "natural"
    config_class = NaturalConfig
    default_config = config_path("natural", "synthetic.yaml")
    data_root_holds = "the folder holding its images"

    def synthetic_root(self, cfg: Config) -> Path:
        """The built-in set that the config's ``synthetic_*`` keys describe, written once."""
        style = SceneStyle(cfg.synthetic_class_hue_probability, cfg.synthetic_class_hue_spread, cfg.synthetic_clutter)
        return ensure_synthetic_voc(n_images=cfg.synthetic_images, labeled_fraction=cfg.synthetic_labeled_fraction,
                                    style=style)

    def split_folders(self, root: Path, kind: str, synthetic: bool) -> list[Path]:
        """The built-in set keeps its lists in ``splits/``; a given root its training lists at the top
        (the lists of other labelled fractions are named), and ``val``/``test`` there or in ``splits/``."""
        if synthetic:
            return [root / "splits"]
        return [root] if kind in ("labeled", "unlabeled") else [root, root / "splits"]

    def resolve_data(self, cfg: Config, ctx=None) -> Config:
        return super().resolve_data(with_folder_layout(cfg, ctx), ctx)

    def split_key(self, cfg: Config):
        """The sample id, whichever line format names it (``ID``, ``IMAGE`` or ``IMAGE MASK``)."""
        layout = get_layout(layout_of(cfg))

        def sample_id(line: str) -> str:
            try:
                return layout.id_for_image(parse_split_line(line, layout, Path(cfg.data_root))[0])
            except ValueError:   # a malformed line: the dataset's reader names it
                return first_field(line)
        return sample_id

    def labeled_set(self, cfg: Config, split_file: str) -> LabeledDataset:
        return LabeledDataset(layout_of(cfg), cfg.data_root, split_file, cfg.crop_size, nclass=cfg.nclass,
                              seed=cfg.seed, colours=cfg.palette)

    def unlabeled_set(self, cfg: Config, split_file: str) -> UnlabeledDataset:
        return UnlabeledDataset(layout_of(cfg), cfg.data_root, split_file, cfg.crop_size, seed=cfg.seed + 1,
                                label_for_stats=cfg.pseudo_label_accuracy, nclass=cfg.nclass, colours=cfg.palette)

    def eval_set(self, cfg: Config, split_file: str) -> ValDataset:
        return ValDataset(layout_of(cfg), cfg.data_root, split_file, nclass=cfg.nclass, colours=cfg.palette)

    def scores(self, confusion, cfg: Config, column: str) -> EvalResult:
        return EvalResult(*segmentation_report(confusion, cfg.report_class_names()))

    def check_eval_inputs(self, dataset: ValDataset, cfg: Config, mode: str, saving: bool) -> None:
        if saving or mode == "center_crop":
            check_entries(dataset.entries, nclass=cfg.nclass, colours=cfg.palette,
                          centre_crop=cfg.effective_eval_window if mode == "center_crop" else None)

    def mask_writer(self, cfg: Config, directory: Path, overwrite: bool):
        palette = mask_palette(cfg)

        def write(sample_id, pred, mask):
            save_palette_png(pred.cpu().numpy(), directory / f"{sample_id}.png", palette, overwrite=overwrite)
        return write

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
        guard_outputs(outputs, [entry.image for entry in dataset.entries], args.overwrite)
        check_entries(dataset.entries, orient=True,
                      centre_crop=cfg.effective_eval_window if args.mode == "center_crop" else None)
        return dataset

    def predict(self, predictor: Predictor, cfg: Config, args, dataset: ImageFolderDataset) -> list[Path]:
        palette = mask_palette(cfg)
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
