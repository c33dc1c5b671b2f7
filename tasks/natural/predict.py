"""Predict masks for a folder of images (or one image): palette PNGs, optional colour overlays.

    python -m tasks.natural.predict --config configs/natural/pascal.yaml --checkpoint best.pth \\
        --input photos/ --output masks/ [--overlay] [--mode sliding_window]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tasks.natural.common import DEFAULT_CONFIG
from tasks.natural.data import ImageFolderDataset
from tasks.natural.palette import overlay, palette_for, save_palette_png
from unimatch.cli import exit_on_user_error, load_trained_model, pick_device
from unimatch.config import load_config
from unimatch.engine import autocast_for
from unimatch.errors import DataError
from unimatch.inference import EVAL_MODES, predict
from unimatch.perturb import Normalizer, to_unit_float


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m tasks.natural.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    parser.add_argument("--output", type=Path, required=True, help="folder for <name>.png masks")
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg")
    parser.add_argument("--mode", choices=EVAL_MODES, default="original",
                        help="sliding_window for images much larger than the training crop")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="auto")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    device = pick_device(args.device)
    model = load_trained_model(cfg, args.checkpoint, device)
    if args.input.is_file():
        dataset = ImageFolderDataset(args.input.parent)
        dataset.entries = [e for e in dataset.entries if e.image.name == args.input.name]
    else:
        dataset = ImageFolderDataset(args.input)
    if not len(dataset):
        raise DataError(f"{args.input}: no image to predict")
    palette = palette_for(cfg.dataset)
    normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
    targets = [args.output / f"{dataset.entries[i].sample_id}.png" for i in range(len(dataset))]
    clashes = [str(t) for t in targets if t.exists()]
    if clashes and not args.overwrite:
        raise DataError(f"{len(clashes)} output file(s) exist already (first: {clashes[0]}); pass --overwrite")
    args.output.mkdir(parents=True, exist_ok=True)
    written = []
    autocast = autocast_for(cfg, device)
    for i in tqdm(range(len(dataset)), desc="predict", unit="image"):
        image, sample_id = dataset[i]
        batch = normalizer(to_unit_float(image.unsqueeze(0).to(device)))
        with torch.no_grad(), autocast:
            scores, origin = predict(model, batch, args.mode, cfg.crop_size, cfg.nclass, sample_id)
        pred = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        written.append(save_palette_png(pred, args.output / f"{sample_id}.png", palette, overwrite=True))
        if args.overlay:
            shown = image if origin is None else image[:, origin[0]:origin[0] + pred.shape[0],
                                                       origin[1]:origin[1] + pred.shape[1]]
            Image.fromarray(overlay(shown, pred, palette=palette)).save(args.output / f"{sample_id}_overlay.jpg")
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return written


if __name__ == "__main__":
    exit_on_user_error(main)
