"""Evaluate a checkpoint (ours, or an official UniMatch release) on a split: per-class IoU, mIoU.

    python -m tasks.natural.evaluate --config configs/natural/pascal.yaml --checkpoint best.pth \\
        --data-root VOC2012 --split val.txt --mode original --save-predictions preds/ --json metrics.json

Without ``--config`` the config stored in our checkpoints is used (official ones store none: give
theirs). ``--save-predictions`` writes one palette PNG per image, named by its id.
"""
from __future__ import annotations

from tasks.natural.common import TASK
from unimatch.cli import evaluate_main, exit_on_user_error


def main(argv: list[str] | None = None) -> dict:
    return evaluate_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
