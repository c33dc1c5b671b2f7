"""Evaluate a change-detection checkpoint (ours, or an official UniMatch release) on val, test or a split file.

    python -m tasks.change_detection.evaluate --checkpoint runs/change_detection/synthetic/unimatch/best.pth \\
        --split test --json test.json --csv test.csv --save-predictions preds/
    python -m tasks.change_detection.evaluate --config configs/change_detection/whu.yaml --data-root WHU-CD-256 \\
        --checkpoint whu_5.pth --split splits/whu/test.txt

``--split`` is ``val`` or ``test`` (the config's lists, found under the data root when not set)
or the path of a split file. Prints changed/unchanged IoU, OA, precision, recall, F1 and kappa
as a table; ``--save-predictions`` writes one PNG per tile (``<tile name>.png``) in the label
encoding (0 unchanged, 255 changed).
"""
from __future__ import annotations

from tasks.change_detection.common import TASK
from unimatch.cli import evaluate_main, exit_on_user_error


def main(argv: list[str] | None = None) -> dict:
    return evaluate_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
