"""What a state dict says about the architecture that produced it, so a checkpoint that does not
fit the model built from a config can be explained in config keys ("the checkpoint has 21
classes, the config says nclass: 19") instead of hundreds of key names.

Facts are read from the key families and shapes every model of :data:`unimatch.models.MODELS`
has: the ResNet trunk (``backbone.conv1``, ``backbone.layerN.K``) or the ViT (``backbone.blocks.N``,
its width), the classifier, the UNet's encoder convolutions, the DeepLabV3+ decoder. Keys are those after
:func:`unimatch.models.backbones.strip_wrappers`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from unimatch.models.backbones import ARCHITECTURES, Bottleneck
from unimatch.models.vit import describe_vit

CLASSIFIERS = ("classifier.weight", "head.conv5.5.weight", "decoder.out_conv.weight",
               "head.scratch.output_conv.2.weight")
FIRST_CONVOLUTIONS = ("backbone.conv1.0.weight", "backbone.conv1.weight", "encoder.in_conv.conv_conv.0.weight",
                      "backbone.patch_embed.proj.weight")
UNET_ENCODER = ("encoder.in_conv.conv_conv.0.weight",
                *(f"encoder.down{i}.maxpool_conv.1.conv_conv.0.weight" for i in range(1, 5)))
_BLOCK = re.compile(r"^backbone\.layer([1-4])\.(\d+)\.")


def _shape(state_dict: Mapping[str, Any], key: str):
    value = state_dict.get(key)
    return tuple(value.shape) if hasattr(value, "shape") else None


def resnet_name(blocks: tuple, bottleneck: bool) -> str | None:
    """The :data:`ARCHITECTURES` name of a trunk with ``blocks`` per stage, if it is one of them."""
    for name, (block, layers) in ARCHITECTURES.items():
        if tuple(layers) == blocks and (block is Bottleneck) == bottleneck:
            return name
    return None


def architecture_of(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The config-level facts a state dict shows: ``model`` (family), ``backbone`` (a ResNet with
    ``blocks`` per stage, or a ViT's size), ``deep_stem``, ``width``, ``in_channels`` (of the first convolution),
    ``nclass``, ``feature_channels`` (UNet), ``reduce_channels`` and ``decoder_channels``
    (DeepLabV3+); a fact the keys do not show is absent."""
    facts: dict[str, Any] = {}
    if "encoder.in_conv.conv_conv.0.weight" in state_dict:
        facts["model"] = "UNet"
    elif any(k.startswith("head.conv5.") for k in state_dict):
        facts["model"] = "PSPNet"
    elif any(k.startswith("head.b0.") for k in state_dict):
        facts["model"] = "DeepLabV3+"
    elif any(k.startswith("head.scratch.") for k in state_dict):
        facts["model"] = "DPT"
    vit = describe_vit({k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")})
    if vit:
        facts["backbone"] = vit
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = _BLOCK.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    if all(blocks):
        bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
        facts["blocks"] = tuple(blocks)
        facts["backbone"] = resnet_name(tuple(blocks), bottleneck) or (
            f"{'Bottleneck' if bottleneck else 'BasicBlock'} ResNet with {tuple(blocks)} blocks")
    if "backbone.conv1.0.weight" in state_dict or "backbone.conv1.weight" in state_dict:
        facts["deep_stem"] = "backbone.conv1.0.weight" in state_dict
    width = _shape(state_dict, "backbone.layer1.0.conv1.weight")
    if width:
        facts["width"] = width[0]
    first = next((_shape(state_dict, k) for k in FIRST_CONVOLUTIONS if k in state_dict), None)
    if first and len(first) == 4:
        facts["in_channels"] = first[1]
    classifier = next((_shape(state_dict, k) for k in CLASSIFIERS if k in state_dict), None)
    if classifier:
        facts["nclass"] = classifier[0]
    unet = [_shape(state_dict, k) for k in UNET_ENCODER]
    if all(unet):
        facts["feature_channels"] = [shape[0] for shape in unet]
    for fact, key in (("reduce_channels", "reduce.0.weight"), ("decoder_channels", "fuse.0.weight")):
        shape = _shape(state_dict, key)
        if shape:
            facts[fact] = shape[0]
    return facts


def _display(backbone: str) -> str:
    """``resnet50`` -> ``ResNet-50``, ``tiny`` -> ``tiny ResNet``; other descriptions unchanged."""
    if backbone.startswith("resnet"):
        return backbone.replace("resnet", "ResNet-")
    return f"{backbone} ResNet" if backbone in ARCHITECTURES else backbone


def _stage3(blocks: tuple) -> str:
    return f"layer3 blocks 0..{blocks[2] - 1}"


def mismatch_causes(checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """Why the ``checkpoint`` state dict does not fit the ``model`` built from the config, in config
    keys, most likely cause first; empty when the facts agree (then only the key listing helps)."""
    saved, built = architecture_of(checkpoint), architecture_of(model)
    if "model" in saved and "model" in built and saved["model"] != built["model"]:
        return [f"the checkpoint is a {saved['model']}, the config builds a {built['model']} (model)"]
    causes = []

    def differs(fact: str) -> bool:
        return fact in saved and fact in built and saved[fact] != built[fact]

    if differs("backbone") and "blocks" not in saved:
        causes.append(f"the checkpoint's backbone is {saved['backbone']}, the config builds {built['backbone']} "
                      f"(backbone)")
    elif differs("backbone"):
        causes.append(f"the checkpoint's backbone is a {_display(saved['backbone'])} ({_stage3(saved['blocks'])}), "
                      f"the config says backbone: {built['backbone']} ({_stage3(built['blocks'])})")
    if differs("deep_stem"):
        stem = "the deep 3-convolution stem" if saved["deep_stem"] else "the 7x7 stem"
        causes.append(f"the checkpoint's backbone has {stem}, the config says deep_stem: "
                      f"{str(built['deep_stem']).lower()}")
    if differs("width"):
        causes.append(f"the checkpoint's backbone is {saved['width']} channels wide, the config says width: "
                      f"{built['width']}")
    if differs("in_channels"):
        causes.append(f"the checkpoint's first convolution reads {saved['in_channels']} channel(s), the model built "
                      f"from the config reads {built['in_channels']} (in_channels)")
    if differs("nclass"):
        causes.append(f"the checkpoint has {saved['nclass']} classes, the config says nclass: {built['nclass']}")
    if differs("feature_channels"):
        a, b = saved["feature_channels"], built["feature_channels"]
        causes.append(f"the checkpoint's UNet has {a[0]}..{a[-1]} feature channels ({a}), the config says "
                      f"feature_channels: {b}")
    for fact in ("reduce_channels", "decoder_channels"):
        if differs(fact):
            causes.append(f"the checkpoint's decoder has {fact} {saved[fact]}, the config says {fact}: {built[fact]}")
    return causes
