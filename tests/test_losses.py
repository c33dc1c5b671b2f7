"""Losses: masked CE normalisation, Dice with ignore, OHEM as the official ProbOhemCrossEntropy2d."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import deterministic
from unimatch.errors import ConfigError
from unimatch.losses import CrossEntropyDice, DiceLoss, OhemCrossEntropy, build_criterion, masked_cross_entropy


def setup_module():
    deterministic()


# ---- masked cross-entropy -----------------------------------------------------------------
def test_masked_ce_sums_confident_valid_pixels_and_divides_by_valid_pixels():
    logits = torch.tensor([[[[2.0, 0.0, 1.0, -1.0]], [[0.0, 1.0, 1.0, 3.0]]]])  # (1, 2, 1, 4)
    label = torch.tensor([[[0, 0, 1, 1]]])
    confident = torch.tensor([[[True, True, False, True]]])
    valid = torch.tensor([[[True, True, True, False]]])
    # pixel CE = log(1 + exp(other - own)): pixels 0 and 1 are the only confident and valid ones
    ce0, ce1 = math.log(1 + math.exp(0.0 - 2.0)), math.log(1 + math.exp(1.0 - 0.0))
    expected = (ce0 + ce1) / 3  # three valid pixels, not two confident-and-valid ones
    assert masked_cross_entropy(logits, label, confident, valid).item() == pytest.approx(expected, rel=1e-6)


def test_masked_ce_with_no_valid_pixel_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2)
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert masked_cross_entropy(logits, label, ~mask, mask).item() == 0.0


# ---- Dice ---------------------------------------------------------------------------------
PROBS_1 = torch.tensor([0.9, 0.2, 0.6, 0.5])


def dice_probs():
    return torch.stack((1 - PROBS_1, PROBS_1)).view(1, 2, 1, 4)


def dice_term(intersect, score_sq, truth_sq, eps=1e-5):
    return 1 - (2 * intersect + eps) / (score_sq + truth_sq + eps)


def test_dice_with_ignored_pixel_by_hand():
    target = torch.tensor([[[1, 0, 1, 0]]])
    ignore = torch.tensor([[[False, False, False, True]]])
    # kept pixels 0..2. class 0: scores (.1,.8,.4), truth (0,1,0); class 1: scores (.9,.2,.6), truth (1,0,1)
    expected = (dice_term(0.8, 0.01 + 0.64 + 0.16, 1.0) + dice_term(1.5, 0.81 + 0.04 + 0.36, 2.0)) / 2
    loss = DiceLoss(2)(dice_probs(), target, ignore=ignore)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # a float 0/1 ignore map (as the official code passes it) means the same
    assert DiceLoss(2)(dice_probs(), target, ignore=ignore.float()).item() == pytest.approx(expected, abs=1e-6)
    # a 255 label is ignored as well
    target_255 = torch.tensor([[[1, 0, 1, 255]]])
    assert DiceLoss(2)(dice_probs(), target_255).item() == pytest.approx(expected, abs=1e-6)


def test_dice_without_ignore_by_hand():
    target = torch.tensor([[[1, 0, 1, 0]]])
    expected = (dice_term(1.3, 1.06, 2.0) + dice_term(1.5, 1.46, 2.0)) / 2
    assert DiceLoss(2)(dice_probs(), target).item() == pytest.approx(expected, abs=1e-6)


def official_style_dice(probs, target, ignore, nclass):
    """Per class over the pixels with ignore != 1, classes averaged (background included)."""
    keep = ignore != 1
    total = 0.0
    for c in range(nclass):
        s = probs[:, c][keep].double()
        t = (target[keep] == c).double()
        total += 1 - (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
    return total / nclass


def test_dice_matches_the_official_formula_on_random_data():
    g = torch.Generator().manual_seed(3)
    probs = torch.randn(2, 4, 6, 5, generator=g).softmax(1)
    target = torch.randint(0, 4, (2, 6, 5), generator=g)
    ignore = (torch.rand(2, 6, 5, generator=g) < 0.3).float()
    got = DiceLoss(4)(probs, target, ignore=ignore)
    assert got.item() == pytest.approx(float(official_style_dice(probs, target, ignore, 4)), abs=1e-6)


def test_ce_dice_is_the_mean_of_both():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    target[0, 0] = 255
    expected = (F.cross_entropy(logits, target, ignore_index=255)
                + DiceLoss(3)(logits.softmax(1), target)) / 2
    assert CrossEntropyDice(3)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


# ---- OHEM ---------------------------------------------------------------------------------
def reference_ohem(logits, target, ignore_index, thresh, min_kept):
    """The official ProbOhemCrossEntropy2d rule, restated with numpy: among valid pixels, if there
    are at least ``min_kept`` (> 0) of them, keep those whose true-class probability is <= the
    larger of ``thresh`` and the ``min_kept``-th smallest probability (ignored pixels count as
    probability 1); otherwise keep every valid pixel. Mean CE over the kept pixels."""
    prob = logits.softmax(1).permute(1, 0, 2, 3).reshape(logits.shape[1], -1).numpy()
    flat = target.reshape(-1).numpy().copy()
    valid = flat != ignore_index
    if 0 < min_kept <= valid.sum():
        true_prob = np.ones(flat.shape, dtype=prob.dtype)
        true_prob[valid] = prob[flat[valid], np.nonzero(valid)[0]]
        kth = np.sort(true_prob)[min(len(true_prob), min_kept) - 1]
        threshold = kth if kth > thresh else thresh
        flat[valid & (true_prob > threshold)] = ignore_index
    kept_target = torch.from_numpy(flat).view_as(target)
    return F.cross_entropy(logits, kept_target, ignore_index=ignore_index)


def ohem_data(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    # the true class gets a boost uniform in [0, 6]: true-class probabilities spread over (0, 1)
    logits = 2 * torch.randn(2, 4, 8, 8, generator=g)
    logits += 6 * torch.rand(2, 1, 8, 8, generator=g) * F.one_hot(target, 4).permute(0, 3, 1, 2)
    target[:, :2] = 255  # 32 of 128 pixels ignored -> 96 valid
    return logits, target


def true_class_probs(logits, target):
    valid = target != 255
    prob = logits.softmax(1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    return prob[valid]


@pytest.mark.parametrize("min_kept, regime", [
    (10, "thresh"),        # the 10th hardest pixel is well below 0.7: the threshold is 0.7
    (80, "kth"),           # keeping 80 of 96 pixels needs a threshold above 0.7
    (96, "plain"),         # exactly the valid count: the threshold is the largest probability
    (97, "plain"),         # more than the valid pixels: plain CE over valid pixels
    (0, "plain"),          # no min_kept: the official code does no mining at all
])
def test_ohem_matches_official_rule(min_kept, regime):
    logits, target = ohem_data(seed=min_kept)
    expected = reference_ohem(logits, target, 255, 0.7, min_kept)
    got = OhemCrossEntropy(ignore_index=255, thresh=0.7, min_kept=min_kept)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = F.cross_entropy(logits, target, ignore_index=255).item()
    probs = true_class_probs(logits, target).sort().values
    if regime == "plain":
        assert got.item() == pytest.approx(plain, rel=1e-6)
    else:
        # the data really exercise the regime, and mining changes the loss
        kth = probs[min_kept - 1].item()
        assert (kth > 0.7) == (regime == "kth")
        assert (probs > 0.7).any() and got.item() != pytest.approx(plain, rel=1e-3)


def test_ohem_does_not_modify_the_target():
    logits, target = ohem_data(seed=1)
    before = target.clone()
    OhemCrossEntropy(255, 0.7, 10)(logits, target)
    assert torch.equal(target, before)


def test_ohem_gradient_flows_only_through_kept_pixels():
    logits, target = ohem_data(seed=2)
    logits.requires_grad_(True)
    OhemCrossEntropy(255, 0.7, 10)(logits, target).backward()
    probs = logits.detach().softmax(1).gather(1, torch.where(target != 255, target, 0).unsqueeze(1)).squeeze(1)
    pixel_has_grad = logits.grad.abs().sum(1) > 0
    expected = (target != 255) & (probs <= 0.7)
    assert torch.equal(pixel_has_grad, expected)


# ---- criterion factory --------------------------------------------------------------------
def test_build_criterion_accepts_the_official_names():
    ce = build_criterion({"name": "CELoss", "kwargs": {"ignore_index": 255}}, 3)
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.ignore_index == 255
    ohem = build_criterion({"name": "OHEM", "kwargs": {"ignore_index": 255, "thresh": 0.7, "min_kept": 200000}}, 3)
    assert isinstance(ohem, OhemCrossEntropy) and (ohem.thresh, ohem.min_kept) == (0.7, 200000)
    assert isinstance(build_criterion({"name": "CEDice"}, 4), CrossEntropyDice)
    with pytest.raises(ConfigError, match="criterion.name.*Focal"):
        build_criterion({"name": "Focal"}, 3)
