"""Distribution alignment of pseudo-labels (ReMixMatch, Berthelot et al. 2020), per pixel.

Not in UniMatch; an opt-in extension (``dist_align``, off in every official config) aimed at the
failure measured on the synthetic sets (docs/benchmarks.md): a from-scratch teacher predicts the
minority classes far less often than they occur (0.04% "changed" pixels among the confident ones
against 2.8% true), so its confident pseudo-labels teach the majority class only. Alignment scales
each weak-view probability vector by ``label_prior / model_prior`` and renormalises, where
``label_prior`` is the running class frequency of the labelled masks and ``model_prior`` the running
mean of the model's raw softmax on the unlabelled pixels. A class the model under-predicts gets
boosted until its predicted frequency matches the labelled one; then the ratio returns to 1.

Running means are exponential (``momentum`` per iteration) and live on the device (no host sync).
"""
from __future__ import annotations

import torch

from unimatch.losses import IGNORE_INDEX


class DistributionAlignment:
    def __init__(self, nclass: int, momentum: float = 0.99):
        self.nclass, self.momentum = nclass, momentum
        self.label_prior: torch.Tensor | None = None
        self.model_prior: torch.Tensor | None = None

    def _ema(self, current: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if current is None else self.momentum * current + (1 - self.momentum) * new

    @torch.no_grad()
    def observe_labels(self, mask: torch.Tensor) -> None:
        """Class frequencies of a labelled batch (255 = ignore is not counted)."""
        known = mask != IGNORE_INDEX
        counts = torch.zeros(self.nclass, device=mask.device).index_add_(
            0, torch.where(known, mask, torch.zeros_like(mask)).flatten(), known.flatten().float())
        self.label_prior = self._ema(self.label_prior, counts / counts.sum().clamp_min(1))

    @torch.no_grad()
    def observe_predictions(self, prob: torch.Tensor, valid: torch.Tensor) -> None:
        """Mean softmax (N, C, H, W) over the valid pixels (N, H, W) of an unlabelled batch."""
        weight = valid.unsqueeze(1).float()
        mean = (prob * weight).sum((0, 2, 3)) / weight.sum().clamp_min(1)
        self.model_prior = self._ema(self.model_prior, mean)

    @torch.no_grad()
    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        ratio = self.label_prior / self.model_prior.clamp_min(1e-6)
        aligned = prob * ratio.view(1, -1, 1, 1)
        return aligned / aligned.sum(1, keepdim=True)

    def state_dict(self) -> dict:
        return {"label_prior": self.label_prior, "model_prior": self.model_prior}

    def load_state_dict(self, state: dict) -> None:
        self.label_prior, self.model_prior = state["label_prior"], state["model_prior"]
