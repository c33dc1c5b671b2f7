"""Train a siamese change-detection model with UniMatch (or FixMatch, UniPerb, DusPerb, supervised).

    python -m tasks.change_detection.train                 # built-in synthetic set (5% labels), CPU ok
    python -m tasks.change_detection.train --config configs/change_detection/whu.yaml --data-root WHU-CD-256 \\
        --labeled-split splits/whu/5%/labeled.txt --unlabeled-split splits/whu/5%/unlabeled.txt \\
        --val-split splits/whu/val.txt
    torchrun --nproc_per_node=4 -m tasks.change_detection.train --config configs/change_detection/levir.yaml ...

Every evaluation (on the validation list) prints changed IoU, F1, OA and the other change scores;
``best.pth`` is the checkpoint with the best ``select_metric`` (changed IoU by default).
"""
from __future__ import annotations

from tasks.change_detection.common import TASK
from unimatch.cli import exit_on_user_error, train_main


def main(argv: list[str] | None = None) -> dict:
    return train_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
