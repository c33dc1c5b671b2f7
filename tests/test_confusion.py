"""Confusion-matrix scores against hand computation; 255 pixels are skipped."""
import math

import numpy as np
import pytest
import torch

from helpers import deterministic
from unimatch.metrics.confusion import ConfusionMatrix

TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 0]])
# matrix[t, p] over the 7 non-ignored pixels: t0 -> p0 x2, p1 x1; t1 -> p1 x2; t2 -> p0 x1, p2 x1
MATRIX = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]


def setup_module():
    deterministic()


def hand_confusion():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    return cm


def test_matrix_counts_and_skips_ignore():
    assert hand_confusion().matrix.tolist() == MATRIX


def test_scores_by_hand():
    cm = hand_confusion()
    # TP (2, 2, 1); predicted counts (3, 3, 1); true counts (3, 2, 2)
    assert cm.iou().tolist() == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert cm.overall_accuracy() == pytest.approx(5 / 7)
    assert cm.precision().tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert cm.recall().tolist() == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert cm.f1().tolist() == pytest.approx([2 / 3, 0.8, 2 / 3])
    # observed 5/7, chance (3*3 + 3*2 + 1*2) / 49 = 17/49 -> (35 - 17) / (49 - 17)
    assert cm.kappa() == pytest.approx(18 / 32)


def test_accumulating_batches_equals_one_update():
    cm = ConfusionMatrix(3)
    cm.update(PRED[:1], TARGET[:1])
    cm.update(PRED[1:], TARGET[1:])
    assert cm.matrix.tolist() == MATRIX


def test_class_absent_from_truth_and_prediction_has_nan_iou_and_counts_zero_in_miou():
    """As the official intersection / (union + 1e-10): the absent class adds a 0 to the mean."""
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert math.isnan(cm.iou()[3].item())
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)
    assert math.isnan(cm.precision()[3].item()) and math.isnan(cm.recall()[3].item())


def test_iou_equals_official_intersection_and_union_sums():
    """Summing per-image intersections and unions (the official way) gives the same IoU."""
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(5)
    inter, union = np.zeros(5), np.zeros(5)
    for _ in range(4):
        target = torch.randint(0, 5, (2, 9, 7), generator=g)
        target[torch.rand(2, 9, 7, generator=g) < 0.2] = 255
        pred = torch.randint(0, 5, (2, 9, 7), generator=g)
        cm.update(pred, target)
        keep = (target != 255).numpy()
        t, p = target.numpy()[keep], pred.numpy()[keep]
        for c in range(5):
            inter[c] += np.sum((t == c) & (p == c))
            union[c] += np.sum((t == c) | (p == c))
    assert cm.iou().numpy() == pytest.approx(inter / union)


def test_out_of_range_class_is_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="nclass=3"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="nclass=3"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_empty_matrix_scores_are_nan_and_all_reduce_is_a_no_op_alone():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1]), torch.tensor([255]))
    assert math.isnan(cm.overall_accuracy()) and math.isnan(cm.kappa())
    assert hand_confusion().all_reduce().matrix.tolist() == MATRIX
