"""Plain-text tables and flat metric dicts, the same for console, logs and JSON, and the result of one
evaluation (:class:`EvalResult`), which the task hands the training loop."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unimatch import atomic
from unimatch.config import class_names_or_ids
from unimatch.metrics.confusion import ConfusionMatrix


@dataclass
class EvalResult:
    """Scores of one evaluation: ``metrics`` (flat floats, logged) and a human-readable ``table``."""
    metrics: dict
    table: str = ""
    extra: dict = field(default_factory=dict)


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


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Inf) replaced by ``None`` and numpy / 0-d torch
    scalars turned into Python numbers, so it can be written as standard JSON.

    An undefined metric (precision with no positive prediction, HD95 of an empty class) is NaN;
    ``json`` would write the bare token ``NaN``, which strict parsers (and most languages) reject.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return json_safe(float(value))


def to_json(payload: Any, **dumps_options) -> str:
    """Standard JSON text of ``payload`` (non-finite numbers as ``null``); every JSON file and
    JSON-lines record the project writes goes through here."""
    return json.dumps(json_safe(payload), allow_nan=False, **dumps_options)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` to ``path`` as indented standard JSON (see :func:`to_json`), atomically."""
    atomic.write_text(path, to_json(payload, indent=2) + "\n")


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file (none when it does not exist)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_json_lines(path: Path, records: list[dict]) -> None:
    """Write ``records`` as JSON lines, atomically: a crash never leaves half a line."""
    atomic.write_text(path, "".join(to_json(record) + "\n" for record in records))


def append_json_line(path: Path, record: dict) -> None:
    """Add ``record`` as one line of standard JSON to ``path`` (``metrics.jsonl``); the file is
    rewritten atomically (it holds one line per epoch)."""
    write_json_lines(path, [*read_json_lines(path), record])
