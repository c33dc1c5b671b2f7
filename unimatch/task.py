"""The task contract: what one domain (2-D images, bi-temporal pairs, 3-D volumes, yours) implements.

The core's commands (:func:`unimatch.cli.train_main`, :func:`~unimatch.cli.evaluate_main`,
:func:`~unimatch.cli.predict_main`) drive a :class:`Task`; the core itself never names a dataset.
A task supplies its config class (defaults, extra fields, valid ``select_metric`` keys), where its
data is (the built-in synthetic set or ``--data-root``), its training sets (decode + weak
augmentation on :class:`unimatch.data.WeakViewDataset`), its evaluation protocol, and how
predictions are read and written. Everything else (distributed set-up, the step, the loop,
checkpoints, the :class:`~unimatch.inference.Predictor`, config loading, output guards, JSON/CSV
writing) is shared.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn
from torch.utils.data import Dataset

from unimatch.config import Config
from unimatch.distributed import DistContext
from unimatch.inference import Predictor
from unimatch.report import EvalResult
from unimatch.splits import first_field


@dataclass
class EvaluationReport:
    """One evaluation as the ``evaluate`` command shows and writes it."""
    title: str                       # the first printed line: what was evaluated on what
    table: str                       # the human-readable scores
    metrics: dict                    # flat floats
    record: dict                     # the ``--json`` file's content
    rows: list = field(default_factory=list)   # the ``--csv`` file's rows (dicts with the same keys)
    result: Any = None               # what ``evaluate.main`` returns (default: ``metrics``)


class Task:
    """Base class of a task adapter; subclasses set the attributes and implement the methods.

    ``inference_config`` and the command drivers rely only on what is declared here.
    """

    name: str = ""
    config_class: type = Config
    default_config: Path | None = None   # the built-in synthetic config (no --config, no stored config)
    run_files: tuple[str, ...] = ()      # files the task writes into the run folder beyond the core's
                                         # (removed with them when a run fails before it trained)

    def default_config_for(self, method: str | None) -> Path | None:
        """The built-in synthetic config a train command without ``--config`` uses: UniMatch V2
        needs the DPT (``model(x, comp_drop=True)``), so ``--method unimatch_v2`` takes the task's
        V2 demo config, ``<default stem>_v2.yaml`` beside the default, where the task has one."""
        if method == "unimatch_v2" and self.default_config is not None:
            v2 = self.default_config.with_name(f"{self.default_config.stem}_v2.yaml")
            if v2.is_file():
                return v2
        return self.default_config

    def command(self, entry: str, task: str | None = None) -> str:
        """The shell command of entry point ``entry`` (train, evaluate, predict): ``python -m
        <package>.<entry>``, the package being the one that defines this task's class. ``task``
        names another task (whose checkpoint or run folder was given): its package is taken to be
        this one's sibling of that name, as the task packages sit side by side."""
        package = type(self).__module__.rpartition(".")[0]
        if task is not None and task != self.name:
            parent = package.rpartition(".")[0]
            package = f"{parent}.{task}" if parent else task
        return f"python -m {package}.{entry}"

    # ---- data and training ---------------------------------------------------------------
    def resolve_data(self, cfg: Config, ctx: DistContext | None = None) -> Config:
        """``cfg`` with its data paths filled in: the synthetic set (written once, by rank 0, see
        :func:`unimatch.distributed.main_rank_first`) when no ``--data-root`` is given."""
        raise NotImplementedError

    def split_key(self, cfg: Config) -> Callable[[str], str]:
        """What names the sample of a split-list line, for the overlap check of
        :func:`unimatch.splits.check_disjoint` (default: its first field)."""
        return first_field

    def training_sets(self, cfg: Config) -> tuple[Dataset, Dataset | None]:
        """(labelled, unlabelled or None) following the data contract (docs/architecture.md)."""
        raise NotImplementedError

    def val_evaluator(self, cfg: Config, ctx: DistContext) -> Callable[[nn.Module], EvalResult]:
        """The evaluation run during training; its metrics must hold ``cfg.select_metric``."""
        raise NotImplementedError

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Task flags of ``train`` beyond the shared ones."""

    def train_values(self, args: argparse.Namespace) -> dict:
        """Config values taken from the task's train flags."""
        return {}

    # ---- evaluate ------------------------------------------------------------------------
    def add_evaluate_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Task flags of ``evaluate`` beyond the shared ones."""

    def evaluate(self, predictor: Predictor, cfg: Config, ctx: DistContext,
                 args: argparse.Namespace) -> EvaluationReport:
        """Score ``args.split`` (``--save-predictions`` written by every rank for its shard)."""
        raise NotImplementedError

    # ---- predict -------------------------------------------------------------------------
    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The inputs and outputs of ``predict``."""
        raise NotImplementedError

    def predict_values(self, args: argparse.Namespace) -> dict:
        """Config values taken from the task's predict flags."""
        return {}

    def check_predict_outputs(self, cfg: Config, args: argparse.Namespace) -> Any:
        """Read and check the inputs and guard the outputs (:func:`unimatch.paths.guard_outputs`);
        runs before the model is loaded. Returns what :meth:`predict` needs."""
        return None

    def predict(self, predictor: Predictor, cfg: Config, args: argparse.Namespace, plan: Any):
        """Predict every input of ``plan`` and write the outputs; returns the written path(s)."""
        raise NotImplementedError
