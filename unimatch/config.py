"""Typed run configuration: YAML file + ``key=value`` overrides, validated with clear messages.

The keys follow the official UniMatch YAML files (``nclass``, ``crop_size``, ``lr``, ``lr_multi``,
``criterion: {name, kwargs}``, ``conf_thresh`` ...) so users can bring theirs. Tasks extend
:class:`Config` with their own fields (a dataclass subclass); any other key is an error that
lists the valid ones, because a misspelt key silently falling back to a default costs a
week-long run. For the same reason a key that the chosen model or task never reads is refused
when set off its default (:meth:`Config.keys_not_read`).

A file may list its keys flat, as the official files do, or grouped in the sections of
:data:`SECTIONS` (``network: {model: unet, feature_channels: [...]}``); an override may name
the section too (``network.backbone=resnet50``). Sections are flattened on load: the config, the
saved ``config.yaml`` and the checkpoints' copies are flat. Each key belongs to one section
(``section_keys`` of :class:`Config` and of each task's config); a key under another section is
an error naming its own.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import yaml

from unimatch.errors import ConfigError
from unimatch.losses import CRITERIA, criterion_keywords
from unimatch.paths import config_path

METHODS = {
    # method: (number of strong image streams, number of feature-perturbation streams)
    "unimatch": (2, 1),
    "fixmatch": (1, 0),
    "uniperb": (1, 1),
    "dusperb": (2, 0),
    "supervised": (0, 0),
    "unimatch_v2": (2, 0),
}
# The keys below pick the parts a method is made of; each is null unless set, and null takes the
# method's value here (V1_SETTINGS where the method has none), so a preset sets its defaults and a
# key given in the file or on the command line overrides it (``method: unimatch_v2`` with
# ``teacher: student``). ``weight_decay`` null takes its optimizer's value (OPTIMIZER_WEIGHT_DECAY).
# teacher: who predicts the pseudo-labels on the weak view (the student, or an EMA of it);
# ema: keep an EMA of the student, evaluate it each evaluation epoch (true whenever teacher is ema);
# comp_drop: the strong views share one forward with the model's complementary channel dropout;
# cutmix_partner: where a CutMix box's content comes from: "loader" (a second unlabelled batch),
# "previous" (image i-1 of the batch, the older ``partner_from_batch``), "flip" (image n-1-i, whose
# own strong view of the same stream is pasted); optimizer: "sgd" or "adamw".
V1_SETTINGS = {"teacher": "student", "ema": False, "comp_drop": False, "cutmix_partner": "loader", "optimizer": "sgd"}
METHOD_SETTINGS = {
    "unimatch_v2": {"teacher": "ema", "ema": True, "comp_drop": True, "cutmix_partner": "flip", "optimizer": "adamw"},
}
OPTIMIZER_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.01}   # the paper's SGD; the official V2 scripts' AdamW
SETTING_CHOICES = {"teacher": ("student", "ema"), "cutmix_partner": ("loader", "previous", "flip"),
                   "optimizer": ("sgd", "adamw")}
# the keys whose null means "the method's (or the optimizer's) value": method_setting resolves them
METHOD_SETTING_KEYS = (*V1_SETTINGS, "weight_decay")


def method_setting(values: Any, key: str) -> Any:
    """The value of ``key`` (one of METHOD_SETTING_KEYS) for config ``values`` (a mapping of config
    keys): its own when set, else its method's. A mapping, not a Config, so that a run's stored
    config is resolved the same way (``training_differences``)."""
    value = values.get(key)
    if value is not None:
        return value
    if key == "weight_decay":
        return OPTIMIZER_WEIGHT_DECAY[method_setting(values, "optimizer")]
    if key == "cutmix_partner" and values.get("partner_from_batch"):
        return "previous"
    if key == "ema" and method_setting(values, "teacher") == "ema":
        return True
    return {**V1_SETTINGS, **METHOD_SETTINGS.get(values.get("method"), {})}[key]

EVAL_MODES = ("original", "center_crop", "sliding_window")
# the sections a config file may group its keys in, as a user thinks of them: the dataset; the model;
# the method, its losses, schedule and seed; the augmentation of the training views; the validation
# metric and the evaluation and prediction windows; how the maths and the loading run; logging and
# the run folder. None is a key name (``model`` and ``method`` are keys of the official files).
SECTIONS = ("data", "network", "training", "perturbation", "evaluation", "speed", "run")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class Bounds:
    """The numbers a numeric config key may hold, so that a value torch or numpy would refuse deep
    inside a constructor (a negative ``lr``, ``num_workers: -1``) is refused with the key's name
    before anything is built.

    Every number must be finite and lie between ``low`` and ``high`` (None: unbounded; an ``open``
    end excludes its limit). For a list key: ``count`` numbers (None: one or more), ints when
    ``whole`` (torch refuses a layer size or dilation of 2.0), and not decreasing when ``ordered``
    (a ``[low, high]`` range).
    """
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    count: Optional[int] = None
    whole: bool = False
    ordered: bool = False

    def holds(self, number: Any) -> bool:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            return False
        if self.whole and not isinstance(number, int):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)

    def interval(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1)`` ...: the condition on one number ('' when unbounded)."""
        low, high = _plain_number(self.low), _plain_number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return ""

    def problem(self, value: Any, nullable: bool = False) -> Optional[str]:
        """What is wrong with ``value`` (``must be > 0, got -1``), or None when it is valid;
        ``nullable`` adds ``or null`` to what is asked for."""
        if isinstance(value, (list, tuple)):
            valid = (len(value) == self.count if self.count is not None else len(value) > 0) \
                and all(self.holds(v) for v in value) \
                and (not self.ordered or all(a <= b for a, b in zip(value, value[1:])))
            amount = {2: "two", 3: "three", 4: "four", 5: "five"}.get(self.count, self.count) or "one or more"
            wanted = " ".join(filter(None, [amount, "whole" if self.whole else "finite", "numbers", self.interval()]))
            if self.ordered:
                wanted += ", the first <= the second" if self.count == 2 else ", none smaller than the one before"
            shown = list(value)
        else:
            valid = self.holds(value)
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            wanted = self.interval() if finite else f"a finite number {self.interval()}".rstrip()
            shown = _plain_number(value)
        return None if valid else f"must be {wanted}{' or null' if nullable else ''}, got {shown}"


def _plain_number(value: Any) -> str:
    """``-1`` for -1.0 (the user typed -1), ``0.001`` for 0.001, anything else as ``repr``."""
    text = repr(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


def above(limit: float, **list_rules: Any) -> Bounds:
    return Bounds(low=limit, low_open=True, **list_rules)


def at_least(limit: float, **list_rules: Any) -> Bounds:
    return Bounds(low=limit, **list_rules)


PROBABILITY = Bounds(0.0, 1.0)
MOMENTUM = Bounds(0.0, 1.0, high_open=True)   # 1 would never forget, the running value would never move
COUNT = at_least(1, whole=True)

# key -> the numbers it may hold; every numeric key of Config is here (a test checks it), and each
# task's validate() checks its own keys the same way (Config.check_bounds)
NUMBER_BOUNDS: dict[str, Bounds] = {
    "nclass": COUNT, "crop_size": COUNT, "in_channels": COUNT,
    "mean": Bounds(), "std": above(0.0),
    "width": COUNT, "reduce_channels": COUNT, "decoder_channels": COUNT,
    "feature_channels": at_least(1, count=5, whole=True),     # the UNet's five levels
    "dilations": at_least(1, count=3, whole=True),            # the three atrous rates of ASPP
    "conf_thresh": PROBABILITY,
    "strong_views": at_least(0), "fp_streams": at_least(0),
    "sup_weight": at_least(0.0), "strong_weight": at_least(0.0), "fp_weight": at_least(0.0),
    "loss_divisor": above(0.0),
    "sup_warmup_epochs": at_least(0),
    "dist_align_momentum": MOMENTUM, "class_thresh_momentum": MOMENTUM,
    "ema_ratio": Bounds(0.0, 1.0, low_open=True, high_open=True),   # the cap of the EMA's ratio
    "color_jitter_p": PROBABILITY, "grayscale_p": PROBABILITY, "blur_p": PROBABILITY, "cutmix_p": PROBABILITY,
    "color_jitter": at_least(0.0, count=4),                  # brightness, contrast, saturation, hue
    "blur_sigma": above(0.0, count=2, ordered=True),
    "cutmix_area": Bounds(0.0, 1.0, low_open=True, count=2, ordered=True),   # shares of the crop
    "cutmix_ratio": above(0.0, count=2, ordered=True),
    "channel_group_size": at_least(1),
    "epochs": COUNT, "batch_size": COUNT,
    "lr": above(0.0), "lr_multi": above(0.0), "momentum": MOMENTUM, "weight_decay": at_least(0.0),
    "threads": at_least(1),
    "seed": at_least(0),                    # numpy refuses negative seeds
    "eval_every": COUNT,
    "num_workers": at_least(0),             # 0: load in the training process
    "log_every": at_least(0),               # 0: no periodic logging
    "eval_batch_size": COUNT,
    "eval_window": COUNT,
}


# Keys that do not shape the weights: how many loader processes and CPU threads, how often to log,
# where the run folder is, how many images one evaluation batch holds, how often to evaluate. A run
# may be resumed with other values of these (and of a task's own, ``Config.non_training_keys``);
# every other key must equal the stored one (see ``training_differences``), because the weights in
# the run folder were trained under it.
NON_TRAINING_KEYS = frozenset({"num_workers", "threads", "log_every", "save_dir", "eval_batch_size", "eval_every"})


def class_names_or_ids(names: Optional[Sequence[str]], nclass: int) -> list[str]:
    """``names`` when there is one per class, else ``class 0`` ... ``class <nclass - 1>``."""
    return [str(n) for n in names] if names and len(names) == nclass else [f"class {i}" for i in range(nclass)]


@dataclass
class Config:
    # section -> its keys of this class (a task's config lists its own keys the same way)
    section_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "data": ("task", "dataset", "data_root", "labeled_split", "unlabeled_split", "val_split",
                 "allow_labeled_in_unlabeled", "nclass", "class_names", "crop_size", "in_channels", "mean", "std"),
        "network": ("model", "backbone", "deep_stem", "width", "reduce_channels", "decoder_channels",
                    "feature_channels", "pretrained", "replace_stride_with_dilation", "multi_grid", "dilations",
                    "lock_backbone"),
        "training": ("method", "conf_thresh", "strong_views", "fp_streams", "sup_weight", "strong_weight",
                     "fp_weight", "loss_divisor", "sup_warmup_epochs", "dist_align", "dist_align_momentum",
                     "class_thresh", "class_thresh_momentum", "partner_from_batch", "cutmix_partner", "teacher",
                     "ema", "ema_ratio", "comp_drop", "criterion", "unsup_loss", "epochs", "batch_size",
                     "optimizer", "lr", "lr_multi", "momentum", "weight_decay", "seed"),
        "perturbation": ("color_jitter_p", "color_jitter", "grayscale_p", "blur_p", "blur_sigma", "cutmix_p",
                         "cutmix_area", "cutmix_ratio", "channel_group_size"),
        "evaluation": ("select_metric", "eval_mode", "eval_window", "eval_batch_size", "eval_every"),
        "speed": ("amp", "channels_last", "compile", "cpu_allocator", "threads", "num_workers"),
        "run": ("save_dir", "log_every", "pseudo_label_accuracy"),
    }
    # the keys a run may be resumed with other values of (a task's config adds its own)
    non_training_keys: ClassVar[frozenset] = NON_TRAINING_KEYS

    # data (a task's config subclass sets ``task``, ``select_metric`` and its defaults)
    task: Optional[str] = None
    dataset: str = "synthetic"
    data_root: Optional[str] = None
    labeled_split: Optional[str] = None
    unlabeled_split: Optional[str] = None
    val_split: Optional[str] = None
    # labelled samples also listed as unlabelled: refused unless true (then a warning; unimatch/splits.py)
    allow_labeled_in_unlabeled: bool = False
    nclass: int = 21
    class_names: Optional[list] = None
    crop_size: int = 321      # the side of the training crops (the official meaning of the key)
    in_channels: int = 3
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    # model
    model: str = "deeplabv3plus"
    backbone: str = "resnet101"
    deep_stem: bool = True
    width: int = 64
    reduce_channels: int = 48
    decoder_channels: int = 256
    feature_channels: Optional[list] = None
    pretrained: Optional[str] = None
    replace_stride_with_dilation: list = field(default_factory=lambda: [False, False, True])
    multi_grid: bool = False
    dilations: list = field(default_factory=lambda: [6, 12, 18])
    # freeze the encoder, train the head only (the official V2 key; read by the DPT models)
    lock_backbone: bool = False
    # method
    method: str = "unimatch"
    conf_thresh: float = 0.95
    strong_views: Optional[int] = None
    fp_streams: Optional[int] = None
    # the loss (unimatch/method.py): (sup_weight L_sup + strong_weight L_strong + fp_weight L_fp) / loss_divisor,
    # the paper's (1, 0.5, 0.5) / 2 (StepSettings.weights: strong_weight null is 1 - fp_weight, 1 without an
    # FP stream). ``method: supervised`` trains on sup_weight L_sup, undivided (the official supervised.py),
    # so sup_weight 2 under a semi-supervised method weighs L_sup as the supervised baseline's 1
    sup_weight: float = 1.0      # weight of the labelled loss L_sup (divided by loss_divisor unless supervised)
    strong_weight: Optional[float] = None   # weight of the strong-view losses, their mean over the views
    fp_weight: float = 0.5       # weight of the feature-perturbation loss
    loss_divisor: float = 2.0    # divides the weighted sum, the supervised warm-up's sup_weight L_sup too
    # not in the paper (off in every official config): the first ``sup_warmup_epochs`` epochs train
    # the labelled term of the loss alone (unlabelled terms weighted 0, unlabelled data not loaded),
    # so that a from-scratch teacher is confident on the minority classes before its pseudo-labels
    # are used (docs/benchmarks.md)
    sup_warmup_epochs: int = 0
    # not in the paper (off in every official config): distribution alignment of the pseudo-labels
    # (unimatch/align.py), for a teacher that under-predicts the minority classes
    dist_align: bool = False
    dist_align_momentum: float = 0.99   # of the running class distributions that dist_align divides by
    # not in the paper (off in every official config): per-class confidence thresholds from each
    # class's running confident share over its labelled frequency (unimatch/align.py)
    class_thresh: bool = False
    class_thresh_momentum: float = 0.99   # of class_thresh's running shares
    # not in the paper (off in every official config): take each image's CutMix partner and its
    # pseudo-label from the previous image of the same unlabelled batch, instead of a second batch
    # predicted in eval mode. Saves the partner's loading and forward pass; the partner's
    # pseudo-label is then a train-mode prediction (docs/benchmarks.md measures the effect)
    partner_from_batch: bool = False
    # the parts of the method (METHOD_SETTINGS above): null takes the method's value
    cutmix_partner: Optional[str] = None   # loader | previous | flip
    teacher: Optional[str] = None          # student | ema
    ema: Optional[bool] = None
    # the EMA's ratio at 0-based global iteration it is min(1 - 1 / (it + 1), ema_ratio), as the
    # official V2 scripts (0.996)
    ema_ratio: float = 0.996
    comp_drop: Optional[bool] = None
    criterion: dict = field(default_factory=lambda: {"name": "CELoss", "kwargs": {"ignore_index": 255}})
    unsup_loss: str = "ce"
    # statistics: load the labels of the unlabelled images (when they exist on disk) to log how
    # accurate the confident pseudo-labels are per class (unimatch/health.py); never used in a loss
    pseudo_label_accuracy: bool = False
    # strong perturbation (per image / channel group)
    color_jitter_p: float = 0.8
    color_jitter: list = field(default_factory=lambda: [0.5, 0.5, 0.5, 0.25])
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])
    cutmix_p: float = 0.5
    cutmix_area: list = field(default_factory=lambda: [0.02, 0.4])
    cutmix_ratio: list = field(default_factory=lambda: [0.3, 1 / 0.3])
    channel_group_size: int = 3
    # optimisation
    epochs: int = 80
    batch_size: int = 8
    lr: float = 0.001
    lr_multi: float = 10.0
    optimizer: Optional[str] = None        # sgd | adamw (AdamW: betas (0.9, 0.999), as the official V2 scripts)
    momentum: float = 0.9                  # SGD's
    weight_decay: Optional[float] = None   # null: the optimizer's, 1e-4 for SGD, 0.01 for AdamW
    amp: str = "none"
    # speed (unimatch/precision.py): how the maths runs. channels_last is opt-in: on the demo of
    # 3-D volumes it turned UniMatch's gain into a loss (measured in docs/benchmarks.md)
    channels_last: bool = False
    compile: bool = False
    cpu_allocator: str = "default"
    # intra-op CPU threads of the training process (torch.set_num_threads); None keeps torch's default,
    # one per core. The demos' small models train faster on one thread than on two, which leaves the
    # other core to the data workers (measured in docs/benchmarks.md)
    threads: Optional[int] = None
    # run
    seed: int = 0
    save_dir: Optional[str] = None
    eval_every: int = 1
    num_workers: int = 2
    log_every: int = 20
    select_metric: Optional[str] = None
    eval_mode: str = "original"
    # the side of the window of the center_crop and sliding_window eval modes (and of a task's
    # prediction in those modes); null: crop_size, the official evaluation's window
    eval_window: Optional[int] = None
    eval_batch_size: int = 1

    # ---- derived values -------------------------------------------------------------
    @property
    def data_root_given(self) -> bool:
        """False when no dataset was named: no ``data_root``, or the official YAML's
        ``Your/.../Path`` placeholder; the task then uses its built-in synthetic set."""
        return self.data_root is not None and not str(self.data_root).startswith("Your/")

    @property
    def effective_eval_window(self) -> int:
        """``eval_window``, or ``crop_size`` when it is null (the official evaluation's window)."""
        return self.crop_size if self.eval_window is None else self.eval_window

    @property
    def streams(self) -> tuple[int, int]:
        """(strong image streams, feature streams) after applying the method's defaults."""
        default_strong, default_fp = METHODS[self.method]
        strong = default_strong if self.strong_views is None or self.method == "supervised" else self.strong_views
        fp = default_fp if self.fp_streams is None or self.method == "supervised" else self.fp_streams
        return strong, fp

    def method_setting(self, key: str) -> Any:
        """The value of ``key`` (METHOD_SETTING_KEYS: teacher, ema, comp_drop, cutmix_partner,
        optimizer, weight_decay) after applying the method's defaults."""
        return method_setting(vars(self), key)

    def default_class_names(self) -> Optional[Sequence[str]]:
        """The task's names of the classes of ``dataset`` when ``class_names`` is not set."""
        return None

    def report_class_names(self) -> list[str]:
        """``class_names``, else the task's default names, else ``class <i>`` (when the count differs)."""
        return class_names_or_ids(self.class_names or self.default_class_names(), self.nclass)

    def select_metric_keys(self) -> Optional[list[str]]:
        """The metrics ``select_metric`` may name (None: not checked). The best checkpoint keeps the
        highest score, so a task lists only metrics where higher is better."""
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def key_sections(cls) -> dict[str, str]:
        """key -> the section it belongs to, from ``section_keys`` of this class and its bases."""
        sections = {}
        for klass in reversed(cls.__mro__):
            for section, keys in vars(klass).get("section_keys", {}).items():
                sections.update(dict.fromkeys(keys, section))
        return sections

    def keys_not_read(self) -> dict[str, str]:
        """key -> why this config's run never reads it: the chosen model's (``unimatch.models.MODELS``);
        a task's config adds the keys the task has no use for. Setting one is refused (``validate``)."""
        from unimatch.models import model_keys_not_read
        not_read = model_keys_not_read(self.model)
        if self.method in METHODS and self.method_setting("optimizer") != "sgd":
            not_read["momentum"] = "AdamW has no momentum key (its betas are (0.9, 0.999))"
        if self.method in METHODS and not self.method_setting("ema"):
            not_read["ema_ratio"] = "no EMA of the student is kept (ema, teacher)"
        return not_read

    def refuse_keys_not_read(self) -> None:
        """A key that nothing reads set to other than its default is an error: the run would
        silently ignore it (``backbone: resnet50`` with ``model: unet`` trains the UNet)."""
        defaults = {f.name: field_default(f) for f in dataclasses.fields(self)}
        for key, why in self.keys_not_read().items():
            value = getattr(self, key)
            if value != defaults[key]:
                raise ConfigError(f"{key}: {value!r} is not read: {why}; leave it out, or at its default "
                                  f"{defaults[key]!r}")

    def check_bounds(self, bounds: dict[str, Bounds]) -> None:
        """Each key of ``bounds`` holds numbers within its :class:`Bounds`. None passes where the key
        may be null, a string where the key may be one (its own check reads it: ``stretch: percentile``)."""
        hints = typing.get_type_hints(type(self))
        for key, bound in bounds.items():
            value, allowed = getattr(self, key), typing.get_args(hints[key])
            if (value is None and type(None) in allowed) or (isinstance(value, str) and str in allowed):
                continue
            problem = bound.problem(value, nullable=type(None) in allowed)
            if problem is not None:
                raise ConfigError(f"{key}: {problem}")

    def validate_method_settings(self) -> None:
        """The parts of the method (METHOD_SETTINGS) fit together; each refusal is one line."""
        for key, choices in SETTING_CHOICES.items():
            value = getattr(self, key)
            if value is not None and value not in choices:
                raise ConfigError(f"{key}: {value!r} must be one of {', '.join(choices)} (or null: the method's)")
        if self.partner_from_batch and self.cutmix_partner not in (None, "previous"):
            raise ConfigError(f"partner_from_batch: true is cutmix_partner: previous, and cutmix_partner is "
                              f"{self.cutmix_partner!r}; give one of the two")
        if self.method_setting("teacher") == "ema" and self.ema is False:
            raise ConfigError("ema: false, but teacher: ema predicts the pseudo-labels with the EMA; "
                              "drop one of the two")
        strong, _ = self.streams
        if self.method_setting("comp_drop") and strong != 2:
            raise ConfigError(f"comp_drop: the complementary dropout pairs the two strong views of one forward, "
                              f"so it needs strong_views 2 (method {self.method} has {strong})")

    def validate(self) -> None:
        from unimatch.models import MODELS, check_model_values

        self.check_bounds(NUMBER_BOUNDS)
        if self.model not in MODELS:
            raise ConfigError(f"model: {self.model!r} is not one of {', '.join(MODELS)}")
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not one of {sorted(METHODS)}")
        self.validate_method_settings()
        self.refuse_keys_not_read()
        check_model_values(self)
        if self.unsup_loss not in ("ce", "dice"):
            raise ConfigError(f"unsup_loss: {self.unsup_loss!r} must be 'ce' or 'dice'")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"amp: {self.amp!r} must be one of none, bf16, fp16")
        if self.cpu_allocator not in ("default", "reuse"):
            raise ConfigError(f"cpu_allocator: {self.cpu_allocator!r} must be 'default' or 'reuse'")
        # checked here, not at the first evaluation after a whole epoch of training
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(f"eval_mode: {self.eval_mode!r} must be one of {', '.join(EVAL_MODES)}")
        keys = self.select_metric_keys()
        if keys is not None and self.select_metric not in keys:
            raise ConfigError(f"select_metric: {self.select_metric!r} must be one of {keys}")
        if len(self.mean) != len(self.std):
            raise ConfigError("mean and std must have the same length")
        if self.in_channels % len(self.mean) != 0:
            raise ConfigError(f"in_channels ({self.in_channels}) must be a multiple of len(mean) ({len(self.mean)})")
        if self.in_channels % self.channel_group_size != 0:
            raise ConfigError(f"in_channels ({self.in_channels}) must be a multiple of channel_group_size "
                              f"({self.channel_group_size})")
        if self.method_setting("cutmix_partner") != "loader" and self.batch_size < 2:
            key = "partner_from_batch" if self.partner_from_batch else "cutmix_partner"
            raise ConfigError(f"{key}: the partner is another image of the unlabelled batch, so "
                              f"batch_size must be at least 2, got {self.batch_size}")
        if self.sup_warmup_epochs > self.epochs:
            raise ConfigError(f"sup_warmup_epochs: must lie in [0, epochs={self.epochs}], got {self.sup_warmup_epochs}")
        validate_criterion(self.criterion)


# key -> the key whose value it had before it got a name of its own: a run saved before the split
# was trained with that key's value
SPLIT_OFF_FROM = {"class_thresh_momentum": "dist_align_momentum"}


def field_default(f: dataclasses.Field) -> Any:
    """The default of config field ``f`` (a fresh copy for a list or mapping)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def training_differences(stored: dict, config: Config) -> dict[str, tuple[Any, Any]]:
    """``key -> (stored value, value now)`` for every key of ``config`` outside its
    ``non_training_keys`` whose value differs from the one in ``stored`` (a run's saved config).

    A key ``stored`` lacks (a run saved before the key existed) counts as the value that run was
    trained with: the stored value of the key it was split off from (:data:`SPLIT_OFF_FROM`), else
    its default; stored keys ``config`` does not know are ignored (``task`` tells runs of another
    task apart). The keys of :data:`METHOD_SETTING_KEYS` are compared, and listed, as resolved by
    :func:`method_setting` (a run stored with ``weight_decay: 0.0001`` trained as one with null under
    SGD), and ``partner_from_batch`` only where the partner it picks differs.
    """
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    before_values = {}
    for f in dataclasses.fields(config):
        if f.name in stored:
            before_values[f.name] = stored[f.name]
        elif SPLIT_OFF_FROM.get(f.name) in stored:
            before_values[f.name] = stored[SPLIT_OFF_FROM[f.name]]
        else:
            before_values[f.name] = field_default(f)
    now_values = vars(config)
    same_partner = method_setting(before_values, "cutmix_partner") == method_setting(now_values, "cutmix_partner")
    differences = {}
    for f in dataclasses.fields(config):
        if f.name in config.non_training_keys or (f.name == "partner_from_batch" and same_partner):
            continue
        before, now = before_values[f.name], now_values[f.name]
        if f.name in METHOD_SETTING_KEYS:
            before, now = method_setting(before_values, f.name), method_setting(now_values, f.name)
        if plain(before) != plain(now):
            differences[f.name] = (before, now)
    return differences


CRITERION_KEYS = ("name", "kwargs")


def validate_criterion(criterion: Any) -> None:
    """``criterion: {name, kwargs}``, checked key by key like the top level: a misspelt nested key
    would otherwise be ignored (``nme`` trains with the default loss) or fail after the data is
    loaded (``threshh``). The valid ``kwargs`` are the chosen loss's keyword arguments."""
    if not isinstance(criterion, dict) or "name" not in criterion:
        raise ConfigError("criterion: expected a mapping like {name: CELoss, kwargs: {ignore_index: 255}}")
    for key in criterion:
        if key not in CRITERION_KEYS:
            raise ConfigError(f"criterion: unknown key {key!r}. Valid keys: {', '.join(CRITERION_KEYS)}")
    name = criterion["name"]
    if not isinstance(name, str):
        raise ConfigError(f"criterion.name: {name!r} is not one of {', '.join(CRITERIA)}")
    keywords = criterion_keywords(name)
    kwargs = criterion.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"criterion.kwargs: {kwargs!r} is not a mapping (e.g. {{ignore_index: 255}})")
    for key, value in kwargs.items():
        if key not in keywords:
            raise ConfigError(f"criterion.kwargs: unknown key {key!r} for {name}. "
                              f"Valid keys: {', '.join(keywords) or 'none'}")
        if not _type_matches(value, keywords[key]):
            raise ConfigError(f"criterion.kwargs: {key} = {value!r} has the wrong type "
                              f"(expected {keywords[key].__name__})")


def _type_matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is typing.Union:
        return any(_type_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, annotation)


# YAML 1.1 (PyYAML) reads ``1e-4`` and ``1e30`` as strings: it wants a dot and a signed exponent
# (``1.0e-4``). For a float key such a string is the number the user meant.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(schema: type, values: dict, source: str) -> dict:
    hints = typing.get_type_hints(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    out = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown config key {key!r}. Valid keys: {', '.join(valid)}")
        if isinstance(value, tuple):
            value = list(value)
        if hints[key] in (float, Optional[float]) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if hints[key] in (float, Optional[float]) and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            value = float(value)
        if not _type_matches(value, hints[key]):
            raise ConfigError(f"{source}: {key} = {value!r} has the wrong type (expected {hints[key]})")
        out[key] = value
    return out


def flatten_sections(schema: type, values: dict, source: str) -> dict:
    """``values`` (a config file's top level) with the keys of each section of :data:`SECTIONS`
    moved to the top level. A key under the wrong section, a key given twice (flat and in a
    section) and a section that is not a mapping are errors."""
    home = schema.key_sections()
    flat: dict = {}

    def add(key: str, value: Any, where: str) -> None:
        if key in flat:
            raise ConfigError(f"{source}: {key} is given twice (again as {where})")
        flat[key] = value

    for key, value in values.items():
        if key not in SECTIONS:
            add(key, value, key)
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section {key} must be a mapping of its keys "
                              f"({', '.join(k for k, s in home.items() if s == key)})")
        for inner, inner_value in value.items():
            check_section(home, key, inner, source)
            add(inner, inner_value, f"{key}.{inner}")
    return flat


def check_section(home: dict[str, str], section: str, key: str, source: str) -> None:
    """``key`` belongs in ``section`` (``home``: key -> section), or one error naming where it belongs."""
    if key not in home:
        raise ConfigError(f"{source}: unknown config key {section}.{key}. Valid keys in {section}: "
                          f"{', '.join(k for k, s in home.items() if s == section)}")
    if home[key] != section:
        raise ConfigError(f"{source}: {key} belongs in section {home[key]}, not {section}")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem (``mapping values are not allowed here``) on one line, without its
    several-line excerpt of the text."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    return " ".join(str(problem).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value parsed as YAML, so numbers and lists work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. lr=0.01 or criterion.name=OHEM)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: invalid YAML ({_yaml_problem(error)})") from None
    return key.strip().split("."), value


def read_config_file(path: Path, schema: type = Config) -> dict:
    """The mapping of config keys in the YAML file ``path``. A syntax error names the file, line and
    column; a file with no keys (empty, or comments only) is refused: it would silently train with
    the code's built-in defaults instead of the task's config."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({_yaml_problem(error)})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    if loaded is None or loaded == {}:
        task = next((f.default for f in dataclasses.fields(schema) if f.name == "task"), None)
        default = config_path(task, "synthetic.yaml") if task else None   # each task's Task.default_config
        usual = f"the task's default {default}" if default is not None and default.is_file() else "the defaults"
        raise ConfigError(f"{path} is empty (no config keys: nothing, comments or {{}}): give a config file "
                          f"with keys, or leave out --config to use {usual}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), schema: type = Config,
                **values: Any) -> Config:
    """Read ``path`` (YAML), apply ``values`` (e.g. from command-line flags) then dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data.update(_coerce(schema, flatten_sections(schema, read_config_file(path, schema), str(path)), str(path)))
    data.update(_coerce(schema, {k: v for k, v in values.items() if v is not None}, "command line"))
    given = {k for k, v in values.items() if v is not None}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] in SECTIONS and len(keys) > 1:
            check_section(schema.key_sections(), keys[0], keys[1], f"override {text!r}")
            keys = keys[1:]
        given.add(keys[0])
        if len(keys) == 1:
            data.update(_coerce(schema, {keys[0]: value}, f"override {text!r}"))
            continue
        root = keys[0]
        default = next((f for f in dataclasses.fields(schema) if f.name == root), None)
        if default is None:
            _coerce(schema, {root: None}, f"override {text!r}")
        current = data.get(root)
        if current is None:
            current = field_default(default)
            if current is None:
                current = {}
        if not isinstance(current, dict):
            raise ConfigError(f"override {text!r}: {root} is not a mapping")
        node = current
        for k in keys[1:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a mapping")
        node[keys[-1]] = value
        data.update(_coerce(schema, {root: current}, f"override {text!r}"))
    fit_warmup_to_epochs(data, given)
    config = schema(**data)
    config.validate()
    return config


def fit_warmup_to_epochs(data: dict, given: set) -> None:
    """A schedule given on the command line (``--epochs``, ``epochs=``) that a warm-up from the config
    file (``sup_warmup_epochs``, e.g. the demos' 4 of 30) would fill leaves its last epoch to the
    method: the warm-up becomes ``epochs - 1`` (said in one log line). Given on the command line
    too, the warm-up is kept (and validated as it is)."""
    epochs, warmup = data.get("epochs"), data.get("sup_warmup_epochs")
    if ("epochs" not in given or "sup_warmup_epochs" in given or not isinstance(epochs, int)
            or not isinstance(warmup, int) or not 1 <= epochs <= warmup):
        return
    data["sup_warmup_epochs"] = epochs - 1
    logging.getLogger("unimatch").warning(
        f"sup_warmup_epochs {warmup} (from the config) is not less than the {epochs} epoch(s) given on the "
        f"command line: the warm-up is {epochs - 1} epoch(s), so the last one trains the method")


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically (a resumed run reads it back)."""
    from unimatch import atomic

    atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
