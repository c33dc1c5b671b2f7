"""What every 2-D task shares: the data root and its split lists, the validation and evaluation
loaders, scoring over one confusion matrix, and the ``evaluate`` report.

A 2-D task (photographs, bi-temporal pairs, ...) extends :class:`SegmentationTask2D` and supplies
only what depends on its files: where its built-in set is written, where a root keeps its split
lists, its datasets, its scores and how a predicted mask is written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from torch.utils.data import DataLoader, Dataset

from unimatch.config import Config
from unimatch.data import sharded_eval_loader
from unimatch.distributed import DistContext, main_rank_first
from unimatch.errors import ConfigError, DataError
from unimatch.inference import Predictor, evaluate_segmentation
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.paths import find_split_file
from unimatch.pretrained import resolve_pretrained
from unimatch.report import EvalResult
from unimatch.splits import SPLIT_KINDS
from unimatch.task import EvaluationReport, Task

EVALUATION_SPLITS = ("val", "test")   # the names ``evaluate --split`` takes besides a file


class SegmentationTask2D(Task):
    """:class:`~unimatch.task.Task` for images scored pixel by pixel through one confusion matrix."""

    item_unit = "images"        # what one evaluation item is, in titles and records
    data_root_holds = ""        # what --data-root must hold (said when a real dataset lacks one)

    # ---- what a 2-D task supplies ----------------------------------------------------------
    def synthetic_root(self, cfg: Config) -> Path:
        """The built-in set that ``cfg`` describes, written once."""
        raise NotImplementedError

    def split_folders(self, root: Path, kind: str, synthetic: bool) -> list[Path]:
        """Where ``<kind>.txt`` is looked for when no list is named, in order."""
        return [root / "splits", root]

    def labeled_set(self, cfg: Config, split_file: str) -> Dataset:
        raise NotImplementedError

    def unlabeled_set(self, cfg: Config, split_file: str) -> Dataset:
        raise NotImplementedError

    def eval_set(self, cfg: Config, split_file: str) -> Dataset:
        """``(image, mask, sample id)`` items at full resolution."""
        raise NotImplementedError

    def eval_batch_size(self, cfg: Config) -> int:
        """1 where images differ in size."""
        return 1

    def scores(self, confusion: ConfusionMatrix, cfg: Config, column: str) -> EvalResult:
        """Metrics and table of one confusion matrix; ``column`` heads the scores where the table
        has one column of them."""
        raise NotImplementedError

    def check_eval_inputs(self, dataset: Dataset, cfg: Config, mode: str, saving: bool) -> None:
        """Decode what must be decoded before the first prediction is written."""

    def mask_writer(self, cfg: Config, directory: Path, overwrite: bool) -> Callable:
        """``write(sample_id, pred, mask)`` of one predicted mask into ``directory``."""
        raise NotImplementedError

    # ---- data ------------------------------------------------------------------------------
    def resolve_data(self, cfg: Config, ctx: DistContext | None = None) -> Config:
        """The data root (the built-in set, written once by rank 0, when none is given), each
        split list (a named one found by :func:`unimatch.paths.find_split_file`, else ``<kind>.txt``
        in :meth:`split_folders`, else None) and, for ``pretrained: synthetic``, the built-in
        backbone file (:mod:`unimatch.pretrained`)."""
        changes = {}
        synthetic = not cfg.data_root_given
        if synthetic:
            if cfg.dataset != "synthetic":
                raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root ({self.data_root_holds})")
            changes["data_root"] = str(main_rank_first(lambda: self.synthetic_root(cfg), ctx))
        root = Path(changes.get("data_root", cfg.data_root))
        for kind in SPLIT_KINDS:
            key = f"{kind}_split"
            if hasattr(cfg, key):
                given = getattr(cfg, key)
                changes[key] = find_split_file(given, root) if given else self.default_split(root, kind, synthetic)
        changes.update(resolve_pretrained(cfg, ctx))
        return dataclasses.replace(cfg, **changes)

    def default_split(self, root: Path, kind: str, synthetic: bool) -> str | None:
        return next((str(folder / f"{kind}.txt") for folder in self.split_folders(root, kind, synthetic)
                     if (folder / f"{kind}.txt").is_file()), None)

    def split_file(self, cfg: Config, split: str | None) -> str:
        """The list a split names: ``labeled``, ``unlabeled``, ``val``, ``test`` (the config's
        list, else ``<kind>.txt`` under the data root) or a file's path; default ``val``."""
        split = split or "val"
        if split in SPLIT_KINDS:
            path = getattr(cfg, f"{split}_split", None) or \
                self.default_split(Path(cfg.data_root), split, synthetic=False)
            if path is None:
                looked = " or ".join(str(folder / f"{split}.txt")
                                     for folder in self.split_folders(Path(cfg.data_root), split, synthetic=False))
                flag = f"--{split}-split FILE" if split not in EVALUATION_SPLITS else "--split FILE"
                raise ConfigError(f"no {split} split: there is no {looked}; give {flag}")
        else:
            path = find_split_file(split, cfg.data_root)
        if not Path(path).exists():   # a list file, or a folder a task reads as one split
            where = "" if Path(path).is_absolute() else f" (neither in the working folder nor under {cfg.data_root})"
            what = f"{split} split file" if split in SPLIT_KINDS else "split file"
            fix = "check its path" if split in SPLIT_KINDS else "give val, test or the path of a split file"
            raise DataError(f"{what} {path} does not exist{where}; {fix}")
        return str(path)

    def training_sets(self, cfg: Config):
        """(labelled, unlabelled or None). ``supervised`` still reads the unlabelled list when there
        is one, so its epochs have as many iterations as the semi-supervised runs."""
        labeled = self.labeled_set(cfg, self.split_file(cfg, "labeled"))
        if cfg.unlabeled_split is None and cfg.method == "supervised":
            return labeled, None
        return labeled, self.unlabeled_set(cfg, self.split_file(cfg, "unlabeled"))

    # ---- evaluation ------------------------------------------------------------------------
    def eval_loader(self, cfg: Config, ctx: DistContext, split_file: str) -> DataLoader:
        return sharded_eval_loader(self.eval_set(cfg, split_file), cfg, ctx, self.eval_batch_size(cfg))

    def evaluate_model(self, predictor: Predictor, cfg: Config, loader: DataLoader, mode: str | None = None,
                       on_prediction=None, column: str = "score %") -> EvalResult:
        """Scores over ``loader``, the confusion matrix summed over every rank."""
        confusion = evaluate_segmentation(predictor, loader, cfg.nclass, mode or cfg.eval_mode, cfg.effective_eval_window,
                                          on_prediction)
        return self.scores(confusion, cfg, column)

    def val_evaluator(self, cfg: Config, ctx: DistContext):
        loader = self.eval_loader(cfg, ctx, self.split_file(cfg, "val"))
        return lambda model: self.evaluate_model(Predictor(model, cfg, ctx.device), cfg, loader, column="val %")

    def add_evaluate_arguments(self, parser) -> None:
        from unimatch.cli import add_mode_argument

        add_mode_argument(parser)

    def evaluate(self, predictor: Predictor, cfg: Config, ctx: DistContext, args) -> EvaluationReport:
        from unimatch.cli import prediction_folder

        split = args.split or "val"
        split_file = self.split_file(cfg, split)
        loader = self.eval_loader(cfg, ctx, split_file)
        mode = args.mode or cfg.eval_mode
        self.check_eval_inputs(loader.dataset, cfg, mode, saving=args.save_predictions is not None)
        directory = prediction_folder(args.save_predictions, args.overwrite, ctx)
        writer = None if directory is None else self.mask_writer(cfg, directory, args.overwrite)
        column = f"{split} %" if split in EVALUATION_SPLITS else "score %"
        result = self.evaluate_model(predictor, cfg, loader, mode, writer, column=column)
        count = len(loader.dataset)
        summary = {"split": split, "split_file": split_file, self.item_unit: count, "mode": mode}
        return EvaluationReport(f"{args.checkpoint} on {split_file} ({count} {self.item_unit}, mode {mode})",
                                result.table, result.metrics, {**summary, "metrics": result.metrics, **result.extra},
                                [{**summary, **result.metrics}])
