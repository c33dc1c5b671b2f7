"""Predict the change between two co-registered scenes of any size (GeoTIFF or PNG/JPEG).

    python -m tasks.change_detection.predict --config configs/change_detection/whu.yaml --checkpoint best.pth \\
        --before 2012.tif --after 2016.tif --out change.tif [--window 256 --overlap 64 --probability --bands 1,2,3]

The scene is predicted in overlapping windows, blended, and written as it goes (see
:mod:`tasks.change_detection.scene_io`): a GeoTIFF output keeps the input's CRS and geotransform
(band 1: 0 unchanged / 1 changed with a colour map, band 2 with ``--probability``: the change
probability x 255); a PNG output is a palette PNG (and ``<name>_probability.png``). Inputs that
do not match (size, band count, CRS, geotransform), an unreadable file, or an existing output
without ``--overwrite`` stop with one message naming the files.
"""
from __future__ import annotations

from pathlib import Path

from tasks.change_detection.common import TASK
from unimatch.cli import exit_on_user_error, predict_main


def main(argv: list[str] | None = None) -> Path:
    return predict_main(TASK, argv, __doc__)


if __name__ == "__main__":
    exit_on_user_error(main)
