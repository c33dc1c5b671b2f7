"""Train the medical UNet with UniMatch (or FixMatch, UniPerb, DusPerb, supervised), or the DINOv2
DPT with UniMatch V2, on ACDC.

    python -m tasks.acdc.train --cases 1                 # built-in synthetic phantom, CPU ok
    python -m tasks.acdc.train --cases 1 --method unimatch_v2   # the same with V2 (synthetic_v2.yaml)
    python -m tasks.acdc.train --config configs/acdc/acdc_v2.yaml --data-root ACDC --cases 3
    python -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC --cases 3
    python -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC \\
        --labeled-split splits/acdc/3/labeled.txt --unlabeled-split splits/acdc/3/unlabeled.txt \\
        --val-split splits/acdc/val.txt
    torchrun --nproc_per_node=2 -m tasks.acdc.train --config configs/acdc/acdc.yaml --data-root ACDC --cases 7

The best checkpoint is chosen on the validation patients only; report the test patients with
``python -m tasks.acdc.evaluate --checkpoint RUN/best.pth --split test``.
"""
from __future__ import annotations

from tasks.acdc.common import TASK
from unimatch.cli import exit_on_user_error, train_main


def main(argv: list[str] | None = None) -> dict:
    return train_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
