"""Predict masks for a folder of images (or one image): palette PNGs, optional colour overlays.

    python -m tasks.natural.predict --checkpoint best.pth --input photos/ --output masks/ \\
        [--overlay] [--mode sliding_window] [--config configs/natural/pascal.yaml]

Without ``--config`` the config stored in our checkpoints is used (official ones store none: give theirs).
"""
from __future__ import annotations

from pathlib import Path

from tasks.natural.common import TASK
from unimatch.cli import exit_on_user_error, predict_main


def main(argv: list[str] | None = None) -> list[Path]:
    return predict_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
