"""Strong image perturbations, batched on the training device with per-sample parameters.

The official code perturbs each sample with PIL in the data loader; here the same distribution
of views is drawn for a whole batch at once on the device (CPU or GPU), which keeps the loader
workers free for decoding. Every random parameter comes from one seeded ``torch.Generator`` so a
run is reproducible and resumable.

Semantics follow torchvision's ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` (random order of the four
adjustments per sample, factors uniform in ``[1-b, 1+b]``, hue shift uniform in ``[-h, h]``),
``RandomGrayscale`` and the official ``blur`` (Gaussian, sigma uniform in ``[0.1, 2.0]``).
Images whose channels are several images stacked (a bi-temporal pair: 6 channels) are split into
*channel groups* of ``channel_group_size`` channels, each perturbed as an independent image.
Saturation, hue and grayscale need RGB groups; one-band (MRI) and multispectral groups get
brightness, contrast (around the band mean) and blur only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class PerturbationSettings:
    """The strong view's parameters, named as the config keys; defaults are the paper's."""
    color_jitter_p: float = 0.8
    color_jitter: tuple = (0.5, 0.5, 0.5, 0.25)   # ColorJitter(brightness, contrast, saturation, hue)
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    cutmix_p: float = 0.5
    cutmix_area: tuple = (0.02, 0.4)
    cutmix_ratio: tuple = (0.3, 1 / 0.3)
    channel_group_size: int = 3

    @classmethod
    def from_config(cls, cfg) -> "PerturbationSettings":
        """The config's keys of the same names (lists as tuples), passed by name."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images are assumed to be in [0, 1] already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): luma of RGB; a one-channel image is its own grayscale;
    other band counts (multispectral) use the band mean."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        return images.mean(1, keepdim=True)
    w = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """HSV of (N, 3, H, W) RGB in [0, 1], hue in [0, 1) (torchvision's convention; on ties the
    first maximal channel, R then G, defines the hue)."""
    r, g, b = rgb.unbind(1)
    maxc, argmax = rgb.max(1)
    delta = maxc - rgb.amin(1)
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(argmax == 0, (g - b) / safe_delta,
                    torch.where(argmax == 1, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """RGB of HSV: channel n is v - v s clamp(min(k, 4 - k), 0, 1) with k = (6h + n) mod 6 for
    n = 5, 3, 1; the same values as the six-sector table, with three element-wise passes instead of
    gathering from six candidates (2-4x less time on the CPU)."""
    h, s, v = hsv.unbind(1)
    h6, vs = h * 6.0, v * s
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (h6 + n) % 6.0
        channels.append(v - vs * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, 1)


def adjust_brightness(x, factor):
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x, factor):
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x, factor):
    if x.shape[1] != 3:
        return x
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x, shift):
    if x.shape[1] != 3:
        return x
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each sample with its own sigma (one depthwise convolution for the whole batch)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    radius = min(radius, (min(h, w) - 1) // 2) if min(h, w) > 2 else 0
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(c, 0)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


class StrongPerturbation:
    """Draws strong views and CutMix boxes; all randomness from ``generator`` (on the CPU)."""

    def __init__(self, settings: PerturbationSettings, generator: torch.Generator | None = None):
        self.settings = settings
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (high - low) + low

    def _bernoulli(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Perturb float images in [0, 1] of shape (N, C, H, W); returns a new tensor."""
        s = self.settings
        n, c, h, w = images.shape
        group = s.channel_group_size if c % s.channel_group_size == 0 else c
        x = images.reshape(n * (c // group), group, h, w).clone()
        m = x.shape[0]
        device = x.device

        jitter = self._bernoulli(m, s.color_jitter_p)
        brightness, contrast, saturation, hue = s.color_jitter
        factors = {
            "brightness": self._uniform(m, max(0.0, 1 - brightness), 1 + brightness),
            "contrast": self._uniform(m, max(0.0, 1 - contrast), 1 + contrast),
            "saturation": self._uniform(m, max(0.0, 1 - saturation), 1 + saturation),
            "hue": self._uniform(m, -hue, hue),
        }
        order = torch.stack([torch.randperm(4, generator=self.generator) for _ in range(m)])
        ops = [("brightness", adjust_brightness), ("contrast", adjust_contrast),
               ("saturation", adjust_saturation), ("hue", adjust_hue)]
        for position in range(4):
            for op_index, (name, op) in enumerate(ops):
                idx = (jitter & (order[:, position] == op_index)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                idx_d = idx.to(device)
                factor = factors[name][idx].to(device=device, dtype=x.dtype)
                x[idx_d] = op(x[idx_d], factor)

        if group == 3 and s.grayscale_p > 0:
            idx = self._bernoulli(m, s.grayscale_p).nonzero().squeeze(1).to(device)
            if idx.numel():
                x[idx] = grayscale(x[idx]).expand(-1, 3, -1, -1)

        blur = self._bernoulli(m, s.blur_p)
        sigma = self._uniform(m, *s.blur_sigma)
        idx = blur.nonzero().squeeze(1)
        if idx.numel():
            idx_d = idx.to(device)
            x[idx_d] = gaussian_blur(x[idx_d], sigma[idx].to(device=device, dtype=x.dtype), s.blur_sigma[1])
        return x.reshape(n, c, h, w)

    def cutmix_boxes(self, n: int, height: int, width: int, device=None) -> torch.Tensor:
        """(N, H, W) bool boxes as the official ``obtain_cutmix_box``: with probability ``cutmix_p``
        a box of area uniform in ``cutmix_area`` of the crop and aspect ratio uniform in
        ``cutmix_ratio``, its ratio and corner redrawn until it fits inside the crop."""
        s = self.settings
        active = self._bernoulli(n, s.cutmix_p)
        area = self._uniform(n, *s.cutmix_area) * height * width
        box = torch.zeros(n, 4, dtype=torch.long)
        pending = active.clone()
        while bool(pending.any()):
            k = int(pending.sum())
            ratio = self._uniform(k, *s.cutmix_ratio)
            a = area[pending]
            bw = torch.sqrt(a / ratio).long()
            bh = torch.sqrt(a * ratio).long()
            x0 = torch.randint(0, width, (k,), generator=self.generator)
            y0 = torch.randint(0, height, (k,), generator=self.generator)
            fits = (x0 + bw <= width) & (y0 + bh <= height)
            idx = pending.nonzero().squeeze(1)[fits]
            box[idx] = torch.stack((y0, x0, bh, bw), 1)[fits]
            pending[idx] = False
        box = box.to(device)
        ys = torch.arange(height, device=device).view(1, -1, 1)
        xs = torch.arange(width, device=device).view(1, 1, -1)
        y0, x0, bh, bw = (box[:, i].view(-1, 1, 1) for i in range(4))
        return (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)


class Normalizer:
    """Per-channel (x - mean) / std on the device; ``mean``/``std`` repeat over channel groups."""

    def __init__(self, mean, std, in_channels: int):
        repeats = in_channels // len(mean)
        self.mean = torch.tensor(list(mean) * repeats).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std) * repeats).view(1, -1, 1, 1)

        self._on_device: dict = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = (images.device, images.dtype)
        if key not in self._on_device:
            # copied once per device: the step normalises several batches every iteration
            self._on_device[key] = (self.mean.to(*key), self.std.to(*key))
        mean, std = self._on_device[key]
        return (images - mean) / std
