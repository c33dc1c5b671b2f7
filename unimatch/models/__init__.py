"""Model zoo: every model follows ``model(x) -> logits`` / ``model(x, need_fp=k) -> (logits, logits_fp)``.

``MODELS`` maps each ``cfg.model`` name to its builder ``(cfg) -> nn.Module``, the model keys of
the config that builder reads and, where a model accepts only some values of them, a ``check`` that
``Config.validate`` runs (a DPT's ``backbone`` must name a ViT); a new model is one entry here, and
the model-contract test runs on every entry. A model key that the chosen model does not read is
refused when set (``Config.validate``): ``backbone: resnet50`` for the UNet would otherwise train a
UNet silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch.nn as nn

from unimatch.errors import ConfigError


def _backbone_options(cfg) -> dict:
    return dict(backbone=cfg.backbone, pretrained=cfg.pretrained,
                replace_stride_with_dilation=list(cfg.replace_stride_with_dilation), deep_stem=cfg.deep_stem,
                width=cfg.width, in_channels=cfg.in_channels, multi_grid=cfg.multi_grid)


def _deeplabv3plus(cfg) -> nn.Module:
    from unimatch.models.deeplabv3plus import DeepLabV3Plus
    return DeepLabV3Plus(cfg.nclass, dilations=list(cfg.dilations), reduce_channels=cfg.reduce_channels,
                         decoder_channels=cfg.decoder_channels, **_backbone_options(cfg))


def _unet(cfg) -> nn.Module:
    from unimatch.models.unet import UNet
    kwargs = {"feature_channels": list(cfg.feature_channels)} if cfg.feature_channels else {}
    return UNet(in_chns=cfg.in_channels, class_num=cfg.nclass, **kwargs)


def _siamese_deeplabv3plus(cfg) -> nn.Module:
    from unimatch.models.siamese import SiameseDeepLabV3Plus
    return SiameseDeepLabV3Plus(nclass=cfg.nclass, dilations=list(cfg.dilations), reduce_channels=cfg.reduce_channels,
                                decoder_channels=cfg.decoder_channels, **_backbone_options(cfg))


def _siamese_pspnet(cfg) -> nn.Module:
    from unimatch.models.siamese import SiamesePSPNet
    return SiamesePSPNet(nclass=cfg.nclass, **_backbone_options(cfg))


def _check_vit(cfg) -> None:
    """A DPT's backbone is a ViT of unimatch.models.vit and its pretrained file Meta's DINOv2 one (or,
    for the demo ViT vit_tiny, ``synthetic``: unimatch.pretrained)."""
    from unimatch.models.dpt import refuse_synthetic
    from unimatch.models.vit import VIT_SIZES
    if cfg.backbone not in VIT_SIZES:
        raise ConfigError(f"backbone: {cfg.backbone!r} is not a ViT encoder of model {cfg.model}; choose one of "
                          f"{', '.join(VIT_SIZES)}")
    refuse_synthetic(cfg.pretrained, cfg.backbone)


def _dpt(cfg) -> nn.Module:
    from unimatch.models.dpt import DPT
    _check_vit(cfg)
    return DPT(cfg.nclass, backbone=cfg.backbone, pretrained=cfg.pretrained, in_channels=cfg.in_channels,
               lock_backbone=cfg.lock_backbone)


def _siamese_dpt(cfg) -> nn.Module:
    from unimatch.models.dpt import SiameseDPT
    _check_vit(cfg)
    return SiameseDPT(cfg.nclass, backbone=cfg.backbone, pretrained=cfg.pretrained, in_channels=cfg.in_channels,
                      lock_backbone=cfg.lock_backbone)


@dataclass(frozen=True)
class RegisteredModel:
    build: Callable[[Any], nn.Module]
    reads: tuple[str, ...]      # the model keys of the config (MODEL_KEYS) that ``build`` reads
    check: Optional[Callable[[Any], None]] = None   # raises ConfigError for values of them it cannot build


# what _backbone_options reads, and the DeepLabV3+ head's own keys
BACKBONE_KEYS = ("backbone", "pretrained", "deep_stem", "width", "multi_grid", "replace_stride_with_dilation")
DEEPLAB_KEYS = BACKBONE_KEYS + ("dilations", "reduce_channels", "decoder_channels")
VIT_KEYS = ("backbone", "pretrained", "lock_backbone")

MODELS = {
    "deeplabv3plus": RegisteredModel(_deeplabv3plus, DEEPLAB_KEYS),
    "unet": RegisteredModel(_unet, ("feature_channels",)),
    "siamese_deeplabv3plus": RegisteredModel(_siamese_deeplabv3plus, DEEPLAB_KEYS),
    "siamese_pspnet": RegisteredModel(_siamese_pspnet, BACKBONE_KEYS),
    "dpt": RegisteredModel(_dpt, VIT_KEYS, _check_vit),
    "siamese_dpt": RegisteredModel(_siamese_dpt, VIT_KEYS, _check_vit),
}
# the config keys that shape some model but not every one (nclass and in_channels shape them all)
MODEL_KEYS = tuple(dict.fromkeys(key for model in MODELS.values() for key in model.reads))


def model_keys_not_read(name: str) -> dict[str, str]:
    """key -> why: each model key that model ``name`` does not read, with the models that do
    (none for an unknown name, which ``build_model`` and the config's validation refuse)."""
    if name not in MODELS:
        return {}
    return {key: f"model {name} does not use it (used by {', '.join(m for m in MODELS if key in MODELS[m].reads)})"
            for key in MODEL_KEYS if key not in MODELS[name].reads}


def check_model_values(cfg) -> None:
    """The chosen model's own check of the values of the keys it reads (none for most models)."""
    if cfg.model in MODELS and MODELS[cfg.model].check is not None:
        MODELS[cfg.model].check(cfg)


def build_model(cfg) -> nn.Module:
    """The model named by ``cfg.model`` with the config's backbone/width/nclass settings."""
    if cfg.model not in MODELS:
        raise ConfigError(f"model: {cfg.model!r} is not one of {', '.join(MODELS)}")
    return MODELS[cfg.model].build(cfg)
