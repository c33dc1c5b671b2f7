"""Evaluate a change-detection checkpoint (ours, or an official UniMatch release) on val, test or a split file.

    python -m tasks.change_detection.evaluate --checkpoint runs/change_detection/synthetic/unimatch/best.pth \\
        --split test --json test.json --csv test.csv --save-predictions preds/
    python -m tasks.change_detection.evaluate --config configs/change_detection/whu.yaml --data-root WHU-CD-256 \\
        --checkpoint whu_5.pth --split splits/whu/test.txt

``--split`` is ``val`` or ``test`` (the config's lists, found under the data root when not set)
or the path of a split file. Prints changed/unchanged IoU, OA, precision, recall, F1 and kappa
as a table; ``--save-predictions`` writes one PNG per tile (``<tile name>.png``) in the label
encoding (0 unchanged, 255 changed).
"""
from __future__ import annotations

from pathlib import Path

from tasks.change_detection.common import (DEFAULT_CONFIG, CDConfig, eval_loader, evaluate_model, mask_writer,
                                           resolve_data, split_path, write_csv)
from unimatch.cli import (eval_parser, exit_on_user_error, load_trained_model, prepare_output_dir, refuse_existing,
                          write_json)
from unimatch.config import load_config
from unimatch.distributed import barrier, cleanup, setup_distributed
from unimatch.inference import EVAL_MODES


def main(argv: list[str] | None = None) -> dict:
    parser = eval_parser("python -m tasks.change_detection.evaluate", __doc__.splitlines()[0], DEFAULT_CONFIG)
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="write the metrics as one CSV row (with a header) here")
    parser.add_argument("--mode", choices=EVAL_MODES, help="default: the config's eval_mode (whole tiles)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json/--csv file and write into a non-empty --save-predictions")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, schema=CDConfig, data_root=args.data_root)
    refuse_existing([args.json, args.csv], args.overwrite)
    ctx = setup_distributed(args.device)
    try:
        cfg = resolve_data(cfg, ctx)
        model = load_trained_model(cfg, args.checkpoint, ctx.device)
        split_name = args.split or "val"
        split_file = split_path(cfg, split_name)
        loader = eval_loader(cfg, ctx, split_file)
        if ctx.is_main:
            prepare_output_dir(args.save_predictions, args.overwrite)
        barrier()
        writer = mask_writer(args.save_predictions, cfg.class_values)
        mode = args.mode or cfg.eval_mode
        column = f"{split_name} %" if split_name in ("val", "test") else "score %"
        result = evaluate_model(model, cfg, ctx, loader, mode, writer, column=column)
        if ctx.is_main:
            print(f"{args.checkpoint} on {split_file} ({len(loader.dataset)} tiles, mode {mode})")
            print(result.table)
            summary = {"checkpoint": str(args.checkpoint), "split": split_name, "split_file": str(split_file),
                       "tiles": len(loader.dataset), "mode": mode}
            write_json(args.json, {**summary, "metrics": result.metrics, **result.extra})
            write_csv(args.csv, {**summary, **result.metrics})
        return result.metrics
    finally:
        cleanup()


if __name__ == "__main__":
    exit_on_user_error(main)
