"""Dataset-level confusion matrix: IoU, mIoU, OA, precision/recall/F1, Cohen's kappa.

Accumulating one matrix over the whole evaluation set (and summing it across ranks) gives the
same IoU as the official ``intersectionAndUnion`` sums, and every other score for free.
"""
from __future__ import annotations

import torch

from unimatch.losses import IGNORE_INDEX


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class t predicted as p (ignore pixels skipped)."""

    def __init__(self, nclass: int, device=None):
        self.nclass = nclass
        self.matrix = torch.zeros(nclass, nclass, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (int(t.max()) >= self.nclass or int(p.max()) >= self.nclass or int(t.min()) < 0):
            raise ValueError(f"class ids must be < nclass={self.nclass} (or {IGNORE_INDEX} for ignore)")
        counts = torch.bincount(t * self.nclass + p, minlength=self.nclass ** 2)
        self.matrix += counts.view(self.nclass, self.nclass).to(self.matrix)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum over ranks (no-op when not distributed); every rank then reports the same scores."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)
        return self

    def _ratio(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))

    def iou(self) -> torch.Tensor:
        tp = self.matrix.diag()
        return self._ratio(tp, self.matrix.sum(0) + self.matrix.sum(1) - tp)

    def miou(self) -> float:
        """Mean IoU over all ``nclass`` classes; a class absent from both ground truth and
        prediction counts as 0, exactly as the official ``intersection / (union + 1e-10)`` does,
        so our mIoU equals the published one even on a split that lacks a class."""
        return float(torch.nan_to_num(self.iou(), nan=0.0).mean())

    def overall_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum() / total) if total > 0 else float("nan")

    def precision(self) -> torch.Tensor:
        return self._ratio(self.matrix.diag(), self.matrix.sum(0))

    def recall(self) -> torch.Tensor:
        return self._ratio(self.matrix.diag(), self.matrix.sum(1))

    def f1(self) -> torch.Tensor:
        p, r = self.precision(), self.recall()
        return self._ratio(2 * p * r, p + r)

    def kappa(self) -> float:
        total = self.matrix.sum()
        if total == 0:
            return float("nan")
        observed = self.matrix.diag().sum() / total
        expected = (self.matrix.sum(0) * self.matrix.sum(1)).sum() / total ** 2
        return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")
