"""Segment cardiac MRI volumes (NIfTI) with a trained model (UNet or V2 DPT): NIfTI label maps, optional PNG overlays.

    python -m tasks.acdc.predict --checkpoint best.pth --input patient101_frame01.nii.gz --output seg/
    python -m tasks.acdc.predict --checkpoint best.pth --input patient101_4d.nii.gz --frame 0 --output seg/ \\
        --overlay-slices 3,5

Each input is normalised as in training (``intensity_norm`` of the config), every slice is
predicted at the training size and resized back, and the labels (0 background, 1 RV, 2 Myo,
3 LV) are written as ``<name>_seg.nii.gz`` (``<name>_t<N>_seg.nii.gz`` for frame N of a 4-D
file) on the source grid, in its voxel order and with its own header (NIfTI version, qform/sform
and their codes kept). Slices are taken along the through-plane axis read from the header (a
volume stored slices-first too; see ``tasks.acdc.nifti_io``). ``--overlay-slices`` also writes
``<name>[_t<N>]_slice<Z>.png`` (the slice with the labels coloured over it). A
folder input is every ``.nii``/``.nii.gz`` in it except ``*_gt`` and ``*_4d`` files. All inputs
are read (and checked) before anything is written; existing outputs are never replaced without
``--overwrite``.
"""
from __future__ import annotations

from pathlib import Path

from tasks.acdc.common import TASK
from unimatch.cli import exit_on_user_error, predict_main


def main(argv: list[str] | None = None) -> list[Path]:
    return predict_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
