"""Train DeepLabV3+ with UniMatch (or FixMatch, UniPerb, DusPerb, supervised) on natural images.

    python -m tasks.natural.train                      # built-in synthetic VOC-layout set, CPU ok
    python -m tasks.natural.train --config configs/natural/pascal.yaml --data-root VOC2012 \\
        --labeled-split splits/pascal/1464/labeled.txt --unlabeled-split splits/pascal/1464/unlabeled.txt
    torchrun --nproc_per_node=4 -m tasks.natural.train --config configs/natural/pascal.yaml ...
"""
from __future__ import annotations

from tasks.natural.common import TASK
from unimatch.cli import exit_on_user_error, train_main


def main(argv: list[str] | None = None) -> dict:
    return train_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
