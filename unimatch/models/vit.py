"""The DINOv2 vision transformer that UniMatch V2 segments with, and a CPU-sized demo encoder.

Module names and shapes equal Meta's DINOv2 (as the official UniMatch V2 builds it: patch 14, one
class token, no register tokens, LayerScale, LayerNorm eps 1e-6, blocks not chunked), so Meta's
``dinov2_vit{s,b,l,g}14_pretrain.pth`` files and the official V2 checkpoints load key for key. The
positional embedding is stored for 518x518 inputs (37x37 patches) and resampled for other sizes
with the same bicubic ``scale_factor`` arithmetic as DINOv2 (``interpolate_offset`` 0.1), so our
tokens equal the official ones at every size.

Attention is :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel
(flash / memory-efficient) on the GPU; the official code needs xFormers for that. Stochastic depth
is left out: the official V2 builds DINOv2 with a drop-path rate of 0.

``vit_tiny`` is not a DINOv2 size and has no published weights (``pretrained: synthetic`` trains it
on the demos' source set, :mod:`unimatch.pretrained`): a 4-block, 128-wide ViT (4 heads, 0.9M
parameters, its positional embedding laid out for 224x224) for the CPU demos and tests; its
DPT layers are its four blocks. A 112x112 image costs about 3 ms in it and 10 ms with its DPT head
on one CPU thread (the head, at 8x the patch grid, costs the most).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimatch.checkpoint import load_checkpoint
from unimatch.errors import CheckpointError, ConfigError
from unimatch.models.backbones import strip_wrappers

PATCH = 14
INTERPOLATE_OFFSET = 0.1   # DINOv2's work-around for the float rounding of the resampled grid size


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    heads: int
    layers: tuple[int, ...]     # the blocks whose normed tokens the DPT head decodes
    swiglu: bool = False        # the fused SwiGLU feed-forward (ViT-g) instead of the GELU MLP
    img_size: int = 518         # the input side the stored positional embedding is laid out for
    meta_file: str | None = None


# backbone name -> architecture; the DINOv2 sizes and their DPT layers are the official V2 ones
VIT_SIZES = {
    "dinov2_small": ViTSize(384, 12, 6, (2, 5, 8, 11), meta_file="dinov2_vits14_pretrain.pth"),
    "dinov2_base": ViTSize(768, 12, 12, (2, 5, 8, 11), meta_file="dinov2_vitb14_pretrain.pth"),
    "dinov2_large": ViTSize(1024, 24, 16, (4, 11, 17, 23), meta_file="dinov2_vitl14_pretrain.pth"),
    "dinov2_giant": ViTSize(1536, 40, 24, (9, 19, 29, 39), swiglu=True, meta_file="dinov2_vitg14_pretrain.pth"),
    "vit_tiny": ViTSize(128, 4, 4, (0, 1, 2, 3), img_size=224),
}


def vit_size(name: str) -> ViTSize:
    if name not in VIT_SIZES:
        raise ConfigError(f"backbone: {name!r} is not a ViT encoder; choose one of {', '.join(VIT_SIZES)}")
    return VIT_SIZES[name]


def swiglu_hidden(dim: int) -> int:
    """DINOv2's SwiGLU width: 2/3 of the 4x MLP, rounded up to a multiple of 8 (4096 for ViT-g)."""
    return (int(4 * dim * 2 / 3) + 7) // 8 * 8


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))   # DINOv2's init_values 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """silu(x W1) * (x W2), projected by W3; W1 and W2 are one packed linear layer, ``w12``."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, heads: int, swiglu: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim) if swiglu else Mlp(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2 encoder; :meth:`get_intermediate_layers` gives the patch tokens the DPT head reads."""

    def __init__(self, name: str = "dinov2_small", in_channels: int = 3):
        super().__init__()
        size = vit_size(name)
        self.name, self.size = name, size
        self.embed_dim = size.embed_dim
        grid = size.img_size // PATCH
        self.cls_token = nn.Parameter(torch.zeros(1, 1, size.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, size.embed_dim))
        # DINOv2's masked-image-modelling token: kept for the pretrained files' keys, never used in
        # segmentation, and frozen so that DDP (find_unused_parameters=False) waits for no gradient of it
        self.mask_token = nn.Parameter(torch.zeros(1, size.embed_dim), requires_grad=False)
        self.patch_embed = PatchEmbed(in_channels, size.embed_dim)
        self.blocks = nn.ModuleList(Block(size.embed_dim, size.heads, size.swiglu) for _ in range(size.depth))
        self.norm = nn.LayerNorm(size.embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2's initialisation (for training from scratch; pretrained files overwrite it)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The stored embedding resampled to a ``height`` x ``width`` image (sides in pixels).

        DINOv2 resamples with a bicubic ``scale_factor`` of (patches + 0.1) / stored grid, not
        with a target size; the scale factor itself sets the sampling positions, so it is
        reproduced here as it is for our tokens to equal the official ones.
        """
        stored = self.pos_embed.shape[1] - 1
        rows, cols = height // PATCH, width // PATCH
        if rows * cols == stored and height == width:
            return self.pos_embed
        grid = math.sqrt(stored)
        embedding = self.pos_embed.float()
        patches = embedding[:, 1:].reshape(1, int(grid), int(grid), -1).permute(0, 3, 1, 2)
        scale = ((rows + INTERPOLATE_OFFSET) / grid, (cols + INTERPOLATE_OFFSET) / grid)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        if patches.shape[-2:] != (rows, cols):
            raise RuntimeError(f"positional embedding resampled to {tuple(patches.shape[-2:])}, not {(rows, cols)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([embedding[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Class token + patch embeddings + positions, (N, 1 + patches, dim)."""
        height, width = x.shape[-2:]
        if height % PATCH or width % PATCH:
            raise ValueError(f"the ViT reads {PATCH}x{PATCH} patches: sides must be multiples of {PATCH}, "
                             f"got {height}x{width}")
        patches = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return tokens + self.position_embedding(height, width).to(tokens.dtype)

    def get_intermediate_layers(self, x: torch.Tensor, indices=None) -> tuple[torch.Tensor, ...]:
        """The final-normed patch tokens (N, patches, dim) after each block in ``indices`` (default:
        this size's DPT layers); blocks after the last one asked for are not run."""
        indices = self.size.layers if indices is None else tuple(indices)
        tokens, outputs = self.tokens(x), []
        for index, block in enumerate(self.blocks[:max(indices) + 1]):
            tokens = block(tokens)
            if index in indices:
                outputs.append(self.norm(tokens)[:, 1:])
        return tuple(outputs)


# ---- Meta's pretrained files ----------------------------------------------------------------
def describe_vit(state_dict: dict) -> str | None:
    """``dinov2_base (768 wide, 12 blocks)``: the size a ViT state dict holds (None if no ViT)."""
    cls_token = state_dict.get("cls_token")
    if not hasattr(cls_token, "shape"):
        return None
    width = cls_token.shape[-1]
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    swiglu = any(key.endswith(".mlp.w12.weight") for key in state_dict)
    name = next((n for n, s in VIT_SIZES.items() if (s.embed_dim, s.depth, s.swiglu) == (width, depth, swiglu)),
                "a ViT")
    return f"{name} ({width} wide, {depth} blocks)"


def patch_kernels_for(weight: torch.Tensor, in_channels: int, path: Path) -> torch.Tensor:
    """The file's RGB patch kernels for ``in_channels``: summed over RGB for one channel, which
    gives exactly the tokens of the gray image repeated on three channels (the convolution is
    linear); other counts cannot be derived and are refused."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1 and weight.shape[1] == 3:
        return weight.sum(dim=1, keepdim=True)
    raise CheckpointError(f"{path}: its patch embedding reads {weight.shape[1]} channels, the model reads "
                          f"{in_channels}; only 3 -> 1 (summed RGB kernels) is derived")


def load_pretrained_vit(encoder: VisionTransformer, source: str | Path) -> None:
    """Load Meta's DINOv2 backbone file (``dinov2_vits14_pretrain.pth`` ...) into ``encoder``,
    every key filled, as the official V2 loads it (strict); safe unpickling only."""
    path = Path(source).expanduser()
    wanted = f"Meta's {encoder.size.meta_file}" if encoder.size.meta_file else "a file of the same ViT"
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file not found: {path}. backbone {encoder.name} needs {wanted} "
                              f"(DINOv2 release), or pretrained=null to train from scratch")
    state_dict = strip_wrappers(load_checkpoint(path, what="pretrained weights file"))
    expected = encoder.state_dict()
    held, built = describe_vit(state_dict), describe_vit(expected)
    if held is None:
        raise CheckpointError(f"{path} holds no DINOv2 ViT (no cls_token); backbone {encoder.name} needs {wanted}")
    if held != built:
        raise CheckpointError(f"{path} holds {held}; backbone {encoder.name} is {built} and needs {wanted}")
    if "patch_embed.proj.weight" in state_dict:
        state_dict["patch_embed.proj.weight"] = patch_kernels_for(
            state_dict["patch_embed.proj.weight"], expected["patch_embed.proj.weight"].shape[1], path)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(f"{path} does not fit backbone {encoder.name}: missing {missing[:8]}, unexpected "
                              f"{unexpected[:8]}, shape mismatch {wrong_shape[:4]}")
    encoder.load_state_dict(state_dict)
