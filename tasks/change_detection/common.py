"""The change-detection task (WHU-CD, LEVIR-CD, GeoTIFF pairs, the synthetic default) as an
implementation of :class:`unimatch.task.Task`: the config, data resolution, the change metrics and
their report, evaluation, and whole-scene prediction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Union

import numpy as np
import torch
from PIL import Image

from tasks.change_detection.data import EvalPairs, LabeledPairs, UnlabeledPairs
from tasks.change_detection.layout import describe_layout, detect_layout, is_split_folder
from tasks.change_detection.raster_io import DEFAULT_BANDS, DEFAULT_CLASS_VALUES, stretch_problem
from tasks.change_detection.scene_data import (HeldOutWindows, LabeledSceneWindows, UnlabeledSceneWindows, open_scenes,
                                               resolved_scenes)
from tasks.change_detection.scene_io import predict_scene
from tasks.change_detection.synthetic import SyntheticSpec, ensure_synthetic_cd
from unimatch import atomic
from unimatch.cli import add_mode_argument
from unimatch.config import PROBABILITY, Bounds, Config, above, at_least, class_names_or_ids
from unimatch.distributed import DistContext
from unimatch.errors import ConfigError
from unimatch.inference import Predictor
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.paths import config_path
from unimatch.pretrained import resolve_pretrained
from unimatch.report import EvalResult, format_table
from unimatch.task2d import EVALUATION_SPLITS, SegmentationTask2D

DATASETS = ("synthetic", "whu", "levir", "custom")
# the models of unimatch.models that take the two dates stacked on the channel axis
SIAMESE_MODELS = ("siamese_deeplabv3plus", "siamese_pspnet", "siamese_dpt")
# name in the metrics dict -> row label of the table; all in % (kappa x 100), as papers report them
CHANGE_METRICS = {
    "changed_IoU": "changed IoU",
    "unchanged_IoU": "unchanged IoU",
    "OA": "overall accuracy",
    "precision": "precision (changed)",
    "recall": "recall (changed)",
    "F1": "F1 (changed)",
    "kappa": "Cohen's kappa x100",
    "mIoU": "mean IoU",
}


@dataclass
class CDConfig(Config):
    """The core config plus what a bi-temporal dataset needs; defaults follow the official
    remote-sensing UniMatch (siamese DeepLabV3+, 256 crops, lr 0.02 for head and backbone alike)."""

    section_keys: ClassVar[dict] = {
        "data": ("layout", "scenes", "scene_windows_per_epoch", "scene_val_share", "label_ignore", "bands", "stretch",
                 "class_values", "test_split", "synthetic_no_change_share", "synthetic_change_rate",
                 "synthetic_building_side"),
        "perturbation": ("nadir_augment", "scale_range"),
        "evaluation": ("predict_window",),
    }
    non_training_keys: ClassVar[frozenset] = Config.non_training_keys | {"predict_window"}
    task: str = "change_detection"
    dataset: str = "synthetic"
    nclass: int = 2
    class_names: Optional[list] = field(default_factory=lambda: ["unchanged", "changed"])
    crop_size: int = 256
    in_channels: int = 6
    model: str = "siamese_deeplabv3plus"
    backbone: str = "resnet50"
    replace_stride_with_dilation: list = field(default_factory=lambda: [False, False, True])
    lr: float = 0.02
    lr_multi: float = 1.0
    grayscale_p: float = 0.0          # the official change-detection strong view has no grayscale
    select_metric: str = "changed_IoU"
    # task fields
    bands: list = field(default_factory=lambda: list(DEFAULT_BANDS))
    stretch: Union[str, float, list] = "percentile"   # one rule, or [A's, B's] (raster_io)
    class_values: list = field(default_factory=lambda: list(DEFAULT_CLASS_VALUES))
    nadir_augment: bool = False
    scale_range: list = field(default_factory=lambda: [0.8, 1.2])
    test_split: Optional[str] = None
    # the folder tree of --data-root: auto (detected), flat (ROOT/{A,B,label}) or split_folders (ROOT/{train,val,test}/{A,B,label}); tasks/change_detection/layout.py
    layout: str = "auto"
    # the side of the windows a whole scene is predicted in (predict's --window); null: crop_size
    predict_window: Optional[int] = None
    # the built-in synthetic set's amount of change (tasks/change_detection/synthetic.py)
    synthetic_no_change_share: float = SyntheticSpec.no_change_share   # the generator's defaults, defined once
    synthetic_change_rate: list = field(default_factory=lambda: list(SyntheticSpec.change_rate))
    synthetic_building_side: list = field(default_factory=lambda: list(SyntheticSpec.building_side))
    # train from whole GeoTIFF scenes, not tiles: [{before: A.tif, after: B.tif, label: L.tif}] (scene_data.py)
    scenes: Optional[list] = None
    scene_windows_per_epoch: int = 1000   # windows drawn from the scenes per epoch (labelled and unlabelled each)
    scene_val_share: float = 0.2          # the bottom share of each labelled scene's rows, held out for validation
    label_ignore: Optional[int] = None    # a label raster value meaning "not digitised" (ignored, as its nodata)

    @property
    def effective_predict_window(self) -> int:
        """``predict_window``, or ``crop_size`` when it is null (the window of the official tiles)."""
        return self.crop_size if self.predict_window is None else self.predict_window

    def select_metric_keys(self) -> list[str]:
        return list(CHANGE_METRICS)

    def validate(self) -> None:
        super().validate()
        self.check_bounds({
            "bands": at_least(1, whole=True),              # 1-based band numbers
            "class_values": at_least(0, whole=True),       # pixel values of the label files
            "scale_range": above(0.0, count=2, ordered=True),
            "predict_window": at_least(1, whole=True),
            "synthetic_no_change_share": PROBABILITY,
            "synthetic_change_rate": Bounds(0.0, 1.0, count=2, ordered=True),
            "synthetic_building_side": at_least(1, count=2, whole=True, ordered=True),   # pixels
            "scene_windows_per_epoch": at_least(1, whole=True),
            "scene_val_share": Bounds(0.0, 1.0, low_open=True, high_open=True),
            "label_ignore": at_least(0, whole=True),       # a pixel value of the label rasters
        })
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset: {self.dataset!r} is not one of {', '.join(DATASETS)}")
        if self.model not in SIAMESE_MODELS:
            raise ConfigError(f"model: {self.model!r}; change detection takes {', '.join(SIAMESE_MODELS)}")
        if self.in_channels != 2 * len(self.bands):
            raise ConfigError(f"in_channels ({self.in_channels}) must be 2 x len(bands) = {2 * len(self.bands)}: "
                              f"the two dates are stacked on the channel axis")
        if self.channel_group_size != len(self.bands):
            raise ConfigError(f"channel_group_size ({self.channel_group_size}) must equal len(bands) "
                              f"({len(self.bands)}) so each date is jittered as one image")
        problem = stretch_problem(self.stretch)
        if problem:
            raise ConfigError(f"stretch: {problem}")
        if len(self.class_values) != self.nclass or len(set(self.class_values)) != self.nclass:
            raise ConfigError(f"class_values {self.class_values} must give one distinct pixel value per class "
                              f"(nclass = {self.nclass})")
        if self.class_names is not None and len(self.class_names) != self.nclass:
            raise ConfigError(f"class_names {self.class_names} must name {self.nclass} classes")
        if self.nclass < 2:
            raise ConfigError("nclass: change detection needs at least 2 classes (0 = unchanged)")


# ---- metrics -------------------------------------------------------------------------------
def change_confusion(confusion: ConfusionMatrix) -> ConfusionMatrix:
    """The 2x2 unchanged/changed matrix: every class but 0 counts as change (identity for 2 classes)."""
    if confusion.nclass == 2:
        return confusion
    binary = ConfusionMatrix(2, device=confusion.matrix.device)
    m = confusion.matrix
    binary.matrix[0, 0], binary.matrix[0, 1] = m[0, 0], m[0, 1:].sum()
    binary.matrix[1, 0], binary.matrix[1, 1] = m[1:, 0].sum(), m[1:, 1:].sum()
    return binary


def change_metrics(confusion: ConfusionMatrix, class_names=None) -> dict:
    """Changed/unchanged IoU, OA, precision, recall, F1 of the changed class and Cohen's kappa, in %.

    OA is the paper's: correct pixels over all labelled pixels. IoU is 0 where a class is in
    neither truth nor prediction (as the official code); precision is NaN when nothing is
    predicted as change, F1 then 0 (2TP / (2TP + FP + FN)). With more than two classes the
    binary scores treat every non-zero class as change; per-class IoU is added for each class.
    """
    binary = change_confusion(confusion)
    # a class absent from truth and prediction has IoU 0, as the official intersection / (union + 1e-10)
    iou = torch.nan_to_num(binary.iou(), nan=0.0) * 100
    tp, fp, fn = binary.matrix[1, 1], binary.matrix[0, 1], binary.matrix[1, 0]
    f1 = float(2 * tp / (2 * tp + fp + fn) * 100) if 2 * tp + fp + fn > 0 else float("nan")
    metrics = {
        "changed_IoU": float(iou[1]), "unchanged_IoU": float(iou[0]),
        "OA": binary.overall_accuracy() * 100,
        "precision": float(binary.precision()[1] * 100), "recall": float(binary.recall()[1] * 100),
        "F1": f1, "kappa": binary.kappa() * 100,
        "mIoU": confusion.miou() * 100,
    }
    if confusion.nclass > 2:
        names = class_names_or_ids(class_names, confusion.nclass)
        per_class = torch.nan_to_num(confusion.iou(), nan=0.0) * 100
        metrics.update({f"IoU/{name}": value for name, value in zip(names, per_class.tolist())})
    return metrics


def change_report(confusion: ConfusionMatrix, class_names=None, column: str = "score %") -> tuple[dict, str]:
    """(metrics, table) of :func:`change_metrics`; the table lists every score on its own row."""
    metrics = change_metrics(confusion, class_names)
    rows = [[label, metrics[key]] for key, label in CHANGE_METRICS.items()]
    rows += [[key, value] for key, value in metrics.items() if key.startswith("IoU/")]
    return metrics, format_table(["metric", column], rows)


# ---- data ----------------------------------------------------------------------------------
def pair_options(cfg: CDConfig) -> dict:
    return dict(bands=tuple(cfg.bands), stretch=cfg.stretch, class_values=tuple(cfg.class_values),
                layout=detect_layout(cfg.data_root, cfg.layout))


def weak_view_options(cfg: CDConfig) -> dict:
    return dict(crop_size=cfg.crop_size, nadir_augment=cfg.nadir_augment, scale_range=tuple(cfg.scale_range))


def augment_options(cfg: CDConfig) -> dict:
    return dict(**weak_view_options(cfg), **pair_options(cfg))


def mask_writer(directory: Path, class_values):
    """A callback writing each prediction as ``<tile stem>.png`` in the label encoding (0/255)."""
    lookup = np.asarray(class_values, np.uint8 if max(class_values) < 256 else np.uint16)

    def write(sample_id, pred, mask):
        with atomic.atomic_output(directory / f"{Path(sample_id).stem}.png") as temporary:
            Image.fromarray(lookup[pred.cpu().numpy()]).save(temporary)
    return write


def parse_bands(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--bands {text!r}: give 1-based band numbers separated by commas, e.g. 1,2,3") from None


def parse_stretch(text: str | None):
    """``--stretch``: one rule for both dates, or ``BEFORE,AFTER`` (a list: each date its own rule)."""
    if text is None:
        return None
    rules = [rule.strip() for rule in text.split(",")]
    if len(rules) > 2:
        raise ConfigError(f"--stretch {text!r}: give one rule, or two separated by a comma (before,after)")
    try:
        parsed = [rule if rule == "percentile" else float(rule) for rule in rules]
    except ValueError:
        raise ConfigError(f"--stretch {text!r}: give 'percentile' or a divisor such as 256, or one for each date "
                          f"as before,after (e.g. 1,256)") from None
    return parsed if len(parsed) == 2 else parsed[0]


class ChangeDetectionTask(SegmentationTask2D):
    name = "change_detection"
    config_class = CDConfig
    default_config = config_path("change_detection", "synthetic.yaml")
    item_unit = "tiles"
    data_root_holds = "the folder holding A/, B/ and label/, or train/, val/ and test/ each holding them"

    def synthetic_root(self, cfg: CDConfig) -> Path:
        return ensure_synthetic_cd(no_change_share=cfg.synthetic_no_change_share,
                                   change_rate=tuple(cfg.synthetic_change_rate),
                                   building_side=tuple(cfg.synthetic_building_side))

    def resolve_data(self, cfg: CDConfig, ctx: DistContext | None = None) -> CDConfig:
        """The base's resolution, then (for a given root) one line saying which folder tree it is read as."""
        if cfg.scenes:
            return self.resolve_scenes(cfg, ctx)
        given = cfg.data_root_given
        cfg = super().resolve_data(cfg, ctx)
        if given and (ctx is None or ctx.is_main):
            print(describe_layout(cfg.data_root, detect_layout(cfg.data_root, cfg.layout), cfg.layout))
        return cfg

    def resolve_scenes(self, cfg: CDConfig, ctx: DistContext | None) -> CDConfig:
        """``scenes`` (absolute paths) in place of a data root and split lists."""
        changes = {f"{kind}_split": None for kind in ("labeled", "unlabeled", "val")}
        return dataclasses.replace(cfg, scenes=resolved_scenes(cfg), **changes, **resolve_pretrained(cfg, ctx))

    def split_file(self, cfg: CDConfig, split: str | None) -> str:
        """With ``scenes``: the training windows, or the held-out rows (``val``), the one evaluation split."""
        if not cfg.scenes:
            return super().split_file(cfg, split)
        if split in (None, "val", "labeled", "unlabeled"):
            return "the held-out rows of the scenes" if split in (None, "val") else f"{split} windows of the scenes"
        raise ConfigError(f"--split {split}: a run trained on scenes holds out only their bottom rows; use --split val")

    def default_split(self, root: Path, kind: str, synthetic: bool) -> str | None:
        """``<kind>.txt`` as every 2-D task, else (split_folders layout) the folder ``ROOT/val`` or
        ``ROOT/test`` itself: every pair in it."""
        listed = super().default_split(root, kind, synthetic)
        if listed is None and kind in EVALUATION_SPLITS and is_split_folder(root / kind):
            return str(root / kind)
        return listed

    def labeled_set(self, cfg: CDConfig, split_file: str) -> LabeledPairs | LabeledSceneWindows:
        if cfg.scenes:
            return LabeledSceneWindows(open_scenes(cfg), cfg.scene_windows_per_epoch, seed=cfg.seed,
                                       **weak_view_options(cfg))
        return LabeledPairs(cfg.data_root, split_file, seed=cfg.seed, **augment_options(cfg))

    def unlabeled_set(self, cfg: CDConfig, split_file: str) -> UnlabeledPairs | UnlabeledSceneWindows:
        if cfg.scenes:
            return UnlabeledSceneWindows(open_scenes(cfg), cfg.scene_windows_per_epoch, seed=cfg.seed + 1,
                                         label_for_stats=cfg.pseudo_label_accuracy, **weak_view_options(cfg))
        return UnlabeledPairs(cfg.data_root, split_file, seed=cfg.seed + 1, **augment_options(cfg),
                              label_for_stats=cfg.pseudo_label_accuracy)

    def eval_set(self, cfg: CDConfig, split_file: str) -> EvalPairs | HeldOutWindows:
        if cfg.scenes:
            return HeldOutWindows(open_scenes(cfg), cfg.crop_size)
        return EvalPairs(cfg.data_root, split_file, **pair_options(cfg))

    def eval_batch_size(self, cfg: CDConfig) -> int:
        return 1 if cfg.scenes else cfg.eval_batch_size   # held-out windows differ in size from scene to scene

    def scores(self, confusion: ConfusionMatrix, cfg: CDConfig, column: str) -> EvalResult:
        metrics, table = change_report(confusion, cfg.report_class_names(), column)
        return EvalResult(metrics, table, {"confusion": confusion.matrix.cpu().tolist()})

    def check_eval_inputs(self, dataset: EvalPairs, cfg: CDConfig, mode: str, saving: bool) -> None:
        if saving:
            dataset.check_every_pair()

    def mask_writer(self, cfg: CDConfig, directory: Path, overwrite: bool):
        return mask_writer(directory, cfg.class_values)

    def add_evaluate_arguments(self, parser) -> None:
        add_mode_argument(parser, help="default: the config's eval_mode (whole tiles)")

    # ---- predict -------------------------------------------------------------------------
    def add_predict_arguments(self, parser) -> None:
        parser.add_argument("--before", type=Path, required=True, help="scene of the first date (A)")
        parser.add_argument("--after", type=Path, required=True, help="scene of the second date (B), same grid as A")
        parser.add_argument("--out", type=Path, required=True, help="output .tif/.tiff (georeferenced) or .png")
        parser.add_argument("--window", type=int, help="window side in pixels (default: the config's predict_window)")
        parser.add_argument("--overlap", type=int, help="overlap of neighbouring windows (default: window / 4)")
        parser.add_argument("--bands", help="1-based bands of each date, e.g. 1,2,3 (default: the config's bands)")
        parser.add_argument("--stretch", help="'percentile' or a divisor for non-8-bit data, or one for each date as "
                                               "BEFORE,AFTER, e.g. 1,256 (default: the config's)")
        parser.add_argument("--probability", action="store_true", help="also write the change probability")
        parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def predict_values(self, args) -> dict:
        return {"bands": parse_bands(args.bands), "stretch": parse_stretch(args.stretch)}

    def predict(self, predictor: Predictor, cfg: CDConfig, args, plan) -> Path:
        window = args.window or cfg.effective_predict_window
        overlap = window // 4 if args.overlap is None else args.overlap

        def probabilities(batch: torch.Tensor) -> torch.Tensor:
            return predictor(batch).softmax(1)
        out = predict_scene(args.before, args.after, args.out, probabilities, window=window, overlap=overlap,
                            bands=cfg.bands, stretch=cfg.stretch, write_probability=args.probability,
                            overwrite=args.overwrite, progress=not args.no_progress, batch_size=args.batch_size)
        print(f"wrote {out}")
        return out


TASK = ChangeDetectionTask()
