"""Evaluate a checkpoint (ours or an official release) on ACDC volumes: Dice, HD95, ASD per class.

Dice in percent, HD95 and ASD in mm and in voxels, per class (RV, Myo, LV) and their mean.

    python -m tasks.acdc.evaluate --checkpoint runs/acdc/synthetic/unimatch/best.pth --split test
    python -m tasks.acdc.evaluate --config configs/acdc/acdc.yaml --checkpoint unimatch_acdc_7.pth \\
        --data-root ACDC --split splits/acdc/test.txt --csv cases.csv --json metrics.json \\
        --save-predictions predictions/

``--split`` is ``val`` or ``test`` (the patients the training run held out, from the run's seed
or list files) or an official list file of volumes (``data/patient001_frame01.h5`` per line).
Without ``--config`` the config stored in our checkpoints is used (official checkpoints store
none: pass ``--config configs/acdc/acdc.yaml``). ``--save-predictions`` writes ``<case>.nii.gz``
label maps: on the source image's grid (affine and header) for raw NIfTI data, with an identity
orientation scaled by ``h5_spacing`` for ``.h5`` volumes, which store no geometry.
"""
from __future__ import annotations

from tasks.acdc.common import TASK
from unimatch.cli import evaluate_main, exit_on_user_error


def main(argv: list[str] | None = None) -> dict:
    return evaluate_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
