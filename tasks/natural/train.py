"""Train DeepLabV3+ with UniMatch (or FixMatch, UniPerb, DusPerb, supervised) on natural images.

    python -m tasks.natural.train                      # built-in synthetic VOC-layout set, CPU ok
    python -m tasks.natural.train --config configs/natural/pascal.yaml --data-root VOC2012 \\
        --labeled-split splits/pascal/1464/labeled.txt --unlabeled-split splits/pascal/1464/unlabeled.txt
    torchrun --nproc_per_node=4 -m tasks.natural.train --config configs/natural/pascal.yaml ...
"""
from __future__ import annotations

import sys

from tasks.natural.common import (DEFAULT_CONFIG, build_training_sets, make_val_evaluator, resolve_data)
from unimatch.cli import config_from_args, default_save_dir, train_parser
from unimatch.distributed import cleanup, setup_distributed, wrap_model
from unimatch.engine import Trainer, log, seed_everything
from unimatch.models import build_model


def main(argv: list[str] | None = None) -> dict:
    parser = train_parser("python -m tasks.natural.train", __doc__.splitlines()[0], DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    ctx = setup_distributed(args.device)
    try:
        cfg = resolve_data(cfg, ctx)
        seed_everything(cfg.seed + ctx.rank)
        model = wrap_model(build_model(cfg), ctx)
        labeled, unlabeled = build_training_sets(cfg)
        evaluate = make_val_evaluator(cfg, ctx)
        trainer = Trainer(cfg, model, labeled, unlabeled, evaluate, ctx, default_save_dir(cfg),
                          progress=not args.no_progress)
        result = trainer.fit()
        if ctx.is_main:
            log.info(f"done: best {cfg.select_metric} {result['best_score']:.2f}; checkpoints in "
                     f"{default_save_dir(cfg)}")
        return result
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
