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

from unimatch.losses import IGNORE_INDEX, confident_and_valid


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


class ClassAdaptiveThreshold:
    """Per-class confidence thresholds from each class's learning status (FlexMatch, Zhang et al.
    2021, with the status normalised by the class's labelled frequency), per pixel.

    Not in UniMatch; opt-in (``class_thresh``). Targets the measured failure of a from-scratch
    teacher: at the fixed threshold nearly every confident pixel is background, so the rare classes
    never get a pseudo-label. With ``share_c`` the running share of pixels predicted ``c`` with
    confidence >= ``conf_thresh`` and ``prior_c`` the running class frequency of the labelled masks,
    the learning effect is ``e_c = min(share_c / prior_c, 1)``, ``beta_c = e_c / max(e)`` and the threshold
    ``conf_thresh * beta_c / (2 - beta_c)``: a class the teacher is as sure about as its frequency
    warrants keeps ``conf_thresh``; one it is never sure about drops toward 0 (its argmax counts).
    """

    def __init__(self, nclass: int, conf_thresh: float, momentum: float = 0.99):
        self.nclass, self.conf_thresh, self.momentum = nclass, conf_thresh, momentum
        self.priors = DistributionAlignment(nclass, momentum)   # its label prior: labelled frequencies
        self.confident_share: torch.Tensor | None = None

    @torch.no_grad()
    def observe(self, labelled_mask: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor,
                valid: torch.Tensor) -> None:
        self.priors.observe_labels(labelled_mask)
        confident = confident_and_valid(confidence, self.conf_thresh, valid)
        counts = torch.zeros(self.nclass, device=pseudo_label.device).index_add_(
            0, pseudo_label.flatten(), confident.flatten().float())
        share = counts / valid.sum().clamp_min(1)
        self.confident_share = self.priors._ema(self.confident_share, share)

    @torch.no_grad()
    def thresholds(self) -> torch.Tensor:
        prior = self.priors.label_prior
        # a class confident at least as often as it occurs counts as learnt (1), as does one not seen in
        # the labelled batches yet (no evidence that it is rare)
        effect = torch.where(prior > 0, self.confident_share / prior.clamp_min(1e-12), 1.0).clamp(max=1.0)
        beta = effect / effect.max().clamp_min(1e-12)
        return self.conf_thresh * beta / (2 - beta)

    def state_dict(self) -> dict:
        return {"priors": self.priors.state_dict(), "confident_share": self.confident_share}

    def load_state_dict(self, state: dict) -> None:
        self.priors.load_state_dict(state["priors"])
        self.confident_share = state["confident_share"]
