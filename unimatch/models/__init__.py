"""Model zoo: every model follows ``model(x) -> logits`` / ``model(x, need_fp=k) -> (logits, logits_fp)``."""
from __future__ import annotations

import torch.nn as nn

from unimatch.errors import ConfigError


def build_model(cfg) -> nn.Module:
    """The model named by ``cfg.model`` with the config's backbone/width/nclass settings."""
    common = dict(backbone=cfg.backbone, pretrained=cfg.pretrained,
                  replace_stride_with_dilation=list(cfg.replace_stride_with_dilation), deep_stem=cfg.deep_stem,
                  width=cfg.width)
    if cfg.model == "deeplabv3plus":
        from unimatch.models.deeplabv3plus import DeepLabV3Plus
        return DeepLabV3Plus(cfg.nclass, dilations=list(cfg.dilations), in_channels=cfg.in_channels,
                             multi_grid=cfg.multi_grid,
                             reduce_channels=cfg.reduce_channels, decoder_channels=cfg.decoder_channels, **common)
    if cfg.model == "unet":
        from unimatch.models.unet import UNet
        kwargs = {"feature_channels": list(cfg.feature_channels)} if cfg.feature_channels else {}
        return UNet(in_chns=cfg.in_channels, class_num=cfg.nclass, **kwargs)
    if cfg.model in ("siamese_deeplabv3plus", "siamese_pspnet"):
        from unimatch.models import siamese
        return siamese.build_siamese(cfg)
    raise ConfigError(f"model: {cfg.model!r} is not one of deeplabv3plus, unet, siamese_deeplabv3plus, "
                      f"siamese_pspnet")
