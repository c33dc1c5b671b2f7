"""2-D inference as the official evaluation does it: whole image, centre crop, or sliding window.

Shared by every 2-D task (natural images, change-detection tiles); the task supplies the data.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unimatch.errors import DataError
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.perturb import Normalizer, to_unit_float

EVAL_MODES = ("original", "center_crop", "sliding_window")


def center_crop_box(height: int, width: int, crop: int, sample_id: str = "") -> tuple[int, int]:
    if height < crop or width < crop:
        raise DataError(f"{sample_id}: image is {height}x{width}, smaller than the {crop}x{crop} centre crop; "
                        f"use --mode original or sliding_window for it")
    return (height - crop) // 2, (width - crop) // 2


@torch.no_grad()
def sliding_window_probs(model: nn.Module, image: torch.Tensor, window: int, nclass: int) -> torch.Tensor:
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


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, mode: str, crop_size: int, nclass: int,
            sample_id: str = "") -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Class scores for a normalised batch; returns (scores, crop origin or None)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode {mode!r} is not one of {EVAL_MODES}")
    if mode == "sliding_window":
        return sliding_window_probs(model, image, crop_size, nclass), None
    if mode == "center_crop":
        top, left = center_crop_box(image.shape[-2], image.shape[-1], crop_size, sample_id)
        image = image[:, :, top:top + crop_size, left:left + crop_size]
        return model(image).float(), (top, left)
    return model(image).float(), None


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader, nclass: int, normalizer: Normalizer, mode: str,
                          crop_size: int, device, on_prediction=None, autocast=None) -> ConfusionMatrix:
    """Confusion matrix over ``loader`` of ``(image, mask, id)`` batches, summed over ranks.

    ``on_prediction(sample_id, pred, mask)`` is called per sample (e.g. to save PNGs).
    The DDP wrapper is bypassed: ranks evaluate different numbers of images, and DDP's
    per-forward buffer broadcast would then wait forever for the rank that finished first.
    """
    from unimatch.distributed import unwrap
    model = unwrap(model)
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(nclass, device=device)
    autocast = autocast or torch.autocast("cpu", enabled=False)
    for image, mask, ids in loader:
        image = normalizer(to_unit_float(image.to(device, non_blocking=True)))
        mask = mask.to(device, non_blocking=True)
        with autocast:
            scores, origin = predict(model, image, mode, crop_size, nclass, ids[0])
        if origin is not None:
            top, left = origin
            mask = mask[:, top:top + crop_size, left:left + crop_size]
        pred = scores.argmax(1)
        confusion.update(pred, mask)
        if on_prediction is not None:
            for i, sample_id in enumerate(ids):
                on_prediction(sample_id, pred[i], mask[i])
    model.train(was_training)
    return confusion.all_reduce()
