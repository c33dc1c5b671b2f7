"""Plain-text tables and flat metric dicts, the same for console, logs and JSON."""
from __future__ import annotations

import math
from typing import Sequence

from unimatch.config import class_names_or_ids
from unimatch.metrics.confusion import ConfusionMatrix


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Aligned columns; floats printed with 2 decimals as percentages where the caller passed them so."""
    def cell(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.2f}"
        return str(value)
    table = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in table)) if table else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in table]
    return "\n".join([line, rule, *body])


def segmentation_report(confusion: ConfusionMatrix, class_names: Sequence[str] | None = None) -> tuple[dict, str]:
    """Per-class IoU and mIoU (in %, as papers report them) plus overall accuracy."""
    names = class_names_or_ids(class_names, confusion.nclass)
    iou = (confusion.iou() * 100).tolist()
    metrics = {"mIoU": confusion.miou() * 100, "OA": confusion.overall_accuracy() * 100}
    metrics.update({f"IoU/{name}": value for name, value in zip(names, iou)})
    rows = [[name, value] for name, value in zip(names, iou)]
    rows.append(["mean (mIoU)", metrics["mIoU"]])
    rows.append(["overall accuracy", metrics["OA"]])
    return metrics, format_table(["class", "IoU %"], rows)
