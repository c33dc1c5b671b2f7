"""The commands every task shares (train, evaluate, predict), driven by its :class:`unimatch.task.Task`,
and their plumbing: parsers, config loading, writers."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from pathlib import Path

import torch

from unimatch.config import EVAL_MODES, METHODS, Config, load_config
from unimatch.errors import CheckpointError, Interrupted
from unimatch.paths import prepare_output_dir, refuse_existing
from unimatch.splits import SPLIT_KINDS


# what an interrupted evaluate or predict says of its outputs (each is written atomically)
OUTPUTS_WHOLE = ("while writing its outputs; each file written so far is complete and none is partial (the same "
                 "command with --overwrite writes them all again)")


def train_parser(prog: str, description: str, default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help=f"YAML config file (default: {default_config}; with --method "
                                                    f"unimatch_v2 the task's V2 demo config beside it)")
    parser.add_argument("--data-root", help="dataset root; without it the built-in synthetic dataset is used")
    parser.add_argument("--labeled-split", help="file listing the labelled samples (official format)")
    parser.add_argument("--unlabeled-split", help="file listing the unlabelled samples")
    parser.add_argument("--val-split", help="file listing the validation samples")
    parser.add_argument("--save-dir", help="run directory (checkpoints, logs); an existing run there is resumed "
                                           "if it was trained with the same settings")
    parser.add_argument("--resume-with-changes", action="store_true",
                        help="resume the run in --save-dir although its training settings differ from this "
                             "command's; the run's config and records then describe the new settings")
    parser.add_argument("--method", choices=list(METHODS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. lr=0.01 criterion.name=OHEM conf_thresh=0.9")
    return parser


def config_from_args(args: argparse.Namespace, schema: type = Config, **extra) -> Config:
    return load_config(args.config, args.overrides, schema=schema, data_root=args.data_root,
                       labeled_split=args.labeled_split, unlabeled_split=args.unlabeled_split,
                       val_split=args.val_split, save_dir=args.save_dir, method=args.method, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers, **extra)


def default_save_dir(cfg: Config) -> Path:
    return Path(cfg.save_dir) if cfg.save_dir else Path("runs") / cfg.task / cfg.dataset / cfg.method


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--config`` (default: the config stored in the checkpoint)."""
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our best.pth/latest.pth or an official {'model': ...} checkpoint")
    parser.add_argument("--config", type=Path,
                        help="YAML config the model was trained with (default: the one stored in our checkpoints; "
                             "official checkpoints store none, so give theirs, else the built-in default is used)")


def eval_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_arguments(parser)
    parser.add_argument("--data-root", help="dataset root (default: the config's; the built-in synthetic "
                                            "dataset when it names none)")
    parser.add_argument("--split", help="the split to evaluate: a split file (or a task's named split such as "
                                        "val/test); default: the config's validation list")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", help="write each predicted mask here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON here")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write the metrics as CSV rows (with a header) here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --json/--csv files and write into a non-empty --save-predictions")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def add_mode_argument(parser: argparse.ArgumentParser, default: str | None = None,
                      help: str = "default: the config's eval_mode") -> None:
    """``--mode``: one of the 2-D inference modes (:data:`unimatch.config.EVAL_MODES`)."""
    parser.add_argument("--mode", choices=EVAL_MODES, default=default, help=help)


def write_json(path: Path | None, payload: dict) -> None:
    """Write ``payload`` as standard JSON (NaN as ``null``, :func:`unimatch.report.write_json`);
    callers check with :func:`refuse_existing` before any work is done."""
    from unimatch import report

    if path is not None:
        report.write_json(path, payload)


def write_csv(path: Path | None, rows: list[dict]) -> None:
    """A header line (the first row's keys) and one line per row, written atomically; NaN is an empty cell."""
    import csv
    import io
    import math

    from unimatch import atomic

    if path is None:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    atomic.write_text(path, text.getvalue())


def pick_device(name: str) -> torch.device:
    """``--device`` of a single-process command, checked as train and evaluate check it."""
    from unimatch.distributed import resolve_device

    return resolve_device(name)


def train_main(task, argv, doc: str) -> dict:
    """The ``train`` command of ``task``: distributed set-up, data, model, :class:`Trainer`.fit."""
    import unimatch
    from unimatch.distributed import cleanup, setup_distributed, wrap_model
    from unimatch.data import seed_everything
    from unimatch.engine import Trainer, log, setup_logging
    from unimatch.run_folder import (NewRunFiles, RunFolderBusy, RunLock, check_resumable, describe_changes,
                                      prepare_run_dir, refuse_another_tasks_run)
    from unimatch.models import build_model
    from unimatch.precision import configure_cpu_allocator, configure_threads, prepare_model
    from unimatch.splits import check_disjoint, configured_lists

    parser = train_parser(task.command("train"), doc.splitlines()[0], task.default_config)
    task.add_train_arguments(parser)
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = task.default_config_for(args.method)
    cfg = config_from_args(args, task.config_class, **task.train_values(args))
    configure_cpu_allocator(cfg.cpu_allocator)  # before the first large allocation
    configure_threads(cfg.threads)
    ctx = setup_distributed(args.device)
    run_files = NewRunFiles(default_save_dir(cfg), ctx.is_main, task.run_files)
    lock, trainer = None, None
    try:
        save_dir = prepare_run_dir(default_save_dir(cfg))
        lock = RunLock.acquire(save_dir) if ctx.is_main else None
        train_command = functools.partial(task.command, "train")
        refuse_another_tasks_run(save_dir, cfg.task, train_command)
        if lock is not None:
            setup_logging(save_dir, ctx.is_main)
            for note in lock.notes:
                log.info(note)
        cfg = task.resolve_data(cfg, ctx)
        check_disjoint(configured_lists(cfg), task.split_key(cfg), cfg.allow_labeled_in_unlabeled)
        changes = check_resumable(save_dir, cfg, args.resume_with_changes, train_command)
        if ctx.is_main and ctx.device.type == "cpu":
            log.info(unimatch.OPENMP_WAIT)
        seed_everything(cfg.seed + ctx.rank)
        model = wrap_model(prepare_model(build_model(cfg), cfg.channels_last, cfg.compile, ctx.device), ctx)
        labeled, unlabeled = task.training_sets(cfg)
        trainer = Trainer(cfg, model, labeled, unlabeled, task.val_evaluator(cfg, ctx), ctx, save_dir,
                          progress=not args.no_progress)
        if changes and ctx.is_main:
            log.warning(f"--resume-with-changes: continuing the run in {save_dir} with changed settings "
                        f"({describe_changes(changes)}); its config and records now describe them")
        result = trainer.fit()
        if ctx.is_main:
            log.info(f"done: best {cfg.select_metric} {result['best_score']:.2f}; checkpoints in {save_dir}")
        return result
    except BaseException as error:
        if isinstance(error, Interrupted):
            error.note = trainer.interruption_note() if trainer is not None else \
                "before training started; the same command starts the run again"
        if lock is not None:   # first: a folder the run created is removed only when empty
            lock.release()
        if not isinstance(error, RunFolderBusy):   # the files there are the running training's
            run_files.remove_if_untrained()
        raise
    finally:
        if lock is not None:
            lock.release()
        cleanup()


def checkpoint_config(path: Path) -> dict | None:
    """The config stored in one of our checkpoints (None for official ones); a missing, unreadable
    or unsafe file is one :class:`CheckpointError` (:func:`unimatch.checkpoint.load_checkpoint`)."""
    from unimatch.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path, mmap=True)
    stored = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return stored if isinstance(stored, dict) else None


def inference_config(task, config: Path | None, checkpoint: Path, overrides=(), command: str = "evaluate",
                     **values) -> tuple[Config, str]:
    """The config to ``command`` (evaluate/predict) with, and where it came from.

    An explicit ``--config`` wins; otherwise the config stored in our checkpoints, so the run's
    model, normalisation, sizes and seed (which may decide the test set) are used, but not its split
    lists when ``data_root`` is given: the task then finds them under that root; otherwise
    (official checkpoints store none) the task's built-in default. A checkpoint whose stored
    config names another task is refused first, naming the command that reads it. Stored keys the
    run never read (``Config.keys_not_read``, accepted by earlier versions) are left out. ``pretrained``
    is always None: the checkpoint holds every weight, so no pretrained file is read, nor built
    (``pretrained: synthetic``).
    """
    stored = checkpoint_config(checkpoint)
    trained_by = stored.get("task") if stored is not None else None
    if trained_by is not None and trained_by != task.name:
        raise CheckpointError(f"checkpoint {checkpoint} was trained by the {trained_by} task, not {task.name}; "
                              f"use {task.command(command, trained_by)}")
    if config is not None:
        cfg, source = load_config(config, overrides, schema=task.config_class, **values), str(config)
    elif stored is None:
        cfg = load_config(task.default_config, overrides, schema=task.config_class, **values)
        source = f"{task.default_config} (the checkpoint stores none)"
    else:
        known = {f.name for f in dataclasses.fields(task.config_class)}
        if values.get("data_root") is not None:   # the stored lists name the training data's files
            known -= {f"{kind}_split" for kind in SPLIT_KINDS}
        stored = {k: v for k, v in stored.items() if k in known}
        model = {"model": stored["model"]} if "model" in stored else {}
        unread = task.config_class(**model).keys_not_read()
        stored = {k: v for k, v in stored.items() if k not in unread}
        stored.update({k: v for k, v in values.items() if v is not None})
        cfg = load_config(None, overrides, schema=task.config_class, **stored)
        source = f"{checkpoint} (stored config)"
    return dataclasses.replace(cfg, pretrained=None), source


def evaluate_main(task, argv, doc: str) -> dict:
    """The ``evaluate`` command of ``task``: a checkpoint scored on a split, printed, and written
    as JSON/CSV on request; every rank predicts its shard."""
    from unimatch.distributed import cleanup, setup_distributed
    from unimatch.inference import Predictor

    parser = eval_parser(task.command("evaluate"), doc.splitlines()[0])
    task.add_evaluate_arguments(parser)
    args = parser.parse_args(argv)
    refuse_existing([args.json, args.csv], args.overwrite)
    cfg, source = inference_config(task, args.config, args.checkpoint, args.overrides, data_root=args.data_root)
    ctx = setup_distributed(args.device)
    try:
        cfg = task.resolve_data(cfg, ctx)
        predictor = Predictor(load_trained_model(cfg, args.checkpoint, ctx.device, source), cfg, ctx.device)
        report = task.evaluate(predictor, cfg, ctx, args)
        if ctx.is_main:
            print(f"{report.title} (config: {source})")
            print(report.table)
            write_json(args.json, {"checkpoint": str(args.checkpoint), "config": source, **report.record})
            write_csv(args.csv, report.rows)
        return report.metrics if report.result is None else report.result
    except Interrupted as interrupt:
        interrupt.note = OUTPUTS_WHOLE
        raise
    finally:
        cleanup()


def predict_main(task, argv, doc: str):
    """The ``predict`` command of ``task``: inputs checked and outputs guarded before the model is
    loaded, then every input predicted through one :class:`Predictor`."""
    from unimatch.inference import Predictor

    parser = argparse.ArgumentParser(prog=task.command("predict"), description=doc.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_arguments(parser)
    task.add_predict_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    cfg, source = inference_config(task, args.config, args.checkpoint, args.overrides, "predict",
                                   **task.predict_values(args))
    print(f"config: {source}")
    plan = task.check_predict_outputs(cfg, args)
    device = pick_device(args.device)
    predictor = Predictor(load_trained_model(cfg, args.checkpoint, device, source), cfg, device)
    try:
        return task.predict(predictor, cfg, args, plan)
    except Interrupted as interrupt:
        interrupt.note = OUTPUTS_WHOLE
        raise


def load_trained_model(cfg: Config, checkpoint: Path, device: torch.device, source: str | None = None):
    """The config's model with the weights of ``checkpoint`` (ours or an official release), in eval
    mode on ``device``. ``pretrained`` is ignored: the checkpoint holds every weight. When they do
    not fit, the error also names the config used (``source``), since that is what to change."""
    from unimatch.engine import load_model_weights
    from unimatch.models import build_model

    from unimatch.precision import prepare_model

    model = build_model(dataclasses.replace(cfg, pretrained=None))
    load_model_weights(model, checkpoint, config_source=source)
    return prepare_model(model.to(device), getattr(cfg, "channels_last", False), False, device).eval()


def prediction_folder(directory: Path | None, overwrite: bool, ctx) -> Path | None:
    """``directory`` checked (:func:`prepare_output_dir`) by rank 0 before any rank writes into it."""
    from unimatch.distributed import barrier

    if directory is None:
        return None
    if ctx.is_main:
        prepare_output_dir(directory, overwrite)
    barrier()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def exit_on_user_error(main) -> None:
    """Run ``main(argv)``; a :class:`~unimatch.errors.UserError` (data, config, checkpoint, diverged
    training, unwritable output) prints one ``error:`` line and exits with status 2 instead of a
    traceback (bugs still show their traceback). SIGINT and SIGTERM print one ``error:`` line saying
    where the work stopped and exit with 130 / 143; every file the commands write is written
    atomically (:mod:`unimatch.atomic`), so none is left half-written."""
    import sys

    from unimatch.errors import Interrupted, UserError, user_message

    with interrupts_raised():
        try:
            main(sys.argv[1:])
        except UserError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            sys.exit(2)
        except Interrupted as interrupt:
            print(f"error: {interrupt.message()}", file=sys.stderr)
            sys.exit(interrupt.exit_status)


INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def interrupts_raised():
    """SIGINT and SIGTERM raise :class:`~unimatch.errors.Interrupted` (SIGTERM would otherwise end
    the process with nothing printed and nothing cleaned up); a second signal while the first one
    unwinds is ignored, so the clean-up finishes. The previous handlers come back afterwards."""
    import signal
    import threading

    from unimatch.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():   # only the main thread may set handlers
        yield
        return
    signals = [getattr(signal, name) for name in INTERRUPT_SIGNALS]

    def interrupt(signum, frame):
        for other in signals:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
