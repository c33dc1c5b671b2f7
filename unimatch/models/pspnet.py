"""PSPNet head (pyramid pooling) and the FP decoding the siamese PSPNet (:mod:`unimatch.models.siamese`) uses.

Module names follow the official UniMatch remote-sensing code (``head.conv5.0`` = pyramid
pooling with ``conv1..conv4``, ``head.conv5.1/2`` = 3x3 conv + BN, ``head.conv5.5`` = classifier)
so its released checkpoints load key for key.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimatch.models.deeplabv3plus import feature_perturbation, split_fp_logits

POOL_SIZES = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Input concatenated with four pooled (1, 2, 3, 6 bins) and re-upsampled views: 2x the channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        out_channels = in_channels // 4
        for index, bins in enumerate(POOL_SIZES, 1):
            setattr(self, f"pool{index}", nn.AdaptiveAvgPool2d(bins))
            setattr(self, f"conv{index}", nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                                        nn.BatchNorm2d(out_channels), nn.ReLU(True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(getattr(self, f"conv{i}")(getattr(self, f"pool{i}")(x)), size, mode="bilinear",
                                align_corners=True) for i in range(1, len(POOL_SIZES) + 1)]
        return torch.cat([x] + pooled, 1)


class PSPHead(nn.Module):
    """Pyramid pooling, 3x3 conv to in_channels/4, dropout 0.1, 1x1 classifier (official layout)."""

    def __init__(self, in_channels: int, nclass: int):
        super().__init__()
        inter_channels = in_channels // 4
        self.conv5 = nn.Sequential(PyramidPooling(in_channels),
                                   nn.Conv2d(in_channels * 2, inter_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(inter_channels),
                                   nn.ReLU(True),
                                   nn.Dropout(0.1, False),
                                   nn.Conv2d(inter_channels, nclass, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(x)


def decode_with_fp(head: nn.Module, features: torch.Tensor, size, need_fp: bool | int):
    """Logits at ``size``; with ``need_fp=k`` also those of k channel-dropped copies, in one forward."""
    if need_fp:
        logits = head(feature_perturbation(features, int(need_fp)))
        return split_fp_logits(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), int(need_fp))
    return F.interpolate(head(features), size=size, mode="bilinear", align_corners=True)


def split_param_groups(model: nn.Module):
    """(backbone parameters, the others): the head gets ``lr * lr_multi``."""
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    return backbone, [p for p in model.parameters() if id(p) not in ids]

