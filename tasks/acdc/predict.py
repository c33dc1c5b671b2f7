"""Segment cardiac MRI volumes (NIfTI) with a trained UNet: NIfTI label maps, optional PNG overlays.

    python -m tasks.acdc.predict --checkpoint best.pth --input patient101_frame01.nii.gz --output seg/
    python -m tasks.acdc.predict --checkpoint best.pth --input patient101_4d.nii.gz --frame 0 --output seg/ \\
        --overlay-slices 3,5

Each input is normalised as in training (``intensity_norm`` of the config), every slice is
predicted at the training size and resized back, and the labels (0 background, 1 RV, 2 Myo,
3 LV) are written as ``<name>_seg.nii.gz`` (``<name>_t<N>_seg.nii.gz`` for frame N of a 4-D
file) on the source grid: its affine and header, sform/qform codes set. ``--overlay-slices``
also writes ``<name>[_t<N>]_slice<Z>.png`` (the slice with the labels coloured over it). A
folder input is every ``.nii``/``.nii.gz`` in it except ``*_gt`` and ``*_4d`` files. All inputs
are read (and checked) before anything is written; existing outputs are never replaced without
``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.acdc.common import inference_config, predict_volume
from tasks.acdc.data import normalize_intensity
from tasks.acdc.nifti_io import NiftiVolume, list_nifti_files, nifti_stem, read_nifti_volume, write_label_nifti
from unimatch.cli import exit_on_user_error, load_trained_model, pick_device
from unimatch.engine import autocast_for
from unimatch.errors import DataError
from unimatch.perturb import Normalizer

# RV red, Myo green, LV blue (class ids 1, 2, 3)
OVERLAY_COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240]], dtype=np.float32)


def parse_slices(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--overlay-slices {text!r}: expected comma-separated slice indices such as 3,5") from None
    if any(v < 0 for v in values):
        raise DataError(f"--overlay-slices {text!r}: slice indices start at 0")
    return values


def overlay_png(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 of a [0, 1] slice with its foreground labels blended in colour."""
    gray = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=2)
    colours = OVERLAY_COLOURS[np.clip(labels, 0, len(OVERLAY_COLOURS) - 1)]
    foreground = (labels > 0)[..., None]
    blended = np.where(foreground, (1 - alpha) * gray + alpha * colours, gray)
    return blended.round().astype(np.uint8)


def output_stem(volume: NiftiVolume, frame: int | None) -> str:
    stem = nifti_stem(volume.path)
    four_d = len(volume.image.shape) > 3 and volume.image.shape[3] > 1
    return f"{stem}_t{frame:02d}" if four_d and frame is not None else stem


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m tasks.acdc.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path,
                        help="YAML config of the model (default: the one stored in the checkpoint, else the "
                             "synthetic config)")
    parser.add_argument("--input", type=Path, required=True, help="a NIfTI file or a folder of them")
    parser.add_argument("--output", type=Path, required=True, help="folder for the label maps")
    parser.add_argument("--frame", type=int, help="time frame (0-based) to segment in 4-D cine files")
    parser.add_argument("--overlay-slices", metavar="Z,Z", help="also write PNG overlays of these slices (0-based)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    overlay_slices = parse_slices(args.overlay_slices)
    cfg, _ = inference_config(args.config, args.checkpoint, args.overrides)
    cfg = dataclasses.replace(cfg, pretrained=None)
    # read and check every input before writing anything
    volumes = [read_nifti_volume(path, frame=args.frame) for path in list_nifti_files(args.input)]
    targets = []
    for volume in volumes:
        stem = output_stem(volume, args.frame)
        depth = volume.data.shape[0]
        bad = [z for z in overlay_slices if z >= depth]
        if bad:
            raise DataError(f"{volume.path}: --overlay-slices {bad} outside its slices 0..{depth - 1}")
        pngs = [args.output / f"{stem}_slice{z:02d}.png" for z in overlay_slices]
        targets.append((args.output / f"{stem}_seg.nii.gz", pngs))
    stems = [t[0].name for t in targets]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise DataError(f"{args.input}: several inputs would write {duplicates[0]}; predict them separately")
    clashes = [str(p) for label, pngs in targets for p in [label, *pngs] if p.exists()]
    if clashes and not args.overwrite:
        raise DataError(f"{len(clashes)} output file(s) exist already (first: {clashes[0]}); "
                        "choose another --output folder or pass --overwrite")

    device = pick_device(args.device)
    model = load_trained_model(cfg, args.checkpoint, device)
    normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
    autocast = autocast_for(cfg, device)
    args.output.mkdir(parents=True, exist_ok=True)
    written = []
    for volume, (label_path, pngs) in zip(volumes, targets):
        image = normalize_intensity(volume.data, cfg.intensity_norm)
        labels = predict_volume(model, torch.from_numpy(image), cfg.crop_size, normalizer, device, autocast).numpy()
        written.append(write_label_nifti(labels.astype(np.uint8), volume.image, label_path,
                                         overwrite=args.overwrite))
        for z, png in zip(overlay_slices, pngs):
            Image.fromarray(overlay_png(image[z], labels[z])).save(png)
            written.append(png)
        print(f"{volume.path.name}: {labels.shape[0]} slices -> {label_path}")
    return written


if __name__ == "__main__":
    exit_on_user_error(main)
