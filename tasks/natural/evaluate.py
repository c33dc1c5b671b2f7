"""Evaluate a checkpoint (ours, or an official UniMatch release) on a split: per-class IoU, mIoU.

    python -m tasks.natural.evaluate --config configs/natural/pascal.yaml --checkpoint best.pth \\
        --data-root VOC2012 --split val.txt --mode original --save-predictions preds/ --json metrics.json
"""
from __future__ import annotations


from tasks.natural.common import DEFAULT_CONFIG, evaluate_model, resolve_data, val_loader
from tasks.natural.palette import palette_for, save_palette_png
from unimatch.cli import (eval_parser, exit_on_user_error, load_trained_model, prepare_output_dir, refuse_existing,
                          write_json)
from unimatch.config import load_config
from unimatch.distributed import barrier, cleanup, setup_distributed
from unimatch.inference import EVAL_MODES


def prediction_writer(directory, dataset: str, overwrite: bool, ctx):
    """A callback saving each prediction as a palette PNG named by its id; every rank writes the
    images of its own shard (rank 0 checks the folder first)."""
    if directory is None:
        return None
    if ctx.is_main:
        prepare_output_dir(directory, overwrite)
    barrier()
    directory.mkdir(parents=True, exist_ok=True)
    palette = palette_for(dataset)

    def write(sample_id, pred, mask):
        save_palette_png(pred.cpu().numpy(), directory / f"{sample_id}.png", palette, overwrite=overwrite)
    return write


def main(argv: list[str] | None = None) -> dict:
    parser = eval_parser("python -m tasks.natural.evaluate", __doc__.splitlines()[0], DEFAULT_CONFIG)
    parser.add_argument("--mode", choices=EVAL_MODES, help="default: the config's eval_mode")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty --save-predictions and over an existing --json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, data_root=args.data_root)
    refuse_existing([args.json], args.overwrite)
    ctx = setup_distributed(args.device)
    try:
        cfg = resolve_data(cfg, ctx)
        model = load_trained_model(cfg, args.checkpoint, ctx.device)
        split = args.split or cfg.val_split
        loader = val_loader(cfg, ctx, split)
        writer = prediction_writer(args.save_predictions, cfg.dataset, args.overwrite, ctx)
        mode = args.mode or cfg.eval_mode
        result = evaluate_model(model, cfg, ctx, loader, mode, writer)
        if ctx.is_main:
            print(f"{args.checkpoint} on {split} ({len(loader.dataset)} images, mode {mode})")
            print(result.table)
            write_json(args.json, {"checkpoint": str(args.checkpoint), "split": str(split), "mode": mode,
                                   "metrics": result.metrics})
        return result.metrics
    finally:
        cleanup()


if __name__ == "__main__":
    exit_on_user_error(main)
