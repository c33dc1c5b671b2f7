"""Losses of the paper's code: cross-entropy / OHEM for labels, masked CE or Dice for pseudo-labels."""
from __future__ import annotations

import inspect
import typing
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimatch.data import IGNORE_INDEX
from unimatch.errors import ConfigError


def confident_and_valid(confidence: torch.Tensor, threshold, valid: torch.Tensor) -> torch.Tensor:
    """The pixels whose pseudo-label counts: ``confidence >= threshold`` (a number, or one threshold
    per pixel) and ``valid`` (not padding: ``ignore_mask != IGNORE_INDEX``). The unlabelled losses,
    the mask ratio, :class:`unimatch.health.PseudoLabelHealth` and
    :class:`unimatch.align.ClassAdaptiveThreshold` all count these."""
    return (confidence >= threshold) & valid


def masked_cross_entropy(logits: torch.Tensor, pseudo_label: torch.Tensor, confidence_mask: torch.Tensor,
                         valid_mask: torch.Tensor) -> torch.Tensor:
    """Pixel CE summed over confident, valid pixels and divided by the number of *valid* pixels.

    Dividing by valid (not confident) pixels is what the official code does: early in training,
    when few pixels are confident, the unlabelled loss is small rather than noisy.
    """
    loss = F.cross_entropy(logits.float(), pseudo_label, reduction="none")
    loss = loss * (confidence_mask & valid_mask)
    return loss.sum() / valid_mask.sum().clamp_min(1)


class DiceLoss(nn.Module):
    """Soft Dice over the whole batch, averaged over all classes (background included).

    As in the official medical code: per class ``1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)``
    over the pixels not ignored; ``probs`` are softmax probabilities.
    """

    def __init__(self, nclass: int, smooth: float = 1e-5):
        super().__init__()
        self.nclass = nclass
        self.smooth = smooth

    def forward(self, probs: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        probs = probs.float()
        keep = torch.ones_like(target, dtype=torch.bool) if ignore is None else ~ignore.bool()
        keep = keep & (target != IGNORE_INDEX)
        target = torch.where(keep, target, torch.zeros_like(target))
        loss = probs.new_zeros(())
        for c in range(self.nclass):
            score = probs[:, c][keep]
            truth = (target[keep] == c).float()
            intersect = (score * truth).sum()
            dice = (2 * intersect + self.smooth) / ((score * score).sum() + (truth * truth).sum() + self.smooth)
            loss = loss + (1 - dice)
        return loss / self.nclass


class OhemCrossEntropy(nn.Module):
    """Online hard example mining CE (official ``ProbOhemCrossEntropy2d``): keep pixels whose
    probability of the true class is <= ``thresh``, and at least the ``min_kept`` hardest."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, thresh: float = 0.7, min_kept: int = 100000):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.clone()
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        # as the official code: no mining when min_kept is 0 or exceeds the valid pixels
        if 0 < self.min_kept <= num_valid:
            with torch.no_grad():
                prob = logits.detach().float().softmax(1)
                true_prob = prob.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
                true_prob = torch.where(valid, true_prob, torch.ones_like(true_prob))
                kth = torch.kthvalue(true_prob.flatten(), self.min_kept).values.item()
                threshold = max(self.thresh, kth)
                target[valid & (true_prob > threshold)] = self.ignore_index
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)


class CrossEntropyDice(nn.Module):
    """(CE + Dice) / 2, the labelled loss of the official medical code."""

    def __init__(self, nclass: int, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.dice = DiceLoss(nclass)

    def forward(self, logits, target):
        return (self.ce(logits.float(), target) + self.dice(logits.float().softmax(1), target)) / 2


def cross_entropy(ignore_index: int = IGNORE_INDEX) -> nn.Module:
    """The official ``CELoss``: mean cross-entropy over the pixels not ignored."""
    return nn.CrossEntropyLoss(ignore_index=ignore_index)


# config name (the official spelling) -> constructor; its keyword arguments (all but ``nclass``,
# which the task supplies) are the valid ``criterion.kwargs``, checked by config validation.
CRITERIA = {"CELoss": cross_entropy, "OHEM": OhemCrossEntropy, "CEDice": CrossEntropyDice}
CRITERION_ALIASES = {"ce": "CELoss", "ohem": "OHEM", "ce_dice": "CEDice"}


def criterion_constructor(name) -> Callable[..., nn.Module]:
    """The constructor of criterion ``name`` (official name or alias)."""
    canonical = CRITERION_ALIASES.get(name, name)
    if canonical not in CRITERIA:
        raise ConfigError(f"criterion.name: {name!r} is not one of {', '.join(CRITERIA)}")
    return CRITERIA[canonical]


def criterion_keywords(name) -> dict[str, type]:
    """The ``criterion.kwargs`` criterion ``name`` accepts, with their annotated types."""
    constructor = criterion_constructor(name)
    hints = typing.get_type_hints(constructor.__init__ if inspect.isclass(constructor) else constructor)
    parameters = inspect.signature(constructor).parameters
    return {key: hints.get(key, typing.Any) for key in parameters if key != "nclass"}


def build_criterion(spec: dict, nclass: int) -> nn.Module:
    """The labelled loss from the config's ``criterion: {name, kwargs}`` (official names accepted)."""
    constructor = criterion_constructor(spec.get("name"))
    kwargs = dict(spec.get("kwargs") or {})
    if "nclass" in inspect.signature(constructor).parameters:
        kwargs["nclass"] = nclass
    return constructor(**kwargs)
