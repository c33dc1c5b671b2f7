"""Per-volume, per-class Dice, HD95 and ASD for 3-D label maps (medpy surface distances).

Inputs are integer label arrays of one volume (prediction and ground truth, same shape, any
axis order as long as ``spacing`` follows it). Each foreground class is scored as a binary
mask. HD95 and ASD come twice: in millimetres with the voxel spacing, and in voxels (spacing
1, the unit SSL4MIS and the UniMatch paper report on their cardiac MRI benchmark).

HD95 is medpy's ``hd95``: the 95th percentile of the surface distances of both directions
pooled. ASD is medpy's ``asd``: the mean distance from the predicted surface to the
ground-truth surface (one direction, as SSL4MIS reports it).

Convention for a class missing from one or both volumes
------------------------------------------------------
* both empty: Dice 1, HD95 0, ASD 0 (a correct "nothing here");
* one empty: Dice 0, HD95 and ASD undefined (NaN). Aggregation averages HD95/ASD over the
  cases where they are defined and reports how many were not (``n_undefined``); Dice is
  always defined and averaged over all cases.

SSL4MIS differs, and not even consistently: ``test_2D_fully.calculate_metric_percase`` calls
medpy unguarded (medpy's ``hd95`` raises on an empty mask, and its ``dc`` gives 1 for two empty
masks), while ``val_2D.calculate_metric_percase`` returns Dice 0, HD95 50, ASD 10 whenever
either mask is empty (even when both are). Those fixed numbers bias means; NaN plus a count
keeps them honest. The official UniMatch validation computes only Dice per volume
(``2|P∩G| / (|P|+|G|)``, which divides by zero when both are empty).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from medpy.metric import binary as medpy_binary

_DISTANCES = ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox")


@dataclass(frozen=True)
class ClassScore:
    """Scores of one class in one volume; ``status`` says which masks were empty."""

    dice: float
    hd95_mm: float
    asd_mm: float
    hd95_vox: float
    asd_vox: float
    status: str  # "both", "both_empty", "pred_empty", "gt_empty"

    def as_dict(self) -> dict:
        return asdict(self)


def binary_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> ClassScore:
    """Dice, HD95, ASD of two binary masks (see the module docstring for empty masks)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred.ndim}-D volume")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return ClassScore(1.0, 0.0, 0.0, 0.0, 0.0, "both_empty")
    if not (has_pred and has_gt):
        nan = math.nan
        return ClassScore(0.0, nan, nan, nan, nan, "gt_empty" if has_pred else "pred_empty")
    spacing = tuple(float(s) for s in spacing)
    return ClassScore(
        dice=float(medpy_binary.dc(pred, gt)),
        hd95_mm=float(medpy_binary.hd95(pred, gt, voxelspacing=spacing)),
        asd_mm=float(medpy_binary.asd(pred, gt, voxelspacing=spacing)),
        hd95_vox=float(medpy_binary.hd95(pred, gt)),
        asd_vox=float(medpy_binary.asd(pred, gt)),
        status="both",
    )


def score_volume(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                 classes: Mapping[int, str]) -> dict[str, ClassScore]:
    """Per-class scores of one volume: ``{class name: ClassScore}`` for each ``{class id: name}``."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return {name: binary_scores(pred == label, gt == label, spacing) for label, name in classes.items()}


def aggregate(per_case: Iterable[Mapping[str, ClassScore]]) -> dict:
    """Mean over cases per class, and the mean of those class means.

    Returns ``{"classes": {name: {"dice", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox",
    "n_cases", "n_undefined"}}, "mean": {same metrics}, "n_cases": N}``. A distance is averaged
    over the cases where it is defined; ``n_undefined`` counts the others; a class whose
    distance is undefined in every case has NaN there, and so has the overall mean.
    """
    per_case = list(per_case)
    if not per_case:
        raise ValueError("no cases to aggregate")
    names = list(per_case[0].keys())
    classes = {}
    for name in names:
        scores = [case[name] for case in per_case]
        row = {"dice": float(np.mean([s.dice for s in scores]))}
        for metric in _DISTANCES:
            values = [getattr(s, metric) for s in scores if not math.isnan(getattr(s, metric))]
            row[metric] = float(np.mean(values)) if values else math.nan
        row["n_cases"] = len(scores)
        row["n_undefined"] = sum(1 for s in scores if s.status in ("pred_empty", "gt_empty"))
        classes[name] = row
    mean = {metric: float(np.mean([classes[n][metric] for n in names])) for metric in ("dice",) + _DISTANCES}
    return {"classes": classes, "mean": mean, "n_cases": len(per_case)}
