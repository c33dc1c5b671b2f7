"""The 2-D UNet of the UniMatch/SSL4MIS medical experiments.

Module and attribute names follow the official ``more-scenarios/medical/model/unet.py`` so the
released checkpoints load key for key (after stripping DDP's ``module.`` prefix):
``encoder.in_conv``, ``encoder.down1..4`` (``maxpool_conv.1`` is the conv block),
``decoder.up1..4`` (``conv1x1`` a 1x1 convolution, then a parameter-free 2x bilinear upsample,
then ``conv`` the conv block) and ``decoder.out_conv``; a conv block is ``conv_conv`` = [conv, BN, LeakyReLU, Dropout, conv, BN,
LeakyReLU], so its parameters sit at indices 0, 1, 4 and 5.

Contract: ``model(x) -> logits``; ``model(x, need_fp=True) -> (logits, logits_fp)``. The
feature-perturbation stream applies ``Dropout2d(fp_dropout)`` to every encoder feature the
decoder reads (the four skip features and the bottleneck), concatenates clean and dropped
copies along the batch and decodes both in one forward. ``need_fp=k`` (an int) decodes k
independently dropped copies, returned one after the other in ``logits_fp``. As in the official code this dropout
is active in eval mode too: it is a perturbation, not a regulariser.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_FEATURE_CHANNELS = (16, 32, 64, 128, 256)
DEFAULT_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + LeakyReLU, with dropout between them."""

    def __init__(self, in_channels: int, out_channels: int, dropout_p: float):
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout_p),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class DownBlock(nn.Module):
    """2x2 max-pool, then a conv block."""

    def __init__(self, in_channels: int, out_channels: int, dropout_p: float):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, dropout_p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class UpBlock(nn.Module):
    """1x1 conv of the deeper feature to the skip's width, 2x bilinear upsample
    (``align_corners=True``), concatenated after the skip feature, then a conv block.

    This is the official ``UpBlock`` with its default ``bilinear=True``: the official ``Decoder``
    never passes its ``bilinear: False`` parameter on, so the transposed-convolution branch of that
    file is dead code and released checkpoints hold ``conv1x1`` weights.
    """

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, dropout_p: float = 0.0):
        super().__init__()
        self.conv1x1 = nn.Conv2d(deep_channels, skip_channels, kernel_size=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = ConvBlock(skip_channels * 2, out_channels, dropout_p)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(self.conv1x1(deep))], dim=1))


class Encoder(nn.Module):
    def __init__(self, in_chns: int, channels: Sequence[int], dropout: Sequence[float]):
        super().__init__()
        self.in_conv = ConvBlock(in_chns, channels[0], dropout[0])
        self.down1 = DownBlock(channels[0], channels[1], dropout[1])
        self.down2 = DownBlock(channels[1], channels[2], dropout[2])
        self.down3 = DownBlock(channels[2], channels[3], dropout[3])
        self.down4 = DownBlock(channels[3], channels[4], dropout[4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features from full resolution (skip 0) down to the bottleneck (index 4)."""
        x0 = self.in_conv(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        x4 = self.down4(x3)
        return [x0, x1, x2, x3, x4]


class Decoder(nn.Module):
    def __init__(self, channels: Sequence[int], class_num: int):
        super().__init__()
        self.up1 = UpBlock(channels[4], channels[3], channels[3])
        self.up2 = UpBlock(channels[3], channels[2], channels[2])
        self.up3 = UpBlock(channels[2], channels[1], channels[1])
        self.up4 = UpBlock(channels[1], channels[0], channels[0])
        self.out_conv = nn.Conv2d(channels[0], class_num, kernel_size=3, padding=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = features
        x = self.up1(x4, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        x = self.up4(x, x0)
        return self.out_conv(x)


class UNet(nn.Module):
    """UNet with channels ``feature_channels`` (5 levels); input H and W must be divisible by 16."""

    def __init__(self, in_chns: int = 1, class_num: int = 4,
                 feature_channels: Sequence[int] = DEFAULT_FEATURE_CHANNELS,
                 dropout: Sequence[float] = DEFAULT_DROPOUT, fp_dropout: float = 0.5):
        super().__init__()
        if len(feature_channels) != 5 or len(dropout) != 5:
            raise ValueError(f"UNet needs 5 feature channels and 5 dropout rates, got {feature_channels}, {dropout}")
        self.fp_dropout = fp_dropout
        self.encoder = Encoder(in_chns, feature_channels, dropout)
        self.decoder = Decoder(feature_channels, class_num)

    def forward(self, x: torch.Tensor, need_fp: bool | int = False):
        """Logits, or ``(logits, logits_fp)`` with ``int(need_fp)`` perturbed decodings in
        ``logits_fp``, stacked one after the other on the batch axis (``True`` means one)."""
        features = self.encoder(x)
        if not need_fp:
            return self.decoder(features)
        copies = int(need_fp)
        stacked = [torch.cat([f] + [F.dropout2d(f, self.fp_dropout, training=True) for _ in range(copies)])
                   for f in features]
        logits = self.decoder(stacked)
        batch = x.shape[0]
        return logits[:batch], logits[batch:]
