"""Command-line plumbing shared by every task's train/evaluate entry points."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unimatch.config import Config, load_config


def train_parser(prog: str, description: str, default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config file")
    parser.add_argument("--data-root", help="dataset root; without it the built-in synthetic dataset is used")
    parser.add_argument("--labeled-split", help="file listing the labelled samples (official format)")
    parser.add_argument("--unlabeled-split", help="file listing the unlabelled samples")
    parser.add_argument("--val-split", help="file listing the validation samples")
    parser.add_argument("--save-dir", help="run directory (checkpoints, logs); an existing run there is resumed")
    parser.add_argument("--method", choices=["unimatch", "fixmatch", "uniperb", "dusperb", "supervised"])
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


def eval_parser(prog: str, description: str, default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config the model was trained with")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our best.pth/latest.pth or an official {'model': ...} checkpoint")
    parser.add_argument("--data-root", help="dataset root; without it the built-in synthetic dataset is used")
    parser.add_argument("--split", help="the split to evaluate: a split file (or a task's named split such as "
                                        "val/test); default: the config's validation list")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", help="write each predicted mask here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON here")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def write_json(path: Path | None, payload: dict) -> None:
    """Write ``payload``; callers check with :func:`refuse_existing` before any work is done."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_training(args: argparse.Namespace, cfg: Config, resolve_data, build_training_sets, make_evaluator,
                 sup_criterion=None) -> dict:
    """The body every task's ``train`` shares: distributed set-up, data, model, Trainer.fit.

    ``resolve_data(cfg, ctx) -> cfg`` fills in data paths (writing the synthetic set on rank 0),
    ``build_training_sets(cfg) -> (labelled, unlabelled or None)``,
    ``make_evaluator(cfg, ctx) -> callable(model) -> EvalResult``.
    """
    from unimatch.distributed import cleanup, setup_distributed, wrap_model
    from unimatch.engine import Trainer, log, seed_everything
    from unimatch.models import build_model
    from unimatch.precision import configure_cpu_allocator, prepare_model

    configure_cpu_allocator(cfg.cpu_allocator)  # before the first large allocation
    ctx = setup_distributed(args.device)
    try:
        cfg = resolve_data(cfg, ctx)
        seed_everything(cfg.seed + ctx.rank)
        model = wrap_model(prepare_model(build_model(cfg), cfg.channels_last, cfg.compile, ctx.device), ctx)
        labeled, unlabeled = build_training_sets(cfg)
        trainer = Trainer(cfg, model, labeled, unlabeled, make_evaluator(cfg, ctx), ctx, default_save_dir(cfg),
                          sup_criterion=sup_criterion, progress=not args.no_progress)
        result = trainer.fit()
        if ctx.is_main:
            log.info(f"done: best {cfg.select_metric} {result['best_score']:.2f}; checkpoints in "
                     f"{default_save_dir(cfg)}")
        return result
    finally:
        cleanup()


def load_trained_model(cfg: Config, checkpoint: Path, device: torch.device):
    """The config's model with the weights of ``checkpoint`` (ours or an official release), in eval
    mode on ``device``. ``pretrained`` is ignored: the checkpoint holds every weight."""
    import dataclasses

    from unimatch.engine import load_model_weights
    from unimatch.models import build_model

    model = build_model(dataclasses.replace(cfg, pretrained=None))
    load_model_weights(model, checkpoint)
    return model.to(device).eval()


def refuse_existing(paths, overwrite: bool) -> None:
    """Output files that exist already stop the command before any work, unless ``--overwrite``."""
    from unimatch.errors import DataError

    existing = [str(p) for p in paths if p is not None and Path(p).exists()]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} already exist(s); choose another path or pass --overwrite")


def prepare_output_dir(directory: Path | None, overwrite: bool) -> None:
    """Create a folder for predictions; one that already holds files is refused unless ``--overwrite``."""
    from unimatch.errors import DataError

    if directory is None:
        return
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise DataError(f"{directory} already holds files; choose an empty folder or pass --overwrite")
    directory.mkdir(parents=True, exist_ok=True)


def exit_on_user_error(main) -> None:
    """Run ``main(argv)``; a data/config/checkpoint error prints one ``error:`` line and exits with
    status 2 instead of a traceback (bugs still show their traceback)."""
    import sys

    from unimatch.errors import CheckpointError, ConfigError, DataError

    try:
        main(sys.argv[1:])
    except (DataError, ConfigError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
