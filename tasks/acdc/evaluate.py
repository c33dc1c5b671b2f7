"""Evaluate a checkpoint (ours or an official release) on ACDC volumes: Dice, HD95, ASD per class.

Dice in percent, HD95 and ASD in mm and in voxels, per class (RV, Myo, LV) and their mean.

    python -m tasks.acdc.evaluate --checkpoint runs/acdc/synthetic/unimatch/best.pth --split test
    python -m tasks.acdc.evaluate --config configs/acdc/acdc.yaml --checkpoint unimatch_acdc_7.pth \\
        --data-root ACDC --split splits/acdc/test.txt --csv cases.csv --json metrics.json \\
        --save-predictions predictions/

``--split`` is ``val`` or ``test`` (the patients the training run held out, from the run's seed
or list files) or an official list file of volumes (``data/patient001_frame01.h5`` per line).
Without ``--config`` the config stored in our checkpoints is used (official checkpoints store
none: pass ``--config configs/acdc/acdc.yaml``). ``--save-predictions`` writes ``<case>.nii.gz``
label maps: on the source image's grid (affine and header) for raw NIfTI data, with an identity
orientation scaled by ``h5_spacing`` for ``.h5`` volumes, which store no geometry.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tasks.acdc.common import (eval_volumes, evaluate_volumes, inference_config, prediction_writer, resolve_data,
                               write_evaluation_csv, write_evaluation_json)
from unimatch.cli import exit_on_user_error, load_trained_model
from unimatch.distributed import barrier, cleanup, setup_distributed
from unimatch.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.acdc.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our best.pth/latest.pth or an official {'model': ...} checkpoint")
    parser.add_argument("--config", type=Path,
                        help="YAML config of the model (default: the one stored in the checkpoint, else the "
                             "synthetic config)")
    parser.add_argument("--data-root", help="ACDC folder (default: the config's; the synthetic phantom if none)")
    parser.add_argument("--split", default="val", help="val (default), test, or an official list file of volumes")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write one row per case and class here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the summary and per-case scores here")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", help="write <case>.nii.gz label maps here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing prediction, --csv and --json files")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for path in (args.csv, args.json):
        if path is not None and path.exists() and not args.overwrite:
            raise DataError(f"{path} exists already; choose another file or pass --overwrite")
    cfg, source = inference_config(args.config, args.checkpoint, args.overrides, data_root=args.data_root)
    cfg = dataclasses.replace(cfg, pretrained=None)
    ctx = setup_distributed(args.device)
    try:
        cfg = resolve_data(cfg, ctx)
        model = load_trained_model(cfg, args.checkpoint, ctx.device)
        volumes = eval_volumes(cfg, args.split)
        writer = None
        if args.save_predictions is not None:
            case_ids = [item.case_id for item in volumes.items]
            writer = prediction_writer(cfg, args.save_predictions, case_ids, args.overwrite)
            barrier()
        result = evaluate_volumes(model, volumes, cfg, ctx, writer)
        if ctx.is_main:
            print(f"{args.checkpoint} on {args.split} of {cfg.data_root} (config: {source})")
            print(result.table(args.split if args.split in ("val", "test") else Path(args.split).name))
            context = {"checkpoint": str(args.checkpoint), "split": args.split, "data_root": str(cfg.data_root),
                       "config": source, "crop_size": cfg.crop_size}
            if args.json is not None:
                write_evaluation_json(args.json, result, context)
            if args.csv is not None:
                write_evaluation_csv(args.csv, result)
        return {"metrics": result.metrics(), "cases": [case_id for case_id, _ in result.per_case]}
    finally:
        cleanup()


if __name__ == "__main__":
    exit_on_user_error(main)
