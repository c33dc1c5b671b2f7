"""Per-volume Dice / HD95 / ASD: against hand values, a brute-force surface distance, and medpy."""
import math

import numpy as np
import pytest
from scipy import ndimage

from unimatch.metrics.volume import aggregate, binary_scores, score_volume

ACDC = {1: "RV", 2: "Myo", 3: "LV"}


def _surface(mask):
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return np.argwhere(mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1))


def _directed(a, b, spacing):
    """For every surface voxel of a, the distance to the nearest surface voxel of b (brute force)."""
    pa = _surface(a) * np.asarray(spacing)
    pb = _surface(b) * np.asarray(spacing)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def _brute_hd95(a, b, spacing):
    return float(np.percentile(np.concatenate([_directed(a, b, spacing), _directed(b, a, spacing)]), 95))


def _cube(shape, start, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_cube_shifted_by_k_voxels():
    n, k = 8, 2
    gt = _cube((12, 16, 16), (2, 4, 4), n)
    pred = _cube((12, 16, 16), (2, 4, 4 + k), n)
    score = binary_scores(pred, gt, spacing=(1.0, 1.0, 1.0))
    assert score.dice == pytest.approx((n - k) / n)
    assert score.hd95_vox == pytest.approx(_brute_hd95(pred, gt, (1, 1, 1)))
    assert score.asd_vox == pytest.approx(_directed(pred, gt, (1, 1, 1)).mean())
    assert score.hd95_vox <= k + 1e-9 and score.hd95_vox > 0
    assert score.status == "both"


def test_identical_masks_score_perfectly():
    sphere = np.linalg.norm(np.mgrid[-6:7, -6:7, -6:7], axis=0) <= 5
    score = binary_scores(sphere, sphere, spacing=(10.0, 1.5, 1.5))
    assert (score.dice, score.hd95_mm, score.asd_mm, score.hd95_vox, score.asd_vox) == (1.0, 0.0, 0.0, 0.0, 0.0)


def test_millimetres_use_the_anisotropic_spacing_voxels_do_not():
    spacing = (10.0, 1.5, 1.5)
    a = np.zeros((8, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[2, 5, 5] = True
    b[5, 5, 5] = True  # 3 slices apart
    score = binary_scores(a, b, spacing)
    assert score.dice == 0.0
    assert score.hd95_vox == pytest.approx(3.0) and score.asd_vox == pytest.approx(3.0)
    assert score.hd95_mm == pytest.approx(30.0) and score.asd_mm == pytest.approx(30.0)

    sphere = np.linalg.norm(np.mgrid[-4:5, -9:10, -9:10] * np.array([2.0, 1, 1])[:, None, None, None], axis=0) <= 7
    gt = np.zeros((12, 24, 24), dtype=bool)
    gt[1:10, 2:21, 2:21] = sphere
    pred = np.roll(gt, 1, axis=0)
    score = binary_scores(pred, gt, spacing)
    assert score.hd95_mm == pytest.approx(_brute_hd95(pred, gt, spacing))
    assert score.hd95_vox == pytest.approx(_brute_hd95(pred, gt, (1, 1, 1)))
    assert score.hd95_mm > 5 * score.hd95_vox


def test_absent_class_convention():
    empty = np.zeros((4, 8, 8), dtype=bool)
    blob = empty.copy()
    blob[1:3, 2:5, 2:5] = True
    both_empty = binary_scores(empty, empty, (10, 1, 1))
    assert (both_empty.dice, both_empty.hd95_mm, both_empty.asd_mm, both_empty.status) == (1.0, 0.0, 0.0, "both_empty")
    missed = binary_scores(empty, blob, (10, 1, 1))
    assert missed.dice == 0.0 and missed.status == "pred_empty"
    assert all(math.isnan(v) for v in (missed.hd95_mm, missed.asd_mm, missed.hd95_vox, missed.asd_vox))
    spurious = binary_scores(blob, empty, (10, 1, 1))
    assert spurious.dice == 0.0 and spurious.status == "gt_empty" and math.isnan(spurious.hd95_mm)


def test_score_volume_scores_each_acdc_class():
    gt = np.zeros((6, 20, 20), dtype=np.int64)
    gt[1:5, 2:8, 2:8] = 1
    gt[1:5, 10:16, 10:16] = 2
    gt[1:5, 12:14, 12:14] = 3
    pred = gt.copy()
    pred[pred == 1] = 0  # RV missed entirely
    pred[1:5, 10:16, 16:18] = 2  # myocardium too wide
    scores = score_volume(pred, gt, spacing=(10.0, 1.5, 1.5), classes=ACDC)
    assert list(scores) == ["RV", "Myo", "LV"]
    assert scores["RV"].status == "pred_empty" and scores["RV"].dice == 0.0
    assert scores["LV"].dice == 1.0 and scores["LV"].hd95_mm == 0.0
    myo_pred, myo_gt = pred == 2, gt == 2
    expected = 2 * (myo_pred & myo_gt).sum() / (myo_pred.sum() + myo_gt.sum())
    assert scores["Myo"].dice == pytest.approx(expected)
    assert scores["Myo"].hd95_mm == pytest.approx(_brute_hd95(myo_pred, myo_gt, (10.0, 1.5, 1.5)))
    with pytest.raises(ValueError):
        score_volume(pred[:3], gt, spacing=(10.0, 1.5, 1.5), classes=ACDC)


def test_aggregate_means_per_class_and_counts_undefined_distances():
    gt = np.zeros((4, 10, 10), dtype=np.int64)
    gt[1:3, 1:4, 1:4] = 1
    gt[1:3, 5:9, 5:9] = 3
    perfect = score_volume(gt, gt, (10, 1, 1), ACDC)
    missing_rv = gt.copy()
    missing_rv[missing_rv == 1] = 0
    partial = score_volume(missing_rv, gt, (10, 1, 1), ACDC)
    result = aggregate([perfect, partial])
    rv = result["classes"]["RV"]
    assert rv["dice"] == pytest.approx(0.5)
    assert rv["hd95_mm"] == 0.0 and rv["n_undefined"] == 1 and rv["n_cases"] == 2
    myo = result["classes"]["Myo"]  # absent from both volumes: Dice 1, HD95 0
    assert myo["dice"] == 1.0 and myo["hd95_mm"] == 0.0 and myo["n_undefined"] == 0
    assert result["mean"]["dice"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert result["n_cases"] == 2
    only_missed = aggregate([partial])
    assert math.isnan(only_missed["classes"]["RV"]["hd95_mm"]) and math.isnan(only_missed["mean"]["hd95_mm"])
