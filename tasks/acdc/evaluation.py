"""The ACDC evaluation protocol, as the official medical script does it, per volume.

Every slice is resized (bilinear) to the training size ``slice_size``, predicted, its logits
resized back (bilinear) to the slice's size and arg-maxed; the volume is then scored per class
(RV, Myo, LV) with ``unimatch.metrics.volume`` (Dice, HD95, ASD, in mm and in voxels) and the
cases are averaged. Under torchrun the volumes are sharded over the ranks and the per-case scores
gathered to every rank, so all ranks report the same numbers (and select the same best
checkpoint). Dice is reported in percent, as the paper does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from tasks.acdc.data import VolumeDataset
from unimatch.data import ShardSampler
from unimatch.distributed import DistContext, gather_to_all
from unimatch.errors import DataError
from unimatch.inference import Predictor
from unimatch.metrics.volume import aggregate, score_volume
from unimatch.report import format_table

DISTANCE_METRICS = ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox")
METRIC_UNITS = {"dice": "percent", "hd95_mm": "mm", "asd_mm": "mm", "hd95_vox": "voxels", "asd_vox": "voxels"}


def predict_volume(predictor: Predictor, volume: torch.Tensor, slice_size: int, chunk: int = 16) -> torch.Tensor:
    """Labels (D, H, W) int64 of a volume (D, H, W) in [0, 1]: every slice resized to
    ``slice_size`` (bilinear), predicted, logits resized back (bilinear), arg-maxed.

    Slices go through in chunks of ``chunk`` (eval-mode BatchNorm makes that the same as one batch).
    """
    depth, height, width = volume.shape
    slices = volume.to(device=predictor.device, dtype=torch.float32).unsqueeze(1)
    labels = []
    for start in range(0, depth, chunk):
        x = F.interpolate(slices[start:start + chunk], size=(slice_size, slice_size), mode="bilinear",
                          align_corners=False)
        logits = predictor(x)
        labels.append(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False).argmax(1))
    return torch.cat(labels).cpu()


def _in_units(row: Mapping) -> dict:
    """Dice in percent, distances as they are."""
    return {k: v * 100 if k == "dice" else v for k, v in row.items()}


@dataclass
class VolumeEvaluation:
    """Per-case scores (sorted by case id) and their aggregate (``unimatch.metrics.volume.aggregate``)."""
    per_case: list  # [(case_id, {class name: ClassScore})]
    summary: dict

    def metrics(self) -> dict:
        """Flat floats: ``mean_dice`` (%), ``mean_hd95_mm`` ..., ``dice/RV`` ..., ``n_cases``."""
        out = {f"mean_{m}": self.summary["mean"][m] * (100 if m == "dice" else 1) for m in METRIC_UNITS}
        for name, row in self.summary["classes"].items():
            for m in METRIC_UNITS:
                out[f"{m}/{name}"] = row[m] * (100 if m == "dice" else 1)
        out["n_cases"] = float(self.summary["n_cases"])
        return out

    def table(self, title: str = "") -> str:
        rows = []
        for name, row in self.summary["classes"].items():
            rows.append([name, row["dice"] * 100] + [row[m] for m in DISTANCE_METRICS] + [row["n_undefined"]])
        mean = self.summary["mean"]
        undefined = sum(row["n_undefined"] for row in self.summary["classes"].values())
        rows.append(["mean", mean["dice"] * 100] + [mean[m] for m in DISTANCE_METRICS] + [undefined])
        text = format_table(["class", "Dice %", "HD95 mm", "ASD mm", "HD95 vox", "ASD vox", "undefined"], rows)
        header = f"{title + ': ' if title else ''}{self.summary['n_cases']} volumes"
        return f"{header}\n{text}"

    def per_case_rows(self) -> list[dict]:
        """One row per case and class; undefined distances are NaN."""
        rows = []
        for case_id, scores in self.per_case:
            for name, score in scores.items():
                rows.append({"case": case_id, "class": name, "dice": score.dice * 100,
                             **{m: getattr(score, m) for m in DISTANCE_METRICS}, "status": score.status})
        return rows

    def record(self) -> dict:
        """The JSON report: units, the summary and the per-case rows (undefined distances are NaN,
        written as null by :func:`unimatch.report.write_json`, the one JSON writer)."""
        summary = {"classes": {name: _in_units(row) for name, row in self.summary["classes"].items()},
                   "mean": _in_units(self.summary["mean"]), "n_cases": self.summary["n_cases"]}
        return {"units": METRIC_UNITS, "summary": summary, "per_case": self.per_case_rows()}


def evaluate_volumes(predictor: Predictor, dataset: VolumeDataset, cfg, ctx: DistContext,
                     on_prediction: Optional[Callable] = None) -> VolumeEvaluation:
    """Score every volume of ``dataset``; this rank predicts its shard, all ranks get all scores.

    ``on_prediction(case_id, labels (D,H,W) numpy, spacing)`` is called for this rank's volumes.
    """
    classes = dict(enumerate(cfg.report_class_names()))
    classes.pop(0)
    local = []
    with predictor.evaluating():
        for index in ShardSampler(len(dataset), ctx.rank, ctx.world_size):
            volume, label, case_id, spacing = dataset[index]
            pred = predict_volume(predictor, volume, cfg.effective_slice_size).numpy()
            local.append((case_id, score_volume(pred, label.numpy(), spacing, classes)))
            if on_prediction is not None:
                on_prediction(case_id, pred, spacing)
    per_case = sorted(gather_to_all(local), key=lambda item: item[0])
    if not per_case:
        raise DataError("evaluation set is empty: no validation/test volumes")
    return VolumeEvaluation(per_case, aggregate(scores for _, scores in per_case))
