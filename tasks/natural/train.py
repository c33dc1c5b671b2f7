"""Train DeepLabV3+ with UniMatch (or FixMatch, UniPerb, DusPerb, supervised) on natural images.

    python -m tasks.natural.train                      # built-in synthetic VOC-layout set, CPU ok
    python -m tasks.natural.train --config configs/natural/pascal.yaml --data-root VOC2012 \\
        --labeled-split splits/pascal/1464/labeled.txt --unlabeled-split splits/pascal/1464/unlabeled.txt
    torchrun --nproc_per_node=4 -m tasks.natural.train --config configs/natural/pascal.yaml ...
"""
from __future__ import annotations

from tasks.natural.common import DEFAULT_CONFIG, build_training_sets, make_val_evaluator, resolve_data
from unimatch.cli import config_from_args, exit_on_user_error, run_training, train_parser


def main(argv: list[str] | None = None) -> dict:
    parser = train_parser("python -m tasks.natural.train", __doc__.splitlines()[0], DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    return run_training(args, config_from_args(args), resolve_data, build_training_sets, make_val_evaluator)


if __name__ == "__main__":
    exit_on_user_error(main)
