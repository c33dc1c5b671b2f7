"""Pseudo-label health: which classes the teacher is confident about, and whether it is right.

Semi-supervised training from a weak teacher can sit in a "stuck phase": the confident weak-view
pixels are nearly all background (or "unchanged"), so the unlabelled loss teaches only that class
and pushes the minority classes toward it (docs/benchmarks.md). The mask ratio alone does not show
this (it is high in the stuck phase). These counts do:

- ``confident_share/<class>``: the share of the confident pixels whose pseudo-label is that class
  (sums to 1 over classes); compare it with the class's share of the pixels;
- with labels of the unlabelled images loaded *for statistics only* (``pseudo_label_accuracy``):
  ``label_share/<class>`` (the true share of each class among the valid pixels),
  ``confident_accuracy/<class>`` (of the confident pixels whose true class is that class, the share
  whose pseudo-label is right) and ``confident_recall/<class>`` (of all pixels of that true class,
  the share that is confident *and* right: what the unlabelled loss actually teaches about it).

Counts accumulate on the device with ``index_add_`` (no host synchronisation per iteration); the
trainer reads them once per epoch with :meth:`PseudoLabelHealth.summary`.
"""
from __future__ import annotations

import math

import torch

from unimatch.losses import IGNORE_INDEX, confident_and_valid

# rows of the count matrix
CONFIDENT_BY_PREDICTED, PIXELS_BY_TRUE, CONFIDENT_BY_TRUE, CORRECT_BY_TRUE = range(4)


class PseudoLabelHealth:
    """Per-class counts of confident pseudo-labels over one epoch (see the module docstring)."""

    def __init__(self, nclass: int, device: torch.device | str = "cpu"):
        self.nclass = nclass
        self.counts = torch.zeros(4, nclass, dtype=torch.int64, device=device)
        self.valid_pixels = torch.zeros((), dtype=torch.int64, device=device)
        self.seen_labels = False

    @torch.no_grad()
    def update(self, pseudo_label: torch.Tensor, confidence: torch.Tensor, ignore_mask: torch.Tensor,
               conf_thresh: float, label_for_stats: torch.Tensor | None = None) -> None:
        """Add one batch: pseudo-labels (N,H,W), their confidence, the ignore mask (255 = padding) and,
        optionally, the true labels of the same pixels (255 = unknown), used for nothing but these counts."""
        valid = ignore_mask != IGNORE_INDEX
        confident = confident_and_valid(confidence, conf_thresh, valid)
        self.valid_pixels += valid.sum()
        self.counts[CONFIDENT_BY_PREDICTED].index_add_(0, pseudo_label.flatten(), confident.flatten().long())
        if label_for_stats is None:
            return
        self.seen_labels = True
        known = valid & (label_for_stats != IGNORE_INDEX)
        truth = torch.where(known, label_for_stats, torch.zeros_like(label_for_stats)).flatten()
        confident_known = confident & known
        self.counts[PIXELS_BY_TRUE].index_add_(0, truth, known.flatten().long())
        self.counts[CONFIDENT_BY_TRUE].index_add_(0, truth, confident_known.flatten().long())
        self.counts[CORRECT_BY_TRUE].index_add_(0, truth, (confident_known & (pseudo_label == label_for_stats))
                                                .flatten().long())

    def reset(self) -> None:
        self.counts.zero_()
        self.valid_pixels.zero_()

    def summary(self, class_names: list[str] | None = None, reset: bool = True) -> dict[str, float]:
        """The epoch's shares as flat ``health/...`` floats (NaN where a class has no pixel), summed over
        ranks when distributed; then the counts restart (``reset``)."""
        counts = torch.cat((self.counts.flatten(), self.valid_pixels.view(1)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        counts = counts.cpu().tolist()
        valid = counts[-1]
        rows = [counts[r * self.nclass:(r + 1) * self.nclass] for r in range(4)]
        names = list(class_names) if class_names else [str(c) for c in range(self.nclass)]
        confident_total = sum(rows[CONFIDENT_BY_PREDICTED])
        out = {"health/confident_ratio": ratio(confident_total, valid)}
        for c, name in enumerate(names):
            out[f"health/confident_share/{name}"] = ratio(rows[CONFIDENT_BY_PREDICTED][c], confident_total)
        if self.seen_labels:
            known_total = sum(rows[PIXELS_BY_TRUE])
            for c, name in enumerate(names):
                out[f"health/label_share/{name}"] = ratio(rows[PIXELS_BY_TRUE][c], known_total)
                out[f"health/confident_accuracy/{name}"] = ratio(rows[CORRECT_BY_TRUE][c], rows[CONFIDENT_BY_TRUE][c])
                out[f"health/confident_recall/{name}"] = ratio(rows[CORRECT_BY_TRUE][c], rows[PIXELS_BY_TRUE][c])
        if reset:
            self.reset()
        return out


def describe(summary: dict[str, float]) -> str:
    """One console line: confident ratio, then per class its share of the confident pixels (and, with
    labels, its true share and confident recall), e.g. ``changed 0.1% (true 2.8%, recall 1.3%)``."""
    parts = []
    for key, share in summary.items():
        if not key.startswith("health/confident_share/"):
            continue
        name = key.rsplit("/", 1)[1]
        text = f"{name} {100 * share:.1f}%"
        if f"health/label_share/{name}" in summary:
            text += (f" (true {100 * summary[f'health/label_share/{name}']:.1f}%, "
                     f"recall {100 * summary[f'health/confident_recall/{name}']:.1f}%)")
        parts.append(text)
    return (f"confident {100 * summary['health/confident_ratio']:.1f}% of pixels; share of confident: "
            + ", ".join(parts))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
