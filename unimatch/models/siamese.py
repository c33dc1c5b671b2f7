"""Siamese models of bi-temporal pairs: one shared encoder for both dates, decoded from |f(A) - f(B)|.

The input is the two dates stacked on the channel axis, ``x = (N, 2C, H, W)`` (A's C bands then
B's), so the UniMatch step handles a pair like any image. The backbone runs on A and on B in
two separate forwards (as the official code does: BatchNorm statistics are per date in training).

Feature perturbation: ``need_fp`` applies Dropout2d(0.5) to the *difference* features the
decoder uses (DeepLabV3+: low-level c1 and high-level c4; PSPNet: c4) and decodes the clean and
the perturbed copies in one forward, returning ``(logits, logits_fp)``; ``need_fp=k`` decodes k
perturbed copies (stacked on the batch axis of ``logits_fp``).

Module names equal the official UniMatch remote-sensing models (``backbone``, ``head``,
``reduce``, ``fuse``, ``classifier``; PSPNet ``head.conv5``), so its released checkpoints
(``{'model': state_dict}``, keys prefixed ``module.``) load key for key once the prefix is removed.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unimatch.models.backbones import build_backbone
from unimatch.models.deeplabv3plus import DeepLabV3PlusHead
from unimatch.models.pspnet import PSPHead, decode_with_fp, split_param_groups


def split_dates(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) halves of the channel axis of a stacked pair."""
    if x.dim() != 4 or x.shape[1] % 2:
        raise ValueError(f"a siamese model takes (N, 2C, H, W): the two dates stacked on the channel axis; "
                         f"got shape {tuple(x.shape)}")
    return x.chunk(2, dim=1)


def siamese_backbone(backbone: str, pretrained, replace_stride_with_dilation, deep_stem: bool, in_channels: int,
                     width: int, multi_grid: bool) -> nn.Module:
    """The encoder shared by both dates: ``in_channels`` counts both, so it reads half of them."""
    if in_channels % 2:
        raise ValueError(f"in_channels counts both dates and must be even, got {in_channels}")
    return build_backbone(backbone, pretrained, replace_stride_with_dilation, deep_stem, in_channels // 2, width,
                          multi_grid)


class SiameseEncoder:
    """Mixin for a model with a shared ``backbone``: absolute feature differences of the two dates."""

    def difference_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """|f(A) - f(B)| for every backbone stage [c1, c2, c3, c4]."""
        image_a, image_b = split_dates(x)
        features_a = self.backbone.base_forward(image_a)
        features_b = self.backbone.base_forward(image_b)
        return [(fa - fb).abs() for fa, fb in zip(features_a, features_b)]

    def param_groups(self):
        """(backbone parameters, the others): the head gets ``lr * lr_multi``."""
        return split_param_groups(self)


class SiameseDeepLabV3Plus(SiameseEncoder, DeepLabV3PlusHead):
    """Siamese DeepLabV3+ (the official remote-sensing model): ASPP on |c4 diff|, fused with |c1 diff|.

    The decoder (``head``, ``reduce``, ``fuse``, ``classifier``, the FP decoding) is the plain
    DeepLabV3+'s, inherited, so both models load the same official key names.
    """

    def __init__(self, nclass: int = 2, backbone: str = "resnet101", pretrained=None,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, True),
                 dilations: Sequence[int] = (6, 12, 18), deep_stem: bool = True, in_channels: int = 6,
                 width: int = 64, reduce_channels: int = 48, decoder_channels: int = 256, multi_grid: bool = False):
        encoder = siamese_backbone(backbone, pretrained, replace_stride_with_dilation, deep_stem, in_channels, width,
                                   multi_grid)
        super().__init__(encoder.channels[0], encoder.channels[-1], nclass, dilations, reduce_channels,
                         decoder_channels)
        self.backbone = encoder
        # the official checkpoints list the backbone first; keep their key order, not only their names
        self._modules = {"backbone": self._modules.pop("backbone"), **self._modules}

    def forward(self, x: torch.Tensor, need_fp: bool | int = False):
        c1, _, _, c4 = self.difference_features(x)
        return self.decode_to(x.shape[-2:], c1, c4, int(need_fp))


class SiamesePSPNet(SiameseEncoder, nn.Module):
    """Siamese PSPNet (the official remote-sensing model): pyramid pooling head on |c4 diff|."""

    def __init__(self, nclass: int = 2, backbone: str = "resnet50", pretrained=None,
                 replace_stride_with_dilation: Sequence[bool] = (False, True, True), deep_stem: bool = True,
                 in_channels: int = 6, width: int = 64, multi_grid: bool = False):
        super().__init__()
        self.backbone = siamese_backbone(backbone, pretrained, replace_stride_with_dilation, deep_stem, in_channels,
                                         width, multi_grid)
        self.head = PSPHead(self.backbone.channels[-1], nclass)

    def forward(self, x: torch.Tensor, need_fp: bool | int = False):
        c4 = self.difference_features(x)[-1]
        return decode_with_fp(self.head, c4, x.shape[-2:], need_fp)

