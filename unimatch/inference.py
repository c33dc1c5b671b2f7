"""Inference: the :class:`Predictor` every evaluation and every ``predict`` command uses, and the
2-D modes of the official evaluation (whole image, centre crop, sliding window).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from unimatch.config import EVAL_MODES
from unimatch.distributed import unwrap
from unimatch.errors import DataError
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.perturb import Normalizer, to_unit_float
from unimatch.precision import autocast_for, to_memory_format

class Predictor:
    """A model as a function of raw images: uint8 (or [0, 1] float) batches -> float32 logits.

    The one place where inference normalises, picks autocast and the batches' memory format (both
    from :mod:`unimatch.precision`, as in training; the model's own format is set where it is
    built, never here, since training shares it), and runs without autograd, so evaluation during training,
    ``evaluate`` and every ``predict`` see the same numbers. The DDP wrapper is bypassed: ranks
    evaluate different numbers of images, and DDP's per-forward buffer broadcast would then wait
    forever for the rank that finished first.
    """

    def __init__(self, model: nn.Module, cfg, device: torch.device):
        self.model, self.device = unwrap(model), device
        self.normalizer = Normalizer(cfg.mean, cfg.std, cfg.in_channels)
        self.autocast = autocast_for(cfg.amp, device)
        self.channels_last = bool(getattr(cfg, "channels_last", False))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(to_unit_float(images.to(self.device, non_blocking=True)))
        return to_memory_format(x, self.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised batch (float32 whatever the autocast precision)."""
        with self.autocast:
            return self.model(x).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(self.normalize(images))

    @contextlib.contextmanager
    def evaluating(self):
        """The model in eval mode for the block, then back in the mode it was in."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield self
        finally:
            self.model.train(was_training)


def center_crop_box(height: int, width: int, crop: int, sample_id: str = "") -> tuple[int, int]:
    if height < crop or width < crop:
        raise DataError(f"{sample_id}: image is {height}x{width}, smaller than the {crop}x{crop} centre crop; "
                        f"use --mode original or sliding_window for it")
    return (height - crop) // 2, (width - crop) // 2


@torch.inference_mode()
def sliding_window_probs(model, image: torch.Tensor, window: int, nclass: int) -> torch.Tensor:
    """Sum of softmax over windows with stride 2/3 of the window, truncated at the borders
    (the official scheme, so our numbers equal theirs)."""
    b, _, h, w = image.shape
    total = image.new_zeros(b, nclass, h, w, dtype=torch.float32)
    stride = max(1, int(window * 2 / 3))
    row = 0
    while row < h:
        col = 0
        while col < w:
            tile = image[:, :, row:min(h, row + window), col:min(w, col + window)]
            total[:, :, row:min(h, row + window), col:min(w, col + window)] += model(tile).float().softmax(1)
            col += stride
        row += stride
    return total


@torch.inference_mode()
def predict(model, image: torch.Tensor, mode: str, crop_size: int, nclass: int,
            sample_id: str = "") -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Class scores for a normalised batch; returns (scores, crop origin or None).

    ``model`` maps a normalised batch to logits (:meth:`Predictor.forward`)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode {mode!r} is not one of {EVAL_MODES}")
    if mode == "sliding_window":
        return sliding_window_probs(model, image, crop_size, nclass), None
    if mode == "center_crop":
        top, left = center_crop_box(image.shape[-2], image.shape[-1], crop_size, sample_id)
        image = image[:, :, top:top + crop_size, left:left + crop_size]
        return model(image).float(), (top, left)
    return model(image).float(), None


def evaluate_segmentation(predictor: Predictor, loader, nclass: int, mode: str, crop_size: int,
                          on_prediction=None) -> ConfusionMatrix:
    """Confusion matrix over ``loader`` of ``(image, mask, id)`` batches, summed over ranks.

    ``on_prediction(sample_id, pred, mask)`` is called per sample (e.g. to save PNGs).
    """
    confusion = ConfusionMatrix(nclass, device=predictor.device)
    with predictor.evaluating():
        for image, mask, ids in loader:
            mask = mask.to(predictor.device, non_blocking=True)
            scores, origin = predict(predictor.forward, predictor.normalize(image), mode, crop_size, nclass, ids[0])
            if origin is not None:
                top, left = origin
                mask = mask[:, top:top + crop_size, left:left + crop_size]
            pred = scores.argmax(1)
            confusion.update(pred, mask)
            if on_prediction is not None:
                for i, sample_id in enumerate(ids):
                    on_prediction(sample_id, pred[i], mask[i])
    return confusion.all_reduce()
