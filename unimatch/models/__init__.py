"""Model zoo: every model follows ``model(x) -> logits`` / ``model(x, need_fp=k) -> (logits, logits_fp)``.

``MODELS`` maps each ``cfg.model`` name to a builder ``(cfg) -> nn.Module``; a new model is one
entry here, and the model-contract test runs on every entry.
"""
from __future__ import annotations

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


MODELS = {
    "deeplabv3plus": _deeplabv3plus,
    "unet": _unet,
    "siamese_deeplabv3plus": _siamese_deeplabv3plus,
    "siamese_pspnet": _siamese_pspnet,
}


def build_model(cfg) -> nn.Module:
    """The model named by ``cfg.model`` with the config's backbone/width/nclass settings."""
    if cfg.model not in MODELS:
        raise ConfigError(f"model: {cfg.model!r} is not one of {', '.join(MODELS)}")
    return MODELS[cfg.model](cfg)
