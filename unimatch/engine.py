"""The training loop: optimiser, poly LR, AMP, checkpoints + resume, logging, evaluation schedule.

It drives :class:`unimatch.method.UniMatchStep` and knows nothing of what a sample contains: the
task hands it datasets that follow the data contract (docs/architecture.md) and an
``evaluate(model) -> EvalResult`` callable.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from unimatch import precision
from unimatch.checkpoint import load_checkpoint, save_checkpoint
from unimatch.config import Config, save_config
from unimatch.data import RepeatDataset, reseed_dataset, seed_everything, seed_worker
from unimatch.distributed import DistContext, all_reduce_mean, barrier, broadcast_buffers, unwrap
from unimatch.ema import ModelEMA
from unimatch.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from unimatch.finite import HINT, NonFiniteLossGuard, nonfinite_tensors
from unimatch.forecast import DurationForecast
from unimatch.health import PseudoLabelHealth, describe
from unimatch.losses import build_criterion
from unimatch.method import StepSettings, UniMatchStep
from unimatch.models.architecture import mismatch_causes
from unimatch.models.backbones import strip_wrappers
from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
from unimatch.report import EvalResult, append_json_line, read_json_lines, write_json_lines
from unimatch.run_folder import prepare_run_dir

log = logging.getLogger("unimatch")


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = 0.9) -> float:
    """``base_lr * (1 - it / total) ** power``, the paper's schedule."""
    return base_lr * (1 - iteration / total_iterations) ** power


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD (momentum ``momentum``), or AdamW with betas (0.9, 0.999) as the official V2 scripts
    (``optimizer``), with two groups: backbone at ``lr``, the rest at ``lr * lr_multi`` (one group if
    the model has no backbone, like the medical UNet); weight decay ``weight_decay``, null being the
    optimizer's (1e-4 for SGD, 0.01 for AdamW)."""
    groups_fn = getattr(unwrap(model), "param_groups", None)
    if groups_fn is None:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr, "lr_scale": 1.0}]
    else:
        backbone, head = groups_fn()
        groups = [{"params": backbone, "lr": cfg.lr, "lr_scale": 1.0}]
        if head:
            groups.append({"params": head, "lr": cfg.lr * cfg.lr_multi, "lr_scale": cfg.lr_multi})
    weight_decay = cfg.method_setting("weight_decay")
    if cfg.method_setting("optimizer") == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=weight_decay)


def numpy_rng_state() -> dict:
    """NumPy's global random state in plain types (a checkpoint holds no NumPy objects)."""
    state = np.random.get_state(legacy=False)
    return {"bit_generator": state["bit_generator"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
            "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def restore_numpy_rng_state(state) -> None:
    """Inverse of :func:`numpy_rng_state`; also takes the legacy tuple that earlier checkpoints hold."""
    if isinstance(state, dict):
        state = (state["bit_generator"], state["key"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                 state["gauss"])
    np.random.set_state(state)


def rng_state(perturbation: StrongPerturbation) -> dict:
    state = {"python": random.getstate(), "numpy": numpy_rng_state(), "torch": torch.get_rng_state(),
             "perturbation": perturbation.generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, perturbation: StrongPerturbation) -> None:
    random.setstate(state["python"])
    restore_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    perturbation.generator.set_state(state["perturbation"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True,
                       config_source: str | None = None) -> dict:
    """Load ``{'model': state_dict}`` (ours, or the official one with ``module.`` keys) into ``model``.

    A key mismatch is one :class:`CheckpointError` that names the likely cause in config keys first
    (:func:`unimatch.models.architecture.mismatch_causes`: backbone depth, classes, input
    channels, widths), then lists the missing, unexpected and misshapen keys; ``config_source``
    (where the model's config came from) is named there, since that is what to change.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict")
    state_dict = strip_wrappers(checkpoint)
    target = unwrap(model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in state_dict if k in expected and hasattr(state_dict[k], "shape")
             and state_dict[k].shape != expected[k].shape]
    if strict and (missing or unexpected or shape):
        def listing(keys):
            return f"{keys[:12]}{' ... (%d in all)' % len(keys) if len(keys) > 12 else ''}"
        causes = mismatch_causes(state_dict, expected)
        cause = "; ".join(causes) + ". " if causes else "Check --config (model, backbone, nclass). "
        config = f"the config {config_source}" if config_source else "the config"
        raise CheckpointError(f"{path} does not fit the model built from {config} ({type(target).__name__}): "
                              f"{cause}Missing: {listing(missing)}; unexpected: {listing(unexpected)}; "
                              f"shape mismatch: {listing(shape)}")
    target.load_state_dict(state_dict, strict=strict)
    return checkpoint


def autocast_for(cfg: Config, device: torch.device):
    """The autocast context of ``cfg.amp`` on ``device`` (see :mod:`unimatch.precision`)."""
    return precision.autocast_for(cfg.amp, device)


def setup_logging(save_dir: Path | None, is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if log.handlers:
        for handler in list(log.handlers):
            log.removeHandler(handler)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(console)
    if save_dir is not None and is_main:
        file_handler = logging.FileHandler(save_dir / "train.log")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        log.addHandler(file_handler)
    log.propagate = False


class Trainer:
    """Runs ``cfg.epochs`` epochs of the step; one epoch is one pass over the unlabelled set."""

    def __init__(self, cfg: Config, model: nn.Module, labeled_set: Dataset, unlabeled_set: Dataset | None,
                 evaluate: Callable[[nn.Module], EvalResult], ctx: DistContext, save_dir: str | Path,
                 progress: bool = True):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.labeled_set, self.unlabeled_set, self.evaluate = labeled_set, unlabeled_set, evaluate
        self.save_dir = Path(save_dir)
        self.progress = progress and ctx.is_main
        self.settings = StepSettings.from_config(cfg)
        if len(labeled_set) == 0:
            raise DataError("the labelled set is empty; check the labelled split (--labeled-split, or cases=N)")
        if self.settings.supervised_only:
            self.unlabeled_needed = False
        else:
            if unlabeled_set is None or len(unlabeled_set) == 0:
                raise ConfigError(f"method {cfg.method!r} needs an unlabelled set, and none (or an empty one) was "
                                  f"given; give --unlabeled-split, or train with --method supervised")
            self.unlabeled_needed = True
        if ctx.is_main:
            prepare_run_dir(self.save_dir)
        barrier()
        setup_logging(self.save_dir, ctx.is_main)
        self.optimizer = build_optimizer(model, cfg)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + ctx.rank)
        self.perturbation = StrongPerturbation(PerturbationSettings.from_config(cfg), generator)
        self.normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
        criterion = build_criterion(cfg.criterion, cfg.nclass)
        self.health = None if self.settings.supervised_only else PseudoLabelHealth(cfg.nclass, ctx.device)
        # the EMA of the student (unimatch/ema.py): V2's teacher, evaluated beside the student
        self.ema = ModelEMA(model, cfg.ema_ratio) if cfg.method_setting("ema") else None
        self.step = UniMatchStep(model, self.settings, criterion.to(ctx.device), self.perturbation,
                                 self.normalizer, cfg.nclass, health=self.health,
                                 teacher=self.ema.model if self.ema is not None else None)
        # running state of the opt-in pseudo-label extensions, checkpointed for an exact resume
        self.extensions = {"dist_align": self.step.align, "class_thresh": self.step.class_thresh}
        self.autocast = autocast_for(cfg, ctx.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and cfg.amp == "fp16")
        self.start_epoch, self.best_score, self.best_metrics = 0, -math.inf, {}
        # the best select_metric of each set of weights evaluated (student, ema) so far
        self.best_by_weights = {"student": -math.inf, **({"ema": -math.inf} if self.ema is not None else {})}
        self.writer = None
        # where the loop is (epoch, iterations done in it, iterations per epoch), for the line an
        # interrupted run prints
        self.position: tuple[int, int, int] | None = None

    # ---- data ----------------------------------------------------------------------------
    def epoch_length(self) -> int:
        """Iterations per epoch: the unlabelled set (or, without one, the labelled set) per rank."""
        which = "unlabelled" if self.unlabeled_set is not None else "labelled"
        n = len(self.unlabeled_set) if self.unlabeled_set is not None else len(self.labeled_set)
        per_rank = n // self.ctx.world_size
        iterations = per_rank // self.cfg.batch_size
        if iterations == 0:
            raise DataError(f"the {which} set of {n} samples is smaller than one batch of {self.cfg.batch_size} "
                            f"per process x {self.ctx.world_size} process(es); lower batch_size (--batch-size)")
        return iterations

    def loader(self, dataset: Dataset, epoch: int, stream: int) -> DataLoader:
        sampler = DistributedSampler(dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True,
                                     seed=self.cfg.seed + 7919 * stream, drop_last=True)
        sampler.set_epoch(epoch)
        loader_seed = (self.cfg.seed * 100003 + epoch * 1009 + stream * 101 + self.ctx.rank) % 2 ** 31
        generator = torch.Generator().manual_seed(loader_seed)
        if self.cfg.num_workers == 0:
            reseed_dataset(dataset, loader_seed)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.cfg.num_workers, pin_memory=self.ctx.device.type == "cuda",
                          worker_init_fn=seed_worker, generator=generator,
                          persistent_workers=False)

    def to_device(self, batch):
        return [precision.to_memory_format(t.to(self.ctx.device, non_blocking=True), self.cfg.channels_last)
                if torch.is_tensor(t) else t for t in batch]

    def train_iteration(self, batches, iteration: int | None = None, guard: NonFiniteLossGuard | None = None,
                        warmup: bool = False) -> dict:
        """One optimisation step on device batches; returns the step's stats (device tensors).

        ``iteration`` (0-based, global) sets the EMA's ratio (None counts as 0: the EMA becomes the
        student); ``guard`` sees the loss before ``backward`` (see
        :class:`unimatch.finite.NonFiniteLossGuard`); ``warmup`` trains the labelled term alone
        (``sup_warmup_epochs``)."""
        step = self.step.labelled_term if warmup else self.step
        loss, stats = step(*batches, autocast=self.autocast)
        if guard is not None:
            guard.observe(iteration, loss, stats)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, 0 if iteration is None else iteration)
        return stats

    # ---- checkpoints ---------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": epoch, "best_score": self.best_score,
                 "best_metrics": self.best_metrics, "best_by_weights": dict(self.best_by_weights),
                 "rng": self.gather_rng_states(),
                 "extensions": {k: e.state_dict() for k, e in self.extensions.items() if e is not None},
                 "config": self.cfg.to_dict()}
        if self.ema is not None:
            state["model_ema"] = self.ema.state_dict()
        return state

    def gather_rng_states(self) -> list:
        """Every rank's RNG states (rank order), so each rank resumes exactly its own streams."""
        state = rng_state(self.perturbation)
        if not self.ctx.distributed:
            return [state]
        import torch.distributed as dist
        states = [None] * self.ctx.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self, name: str, state: dict) -> None:
        """Write ``state`` atomically; weights holding NaN/Inf are refused (on every rank, so all
        stop) rather than written over a good checkpoint."""
        bad = nonfinite_tensors(state["model"]) + nonfinite_tensors(state.get("model_ema", {}))
        if bad:
            raise TrainingDiverged(f"after epoch {state['epoch'] + 1} the model holds NaN/Inf ({len(bad)} tensor(s), "
                                   f"first {bad[0]}); {self.save_dir / name} was not overwritten. Hint: {HINT}")
        if self.ctx.is_main:
            save_checkpoint(state, self.save_dir / name)

    def resume(self) -> None:
        path = self.save_dir / "latest.pth"
        if not path.is_file():
            return
        checkpoint = load_model_weights(self.model, path)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.best_score = checkpoint["best_score"]
        self.best_metrics = checkpoint.get("best_metrics", {})
        # a checkpoint from before the EMA holds the student's best alone, as best_score
        stored_bests = checkpoint.get("best_by_weights", {"student": self.best_score})
        self.best_by_weights.update({k: v for k, v in stored_bests.items() if k in self.best_by_weights})
        if self.ema is not None:
            if "model_ema" in checkpoint:
                self.ema.load_state_dict(checkpoint["model_ema"])
            else:
                self.ema.load_state_dict(unwrap(self.model).state_dict())
                log.warning(f"{path} holds no EMA (model_ema): the EMA starts again from the student's weights")
        for name, state in checkpoint.get("extensions", {}).items():
            if self.extensions.get(name) is not None:
                self.extensions[name].load_state_dict(state)
        states = checkpoint["rng"]
        if len(states) == self.ctx.world_size:
            restore_rng_state(states[self.ctx.rank], self.perturbation)
        else:
            log.warning(f"{path} was saved by {len(states)} process(es), this run has {self.ctx.world_size}: "
                        f"random streams are re-derived from the seed, so the run will not repeat bit for bit")
            seed_everything(self.cfg.seed + 1000 * self.start_epoch + self.ctx.rank)
            self.perturbation.generator.manual_seed(self.cfg.seed * 1000 + 17 + self.ctx.rank + self.start_epoch)
        log.info(f"resumed from {path}: continuing at epoch {self.start_epoch + 1}/{self.cfg.epochs}, "
                 f"best {self.cfg.select_metric} so far {self.best_score:.4f}")

    # ---- loop ----------------------------------------------------------------------------
    def record_stats(self, pending: list, sums: dict) -> dict:
        """Read the stats of ``pending`` (iteration, lr, stats) iterations with one device sync,
        add them to ``sums``, write them to TensorBoard; returns the last iteration's values."""
        keys = list(pending[0][2])
        rows = torch.stack([torch.stack([stats[k].float() for k in keys]) for _, _, stats in pending]).tolist()
        for (iteration, lr, _), row in zip(pending, rows):
            for k, v in zip(keys, row):
                sums[k] = sums.get(k, 0.0) + v
                if self.writer is not None:
                    self.writer.add_scalar(f"train/{k}", v, iteration)
            if self.writer is not None:
                self.writer.add_scalar("train/lr", lr, iteration)
        return dict(zip(keys, rows[-1]))

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            if self.writer is not None:
                self.writer.close()
            for handler in list(log.handlers):
                if isinstance(handler, logging.FileHandler):
                    handler.close()
                    log.removeHandler(handler)

    def open_records(self, iters_per_epoch: int) -> None:
        """After :meth:`resume`: config.yaml describes the weights beside it, and the records of
        epochs after the last checkpoint (a run killed between its records and its checkpoint)
        are dropped, so a resumed run never lists an epoch twice."""
        if not self.ctx.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        save_config(self.cfg, self.save_dir / "config.yaml")
        metrics = self.save_dir / "metrics.jsonl"
        records = read_json_lines(metrics)
        kept = [record for record in records if record.get("epoch", 0) <= self.start_epoch]
        if len(kept) != len(records):
            write_json_lines(metrics, kept)
        self.writer = SummaryWriter(str(self.save_dir / "tensorboard"), purge_step=self.start_epoch * iters_per_epoch)

    def interruption_note(self) -> str:
        """Where the run stopped and what the same command will do, for an interrupted run's one line."""
        where = "before the first iteration"
        if self.position is not None:
            epoch, done, per_epoch = self.position
            where = f"in epoch {epoch + 1}/{self.cfg.epochs} after {done} of its {per_epoch} iterations"
        latest = self.save_dir / "latest.pth"   # read from the disk: the signal may have come mid-save
        if not latest.is_file():
            return f"{where}; no checkpoint was saved yet, so the same command starts the run again"
        saved = load_checkpoint(latest, mmap=True)["epoch"]
        return f"{where}; the same command resumes from {latest} (saved at the end of epoch {saved + 1})"

    def _fit(self) -> dict:
        self.resume()
        iters_per_epoch = self.epoch_length()
        self.open_records(iters_per_epoch)
        labeled = (RepeatDataset(self.labeled_set, len(self.unlabeled_set))
                   if self.unlabeled_set is not None else self.labeled_set)
        guard = NonFiniteLossGuard(self.ctx.device, iters_per_epoch, self.ctx.distributed)
        self.log_plan(iters_per_epoch)
        # the forecast times the method's iterations: the labelled-only warm-up ones are several times faster
        method_epochs = range(max(self.start_epoch, self.warmup_epochs()), self.cfg.epochs)
        self.forecast = DurationForecast(
            len(method_epochs) * iters_per_epoch, sum(1 for e in method_epochs if self.evaluates_after(e)),
            synchronize=(lambda: torch.cuda.synchronize(self.ctx.device)) if self.ctx.device.type == "cuda"
            else (lambda: None))
        for epoch in range(self.start_epoch, self.cfg.epochs):
            warmup = epoch < self.warmup_epochs()
            record = self.train_epoch(epoch, labeled, iters_per_epoch, guard, warmup)
            if self.health is not None and not warmup:
                self.record_health(epoch, record)
            broadcast_buffers(self.model)
            if self.ema is not None:
                broadcast_buffers(self.ema.model)
            if self.evaluates_after(epoch):
                started = time.perf_counter()
                self.evaluate_epoch(epoch, record)
                self.log_forecast(self.forecast.evaluation_done(time.perf_counter() - started))
            self.end_epoch(epoch, iters_per_epoch, record)
        return {"best_score": self.best_score, "best_metrics": self.best_metrics}

    def warmup_epochs(self) -> int:
        """The first epochs, which train the labelled term alone (``sup_warmup_epochs``, when the method has one)."""
        return self.cfg.sup_warmup_epochs if self.unlabeled_needed else 0

    def evaluates_after(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def log_forecast(self, line: str | None) -> None:
        """The duration forecast of :mod:`unimatch.forecast` (rank 0 logs; the others log warnings only)."""
        if line is not None:
            log.info(line)

    def log_plan(self, iters_per_epoch: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        s = self.settings
        log.info(f"method {cfg.method}: {s.strong_views} strong stream(s)"
                 f"{' with complementary dropout' if s.comp_drop else ''}, {s.fp_streams} feature stream(s), "
                 f"teacher {s.teacher}, CutMix partner {s.cutmix_partner}"
                 f"{', EMA evaluated too' if self.ema is not None else ''}, "
                 f"{cfg.method_setting('optimizer')}; {len(self.labeled_set)} labelled / "
                 f"{len(self.unlabeled_set) if self.unlabeled_set else 0} unlabelled samples; {iters_per_epoch} "
                 f"iterations x {cfg.epochs} epochs on {ctx.world_size} process(es), device {ctx.device}"
                 + (f"; the first {cfg.sup_warmup_epochs} epoch(s) labelled term only (sup_warmup_epochs)"
                    if cfg.sup_warmup_epochs and self.unlabeled_needed else ""))

    def epoch_streams(self, labeled: Dataset, epoch: int, warmup: bool) -> list:
        """Iterators over the epoch's batches: labelled, then (unless ``warmup``) unlabelled and CutMix partners."""
        streams = [iter(self.loader(labeled, epoch, 0))]
        if self.unlabeled_needed and not warmup:
            streams.append(iter(self.loader(self.unlabeled_set, epoch, 1)))
            if not self.settings.partner_from_batch:  # the CutMix partners: a second pass over the unlabelled set
                streams.append(iter(self.loader(self.unlabeled_set, epoch, 2)))
        return streams

    def set_lr(self, iteration: int, total_iterations: int) -> float:
        """The poly learning rate of ``iteration`` on every parameter group (times its ``lr_scale``)."""
        lr = poly_lr(self.cfg.lr, iteration, total_iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        return lr

    def train_epoch(self, epoch: int, labeled: Dataset, iters_per_epoch: int, guard: NonFiniteLossGuard,
                    warmup: bool) -> dict:
        """One epoch's iterations; returns its record: epoch, iterations, s/iter and the mean stats over ranks."""
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        streams = self.epoch_streams(labeled, epoch, warmup)
        sums: dict[str, float] = {}
        # the step's stats stay on the device; on CUDA they are read (one sync) only every
        # log_every iterations, so the host never waits for the GPU inside the loop
        pending: list = []
        flush_every = 1 if ctx.device.type != "cuda" else (cfg.log_every or iters_per_epoch)
        bar = tqdm(range(iters_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   dynamic_ncols=True, leave=False, file=sys.stderr)
        start = time.perf_counter()
        for i in bar:
            self.position = (epoch, i, iters_per_epoch)
            iteration = epoch * iters_per_epoch + i
            lr = self.set_lr(iteration, iters_per_epoch * cfg.epochs)
            batches = [self.to_device(next(s)) for s in streams]
            pending.append((iteration, lr, self.train_iteration(batches, iteration, guard, warmup)))
            if not warmup:
                self.log_forecast(self.forecast.iteration_done())
            if len(pending) >= flush_every or i + 1 == iters_per_epoch:
                stats = self.record_stats(pending, sums)
                pending = []
                if self.progress:
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", mask=f"{stats['mask_ratio']:.2f}")
            if cfg.log_every and (i + 1) % cfg.log_every == 0:
                guard.check()
                log.info(f"epoch {epoch + 1} iter {i + 1}/{iters_per_epoch} lr {lr:.5f} " +
                         " ".join(f"{k} {v / (i + 1):.4f}" for k, v in sums.items()))
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - start
        guard.check()
        bar.close()
        record = {"epoch": epoch + 1, "iterations": (epoch + 1) * iters_per_epoch,
                  "sec_per_iter": seconds / iters_per_epoch}
        record.update({k: all_reduce_mean(v / iters_per_epoch, ctx.device) for k, v in sums.items()})
        return record

    def record_health(self, epoch: int, record: dict) -> None:
        """The epoch's pseudo-label health (:mod:`unimatch.health`) into ``record``, the log and TensorBoard."""
        health = self.health.summary(self.cfg.class_names)
        record.update(health)
        log.info(f"epoch {epoch + 1} pseudo-labels: {describe(health)}")
        if self.writer is not None:
            for k, v in health.items():
                if not math.isnan(v):
                    self.writer.add_scalar(k, v, epoch + 1)

    def evaluate_epoch(self, epoch: int, record: dict) -> None:
        """Evaluate the student and, when there is one, the EMA; add the scores to ``record`` (the
        EMA's as ``ema/<metric>``). When the better of the two beats the best ``select_metric`` so
        far, its weights become best.pth's ``model`` (``weights`` says which; the student on a tie)."""
        cfg = self.cfg
        models = {"student": self.model, **({"ema": self.ema.model} if self.ema is not None else {})}
        scores, metrics = {}, {}
        for weights, model in models.items():
            result = self.evaluate(model)
            prefix = "" if weights == "student" else f"{weights}/"
            record.update({f"{prefix}{k}": v for k, v in result.metrics.items()})
            metrics[weights], scores[weights] = result.metrics, result.metrics[cfg.select_metric]
            self.best_by_weights[weights] = max(self.best_by_weights[weights], scores[weights])
            if result.table:
                log.info(f"epoch {epoch + 1} evaluation{' of the EMA' if prefix else ''}\n{result.table}")
            if self.writer is not None:
                for k, v in result.metrics.items():
                    if isinstance(v, (int, float)) and not math.isnan(v):
                        self.writer.add_scalar(f"eval/{prefix}{k}", v, epoch + 1)
        best = max(scores, key=lambda weights: (scores[weights], weights == "student"))
        if scores[best] > self.best_score:
            self.best_score, self.best_metrics = scores[best], dict(metrics[best])
            self.save("best.pth", {"model": unwrap(models[best]).state_dict(), "weights": best, "epoch": epoch,
                                   "metrics": metrics[best], "config": cfg.to_dict()})
        if "ema" in scores:
            log.info(f"epoch {epoch + 1}: {cfg.select_metric} {scores['student']:.4f} (best "
                     f"{self.best_by_weights['student']:.4f}), EMA {scores['ema']:.4f} (best "
                     f"{self.best_by_weights['ema']:.4f}); {record['sec_per_iter']:.3f} s/iter")
        else:
            log.info(f"epoch {epoch + 1}: {cfg.select_metric} {scores['student']:.4f} "
                     f"(best {self.best_score:.4f}); {record['sec_per_iter']:.3f} s/iter")

    def end_epoch(self, epoch: int, iters_per_epoch: int, record: dict) -> None:
        """The epoch's line in metrics.jsonl, then latest.pth (in that order: a run killed between the
        two drops the line on resume, see :meth:`open_records`)."""
        self.position = (epoch, iters_per_epoch, iters_per_epoch)
        if self.ctx.is_main:
            append_json_line(self.save_dir / "metrics.jsonl", record)
        self.save("latest.pth", self.checkpoint_state(epoch))
        barrier()
