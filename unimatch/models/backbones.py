"""ResNet encoders for segmentation: the official deep-stem flavour and the torchvision flavour.

One class serves both so that a state dict saved by the official UniMatch code (deep stem:
``conv1.0/1/3/4/6`` + ``bn1``) or by torchvision (7x7 ``conv1`` + ``bn1``) loads key for key.
``width`` scales every stage so tests can build a model of a few thousand parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from unimatch.checkpoint import load_checkpoint
from unimatch.errors import CheckpointError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without classifier; ``base_forward`` returns the four stage outputs."""

    def __init__(self, block, layers: Sequence[int], deep_stem: bool = True, in_channels: int = 3,
                 width: int = 64, replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 multi_grid: bool = False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs 3 booleans (layer2, layer3, layer4)")
        self.deep_stem = deep_stem
        self.dilation = 1
        if deep_stem:
            self.inplanes = 2 * width
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                norm_layer(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride=1, padding=1, bias=False),
                norm_layer(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, 2 * width, 3, stride=1, padding=1, bias=False),
            )
        else:
            self.inplanes = width
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], 1, False, norm_layer)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2, replace_stride_with_dilation[0], norm_layer)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2, replace_stride_with_dilation[1], norm_layer)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2, replace_stride_with_dilation[2], norm_layer,
                                       multi_grid)
        self.channels = tuple(m * width * block.expansion for m in (1, 2, 4, 8))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride, dilate, norm_layer, multi_grid=False):
        """``multi_grid`` multiplies the dilations of layer4's three blocks by (2, 2, 4), as the
        official Cityscapes setting does."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        grids = [2, 2, 4] if multi_grid else [1] * blocks
        if len(grids) != blocks:
            raise ValueError(f"multi_grid needs a 3-block layer4, this one has {blocks} blocks")
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation * grids[0], norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation * grids[i], norm_layer=norm_layer)
                   for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def base_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.base_forward(x)


ARCHITECTURES = {
    "tiny": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights",
}
CLASSIFIER_PREFIXES = ("fc.",)


def strip_wrappers(state_dict: dict) -> dict:
    """Unwrap ``{'model': ...}``/``{'state_dict': ...}`` and drop the DDP ``module.`` prefix."""
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_backbone_weights(backbone: ResNet, source: str | Path) -> None:
    """Load ImageNet weights into ``backbone`` from a local file, or from torchvision's download.

    ``source`` is a path to ``resnet50.pth``-style files (official deep stem) or torchvision
    checkpoints, or the word ``torchvision`` to download torchvision's IMAGENET1K_V1 weights.
    Every backbone key must be filled; the file's ImageNet classifier keys are ignored and any
    other mismatch is an error, so a wrong file never trains silently from random weights.
    """
    if str(source) == "torchvision":
        if backbone.deep_stem:
            raise CheckpointError("torchvision weights fit only backbone_variant: torchvision "
                                  "(7x7 stem); the deep-stem ResNet needs the official resnet50.pth/resnet101.pth file")
        if backbone.arch not in TORCHVISION_WEIGHTS or backbone.channels[0] != 64 * (
                4 if backbone.arch in ("resnet50", "resnet101") else 1):
            raise CheckpointError(f"torchvision has ImageNet weights for {sorted(TORCHVISION_WEIGHTS)} at width 64 "
                                  f"only, not for backbone {backbone.arch!r} of this width")
        import torchvision.models as tvm
        weights = getattr(tvm, TORCHVISION_WEIGHTS[backbone.arch]).IMAGENET1K_V1
        state_dict = weights.get_state_dict(progress=True)
        origin = f"torchvision {weights}"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CheckpointError(f"pretrained weights file not found: {path}. Give a path to resnet50.pth / "
                                  f"resnet101.pth (official, linked from the UniMatch repository's README) or a "
                                  f"torchvision checkpoint, pretrained=torchvision deep_stem=false to download "
                                  f"torchvision's, or pretrained=null to train from scratch")
        state_dict = load_checkpoint(path, what="pretrained weights file")
        origin = str(path)
    state_dict = {k: v for k, v in strip_wrappers(state_dict).items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"pretrained weights {origin} do not fit backbone {backbone.arch} "
            f"(deep_stem={backbone.deep_stem}): missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}, shape mismatch {wrong_shape[:5]}")
    backbone.load_state_dict(state_dict, strict=False)


def build_backbone(name: str = "resnet50", pretrained: str | Path | None = None,
                   replace_stride_with_dilation: Sequence[bool] = (False, False, True),
                   deep_stem: bool = True, in_channels: int = 3, width: int = 64,
                   multi_grid: bool = False) -> ResNet:
    """A ResNet trunk by name (``tiny``, ``resnet18/34/50/101``), optionally with ImageNet weights."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(ARCHITECTURES)}")
    block, layers = ARCHITECTURES[name]
    backbone = ResNet(block, layers, deep_stem=deep_stem, in_channels=in_channels, width=width,
                      replace_stride_with_dilation=replace_stride_with_dilation, multi_grid=multi_grid)
    backbone.arch = name
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    return backbone
