"""Train the medical UNet with UniMatch (or FixMatch, UniPerb, DusPerb, supervised) on ACDC.

    python -m tasks.acdc.train --cases 1                 # built-in synthetic phantom, CPU ok
    python -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC --cases 3
    python -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC \\
        --labeled-split splits/acdc/3/labeled.txt --unlabeled-split splits/acdc/3/unlabeled.txt \\
        --val-split splits/acdc/val.txt
    torchrun --nproc_per_node=2 -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC --cases 7

The best checkpoint is chosen on the validation patients only; report the test patients with
``python -m tasks.acdc.evaluate --checkpoint RUN/best.pth --split test``.
"""
from __future__ import annotations


from tasks.acdc.common import DEFAULT_CONFIG, AcdcConfig, build_training_sets, make_val_evaluator, resolve_data
from unimatch.cli import config_from_args, exit_on_user_error, run_training, train_parser


def main(argv: list[str] | None = None) -> dict:
    parser = train_parser("python -m tasks.acdc.train", __doc__.splitlines()[0], DEFAULT_CONFIG)
    parser.add_argument("--cases", type=int,
                        help="labelled training patients (ACDC: 1, 3 or 7 in the literature); "
                             "ignored when official list files are given")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, schema=AcdcConfig, cases=args.cases)
    return run_training(args, cfg, resolve_data, build_training_sets, make_val_evaluator)


if __name__ == "__main__":
    exit_on_user_error(main)
