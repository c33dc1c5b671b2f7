"""Predict the change between two co-registered scenes of any size (GeoTIFF or PNG/JPEG).

    python -m tasks.change_detection.predict --config configs/change_detection/whu.yaml --checkpoint best.pth \\
        --before 2012.tif --after 2016.tif --out change.tif [--window 256 --overlap 64 --probability --bands 1,2,3]

The scene is predicted in overlapping windows, blended, and written as it goes (see
:mod:`tasks.change_detection.scene_io`): a GeoTIFF output keeps the input's CRS and geotransform
(band 1: 0 unchanged / 1 changed with a colour map, band 2 with ``--probability``: the change
probability x 255); a PNG output is a palette PNG (and ``<name>_probability.png``). Inputs that
do not match (size, band count, CRS, geotransform), an unreadable file, or an existing output
without ``--overwrite`` stop with one message naming the files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tasks.change_detection.common import DEFAULT_CONFIG, CDConfig
from tasks.change_detection.scene_io import predict_scene
from unimatch.cli import exit_on_user_error, load_trained_model, pick_device
from unimatch.config import load_config
from unimatch.engine import autocast_for
from unimatch.errors import ConfigError
from unimatch.perturb import Normalizer, to_unit_float


def parse_bands(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--bands {text!r}: give 1-based band numbers separated by commas, e.g. 1,2,3") from None


def parse_stretch(text: str | None):
    if text is None or text == "percentile":
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--stretch {text!r}: give 'percentile' or a divisor such as 256") from None


def make_predict_fn(model, cfg: CDConfig, device: torch.device):
    """uint8 pairs (N, 2C, h, w) -> change probabilities (N, nclass, h, w), as evaluation sees them."""
    normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
    autocast = autocast_for(cfg, device)

    def predict_fn(batch: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = model(normalizer(to_unit_float(batch.to(device))))
        return logits.float().softmax(1)
    return predict_fn


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tasks.change_detection.predict",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config the model was trained with")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="our best.pth/latest.pth or an official {'model': ...} checkpoint")
    parser.add_argument("--before", type=Path, required=True, help="scene of the first date (A)")
    parser.add_argument("--after", type=Path, required=True, help="scene of the second date (B), same grid as A")
    parser.add_argument("--out", type=Path, required=True, help="output .tif/.tiff (georeferenced) or .png")
    parser.add_argument("--window", type=int, help="window side in pixels (default: the config's crop_size)")
    parser.add_argument("--overlap", type=int, help="overlap of neighbouring windows (default: window / 4)")
    parser.add_argument("--bands", help="1-based bands of each date, e.g. 1,2,3 (default: the config's bands)")
    parser.add_argument("--stretch", help="'percentile' or a divisor for non-8-bit data (default: the config's)")
    parser.add_argument("--probability", action="store_true", help="also write the change probability")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides, schema=CDConfig, bands=parse_bands(args.bands),
                      stretch=parse_stretch(args.stretch))
    window = args.window or cfg.crop_size
    overlap = window // 4 if args.overlap is None else args.overlap
    device = pick_device(args.device)
    model = load_trained_model(cfg, args.checkpoint, device)
    out = predict_scene(args.before, args.after, args.out, make_predict_fn(model, cfg, device), window=window,
                        overlap=overlap, bands=cfg.bands, stretch=cfg.stretch, write_probability=args.probability,
                        overwrite=args.overwrite, progress=not args.no_progress, batch_size=args.batch_size)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    exit_on_user_error(main)
