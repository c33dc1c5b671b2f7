"""DPT on a DINOv2 encoder (UniMatch V2), plain and siamese, with both feature perturbations.

The encoder's normed patch tokens after four blocks are laid out as maps, projected to four widths,
resized x4, x2, x1 and x0.5 (pixel strides 3.5, 7, 14 and 28), and fused coarse to fine by RefineNet
blocks; the logits (at 8x the patch grid) are upsampled bilinearly (align_corners) to the
input. Module names and widths equal the official V2 ``DPT`` (``backbone``, ``head.projects``,
``head.resize_layers``, ``head.scratch.layerN_rn`` / ``refinenetN`` / ``output_conv``; the head
widths of its ``model_configs``), so its checkpoints load key for key.

Two perturbations of the encoder features, both decoded in the same forward:

- ``need_fp=k`` (UniMatch V1's FP stream): Dropout2d(0.5) on each of the four feature maps, k
  independent copies after the clean ones, returning ``(logits, logits_fp)``;
- ``comp_drop=True`` (V2's complementary dropout): the batch is two halves (the two strong views);
  each channel of a sample in the first half is dropped or doubled, and the same channel of its
  partner in the second half gets the complement, so the two views see disjoint channels; a random
  half of the pairs keeps every channel. The masks are drawn on the CPU generator in the official
  order (:func:`complementary_dropout_masks`), so a seeded run draws the official masks.

Sizes: the ViT reads 14-pixel patches. An input whose sides are multiples of 14 goes through as the
official model takes it; any other is first resized (bilinear, align_corners) to the nearest
multiples, ``int(side / 14 + 0.5) * 14``, and its logits resized back, which is what the official
evaluation does around the model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimatch.errors import ConfigError
from unimatch.models.deeplabv3plus import feature_perturbation, split_fp_logits
from unimatch.models.siamese import split_dates
from unimatch.models.vit import PATCH, VisionTransformer, load_pretrained_vit

# backbone -> (fusion width, the four projection widths): the official V2 model_configs (the same
# table in its remote-sensing script); vit_tiny's is ours
HEAD_WIDTHS = {
    "dinov2_small": (64, (48, 96, 192, 384)),
    "dinov2_base": (128, (96, 192, 384, 768)),
    "dinov2_large": (256, (256, 512, 1024, 1024)),
    "dinov2_giant": (384, (1536, 1536, 1536, 1536)),
    "vit_tiny": (16, (16, 32, 64, 128)),
}
KEPT_PAIRS = 0.5   # share of the view pairs that complementary dropout leaves whole


def complementary_dropout_masks(batch: int, channels: int) -> torch.Tensor:
    """(batch, channels) masks: row i of the first half holds 0 or 2 per channel (p = 0.5), row
    ``i + batch/2`` its complement 2 - m; ``int(batch/2 * 0.5)`` random pairs hold 1 everywhere.
    Drawn on the CPU generator in the official order: Binomial sample, then the kept pairs."""
    if batch % 2:
        raise ValueError(f"complementary dropout pairs the two halves of the batch: it needs an even batch, "
                         f"got {batch}")
    half = batch // 2
    first = torch.distributions.Binomial(probs=0.5).sample((half, channels)) * 2.0
    second = 2.0 - first
    kept = torch.randperm(half)[:int(half * KEPT_PAIRS)]
    first[kept, :] = 1.0
    second[kept, :] = 1.0
    return torch.cat((first, second))


def complementary_dropout(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every (N, C, h, w) feature map times one draw of :func:`complementary_dropout_masks`."""
    masks = complementary_dropout_masks(features[0].shape[0], features[0].shape[1])
    return [f * masks.to(device=f.device, dtype=f.dtype)[:, :, None, None] for f in features]


def patch_multiple(size: int) -> int:
    """The multiple of 14 nearest to ``size`` (the official evaluation's rounding), at least 14."""
    return max(1, int(size / PATCH + 0.5)) * PATCH


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """RefineNet fusion: the deeper path plus the refined skip, refined, upsampled, 1x1-projected."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        out = deeper if skip is None else deeper + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        resize = {"size": size} if size is not None else {"scale_factor": 2}
        out = F.interpolate(out, **resize, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class DPTHead(nn.Module):
    def __init__(self, nclass: int, embed_dim: int, features: int, out_channels: Sequence[int]):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, width, 1) for width in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1)])
        self.scratch = nn.Module()
        for level, width in enumerate(out_channels, 1):
            setattr(self.scratch, f"layer{level}_rn", nn.Conv2d(width, features, 3, padding=1, bias=False))
        for level in range(1, 5):
            setattr(self.scratch, f"refinenet{level}", FusionBlock(features))
        # the deepest fusion has no skip input, so its resConfUnit1 never runs: it exists for the
        # official keys, frozen so that DDP (find_unused_parameters=False) waits for no gradient of it
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)
        self.scratch.output_conv = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True),
                                                 nn.Conv2d(features, nclass, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits at 8x the patch grid from the four (N, embed_dim, rows, cols) feature maps."""
        s = self.scratch
        layers = [resize(project(f)) for f, project, resize in zip(features, self.projects, self.resize_layers)]
        rn = [s.layer1_rn(layers[0]), s.layer2_rn(layers[1]), s.layer3_rn(layers[2]), s.layer4_rn(layers[3])]
        path = s.refinenet4(rn[3], size=rn[2].shape[-2:])
        path = s.refinenet3(path, rn[2], size=rn[1].shape[-2:])
        path = s.refinenet2(path, rn[1], size=rn[0].shape[-2:])
        return s.output_conv(s.refinenet1(path, rn[0]))


def refuse_synthetic(pretrained, backbone: str) -> None:
    """``pretrained: synthetic`` (unimatch.pretrained) trains only the demo ViT ``vit_tiny``; a DINOv2
    size is one ConfigError pointing to Meta's file."""
    if pretrained == "synthetic":
        from unimatch.pretrained import refuse_unsupported_vit
        refuse_unsupported_vit(backbone)


class DPT(nn.Module):
    """``model(x) -> logits``; ``model(x, need_fp=k) -> (logits, logits_fp)``;
    ``model(x, comp_drop=True) -> logits`` with complementary dropout on the encoder features.

    ``in_channels`` 1 (gray MRI) reads one channel; Meta's RGB patch kernels are summed for it.
    ``features`` / ``out_channels`` override the head widths of ``backbone`` (tests).
    """
    supports_comp_drop = True

    def __init__(self, nclass: int, backbone: str = "dinov2_small", pretrained=None, in_channels: int = 3,
                 lock_backbone: bool = False, features: int | None = None,
                 out_channels: Sequence[int] | None = None):
        super().__init__()
        refuse_synthetic(pretrained, backbone)
        if pretrained == "synthetic":   # the task's resolve_data turns the word into the trunk file
            raise ConfigError("pretrained: synthetic reached the DPT unresolved: this task's resolve_data does not "
                              "call unimatch.pretrained.resolve_pretrained; give a file or pretrained: null")
        self.backbone = VisionTransformer(backbone, in_channels)
        default_features, default_widths = HEAD_WIDTHS[backbone]
        self.head = DPTHead(nclass, self.backbone.embed_dim, features or default_features,
                            tuple(out_channels or default_widths))
        if pretrained:
            load_pretrained_vit(self.backbone, pretrained)
        if lock_backbone:
            self.lock_backbone()

    def lock_backbone(self) -> None:
        """Freeze the encoder (the official ``lock_backbone``): only the head trains."""
        self.backbone.requires_grad_(False)

    def param_groups(self):
        """(backbone parameters that train, all the others): the head gets ``lr * lr_multi``."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return [p for p in backbone if p.requires_grad], [p for p in self.parameters() if id(p) not in ids]

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four DPT layers' tokens as (N, embed_dim, rows, cols) maps."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        return [tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], rows, cols)
                for tokens in self.backbone.get_intermediate_layers(x)]

    def forward(self, x: torch.Tensor, need_fp: bool | int = False, comp_drop: bool = False):
        if need_fp and comp_drop:
            raise ValueError("need_fp and comp_drop are two alternative perturbations; ask for one")
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        model_size = (patch_multiple(size[0]), patch_multiple(size[1]))
        if model_size != size:
            x = F.interpolate(x, model_size, mode="bilinear", align_corners=True)
        features = self.encoder_features(x)
        copies = 0 if comp_drop else int(need_fp)
        if comp_drop:
            features = complementary_dropout(features)
        elif copies:
            features = [feature_perturbation(f, copies) for f in features]
        logits = F.interpolate(self.head(features), model_size, mode="bilinear", align_corners=True)
        if model_size != size:
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=True)
        return split_fp_logits(logits, copies) if copies else logits


class SiameseDPT(DPT):
    """Bi-temporal DPT: ``x`` is the two dates on the channel axis (N, 2C, H, W); the encoder runs
    once on ``cat(A, B)`` along the batch and the head decodes |f(A) - f(B)| of the four maps, as
    the official remote-sensing V2 does (both perturbations act on those differences).

    ``in_channels`` counts both dates. ``dinov2_giant`` uses the SwiGLU feed-forward of Meta's ViT-g
    (and of the official single-image DPT), so Meta's giant weights load; the official
    remote-sensing code builds its giant with the GELU MLP (its size check compares with ``"vitg"``,
    a name it never receives), so its giant checkpoints, if any, would not load here.
    """

    def __init__(self, nclass: int = 2, backbone: str = "dinov2_small", pretrained=None, in_channels: int = 6,
                 lock_backbone: bool = False, features: int | None = None,
                 out_channels: Sequence[int] | None = None):
        if in_channels % 2:
            raise ValueError(f"in_channels counts both dates and must be even, got {in_channels}")
        super().__init__(nclass, backbone, pretrained, in_channels // 2, lock_backbone, features, out_channels)

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        image_a, image_b = split_dates(x)
        both = super().encoder_features(torch.cat((image_a, image_b)))
        return [(a - b).abs() for a, b in (feature.chunk(2) for feature in both)]
