"""ACDC prediction files: NIfTI label maps on the source grid and PNG overlays of chosen slices.

Every input is read and checked, and every output guarded, before the model is loaded or anything
is written (:func:`plan_predictions`); :func:`predict_files` then predicts and writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.acdc.evaluation import predict_volume
from tasks.acdc.nifti_io import NiftiVolume, list_nifti_files, nifti_stem, read_nifti_volume, write_label_nifti
from tasks.acdc.readers import normalize_intensity
from unimatch import atomic
from unimatch.errors import DataError
from unimatch.inference import Predictor
from unimatch.paths import guard_outputs

# RV red, Myo green, LV blue (class ids 1, 2, 3)
OVERLAY_COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240]], dtype=np.float32)


def add_prediction_arguments(parser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="a NIfTI file or a folder of them")
    parser.add_argument("--output", type=Path, required=True, help="folder for the label maps")
    parser.add_argument("--frame", type=int, help="time frame (0-based) to segment in 4-D cine files")
    parser.add_argument("--overlay-slices", metavar="Z,Z", help="also write PNG overlays of these slices (0-based)")


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


def plan_predictions(args) -> list[tuple[NiftiVolume, Path, list[Path]]]:
    """(volume, label map path, overlay paths) per input; every input read and checked, and no
    output replaced without ``--overwrite``."""
    overlay_slices = parse_slices(args.overlay_slices)
    plan = []
    for path in list_nifti_files(args.input):
        volume = read_nifti_volume(path, frame=args.frame)
        stem = output_stem(volume, args.frame)
        depth = volume.data.shape[0]
        bad = [z for z in overlay_slices if z >= depth]
        if bad:
            raise DataError(f"{volume.path}: --overlay-slices {bad} outside its slices 0..{depth - 1}")
        plan.append((volume, args.output / f"{stem}_seg.nii.gz",
                     [args.output / f"{stem}_slice{z:02d}.png" for z in overlay_slices]))
    stems = [label.name for _, label, _ in plan]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise DataError(f"{args.input}: several inputs would write {duplicates[0]}; predict them separately")
    outputs = [p for _, label, pngs in plan for p in [label, *pngs]]
    guard_outputs(outputs, [volume.path for volume, _, _ in plan], args.overwrite)
    return plan


def predict_files(predictor: Predictor, cfg, args, plan) -> list[Path]:
    """Each volume normalised as in training (``intensity_norm``), predicted, written."""
    overlay_slices = parse_slices(args.overlay_slices)
    args.output.mkdir(parents=True, exist_ok=True)
    written = []
    with predictor.evaluating():
        for volume, label_path, pngs in plan:
            image = normalize_intensity(volume.data, cfg.intensity_norm, window=cfg.ct_window)
            labels = predict_volume(predictor, torch.from_numpy(image), cfg.effective_slice_size).numpy()
            written.append(write_label_nifti(labels.astype(np.uint8), volume.image, label_path,
                                             overwrite=args.overwrite, slice_axis=volume.slice_axis))
            for z, png in zip(overlay_slices, pngs):
                with atomic.atomic_output(png) as temporary:
                    Image.fromarray(overlay_png(image[z], labels[z])).save(temporary)
                written.append(png)
            print(f"{volume.path.name}: {labels.shape[0]} slices -> {label_path}")
    return written
