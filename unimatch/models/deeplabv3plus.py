"""DeepLabV3+ with the UniMatch feature-perturbation contract.

Module names follow the official UniMatch code (``backbone``, ``head``, ``reduce``, ``fuse``,
``classifier``) so its released checkpoints load key for key.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimatch.models.backbones import build_backbone


def feature_perturbation(features: torch.Tensor, copies: int = 1, p: float = 0.5) -> torch.Tensor:
    """``features`` followed by ``copies`` independently channel-dropped copies, on the batch axis.

    Dropout2d zeroes whole channels (and rescales the rest by 1/(1-p)); it is applied even in
    eval mode because it *is* the perturbation, not a regulariser.
    """
    return torch.cat([features] + [F.dropout2d(features, p, training=True) for _ in range(int(copies))])


def split_fp_logits(logits: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`feature_perturbation` on the decoded logits: (clean, all FP copies)."""
    n = logits.shape[0] // (int(copies) + 1)
    return logits[:n], logits[n:]


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(True))


class ASPPPooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), nn.ReLU(True))

    def forward(self, x):
        return F.interpolate(self.gap(x), x.shape[-2:], mode="bilinear", align_corners=True)


class ASPPModule(nn.Module):
    """Atrous spatial pyramid pooling; output channels = in_channels // 8 as in the official code."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int]):
        super().__init__()
        out_channels = in_channels // 8
        rate1, rate2, rate3 = atrous_rates
        self.b0 = conv_bn_relu(in_channels, out_channels)
        self.b1 = conv_bn_relu(in_channels, out_channels, 3, rate1)
        self.b2 = conv_bn_relu(in_channels, out_channels, 3, rate2)
        self.b3 = conv_bn_relu(in_channels, out_channels, 3, rate3)
        self.b4 = ASPPPooling(in_channels, out_channels)
        # no dropout here: the official ASPP has none, and its only channel dropout is the FP stream
        self.project = conv_bn_relu(5 * out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x):
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the high-level features, fused with the reduced stride-4 features.

    A base class rather than a submodule so that ``head``, ``reduce``, ``fuse`` and
    ``classifier`` sit at the top level of the state dict, as in the official checkpoints;
    the plain and the siamese DeepLabV3+ both inherit it.
    """

    def __init__(self, low_channels: int, high_channels: int, nclass: int, dilations: Sequence[int],
                 reduce_channels: int = 48, decoder_channels: int = 256):
        super().__init__()
        self.head = ASPPModule(high_channels, dilations)
        self.reduce = conv_bn_relu(low_channels, reduce_channels)
        # one flat Sequential (conv, bn, relu, conv, bn, relu): keys fuse.0/1/3/4 as the official checkpoints
        self.fuse = nn.Sequential(*conv_bn_relu(self.head.out_channels + reduce_channels, decoder_channels, 3),
                                  *conv_bn_relu(decoder_channels, decoder_channels, 3))
        self.classifier = nn.Conv2d(decoder_channels, nclass, 1, bias=True)

    def decode(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        c4 = self.head(c4)
        c4 = F.interpolate(c4, size=c1.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([self.reduce(c1), c4], dim=1)))

    def decode_to(self, size, c1: torch.Tensor, c4: torch.Tensor, need_fp: bool | int):
        """Decode (with ``int(need_fp)`` FP streams when asked) and upsample the logits to ``size``."""
        if need_fp:
            logits = self.decode(feature_perturbation(c1, need_fp), feature_perturbation(c4, need_fp))
            return split_fp_logits(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), need_fp)
        return F.interpolate(self.decode(c1, c4), size=size, mode="bilinear", align_corners=True)

    def param_groups(self):
        """(backbone parameters, head parameters): the head gets ``lr * lr_multi``."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


class DeepLabV3Plus(DeepLabV3PlusHead):
    """``model(x) -> logits``; ``model(x, need_fp=True) -> (logits, logits_fp)``.

    ``need_fp=k`` (an int) decodes k independently perturbed copies; ``logits_fp`` then holds
    them one after the other on the batch axis.

    The FP stream drops channels of both decoder inputs (stride-4 ``c1`` and high-level ``c4``)
    and is decoded in the same forward as the clean features, exactly as the paper's code does.
    """

    def __init__(self, nclass: int, backbone: str = "resnet50", pretrained=None,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, True),
                 dilations: Sequence[int] = (6, 12, 18), deep_stem: bool = True, in_channels: int = 3,
                 width: int = 64, reduce_channels: int = 48, decoder_channels: int = 256, multi_grid: bool = False):
        encoder = build_backbone(backbone, pretrained, replace_stride_with_dilation, deep_stem, in_channels, width,
                                 multi_grid)
        super().__init__(encoder.channels[0], encoder.channels[-1], nclass, dilations,
                         reduce_channels, decoder_channels)
        self.backbone = encoder

    def forward(self, x: torch.Tensor, need_fp: bool = False):
        c1, _, _, c4 = self.backbone.base_forward(x)
        return self.decode_to(x.shape[-2:], c1, c4, need_fp)
