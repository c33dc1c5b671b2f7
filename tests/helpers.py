"""Small shared fixtures for the core tests: a tiny model, tiny in-memory datasets, a tiny config.

Everything here is deterministic by seed and small enough that a test runs in well under a
second per training iteration on one CPU thread.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from torch.utils.data import Dataset

from unimatch.config import Config
from unimatch.models.deeplabv3plus import DeepLabV3Plus

NCLASS = 3
CROP = 32


def _refuse_constant(token: str):
    raise ValueError(f"non-standard JSON token {token}")


def strict_json_loads(text: str):
    """``json.loads`` that refuses ``NaN``/``Infinity`` as strict parsers (JavaScript, jq, Go) do."""
    return json.loads(text, parse_constant=_refuse_constant)


def deterministic(seed: int = 0) -> None:
    """One CPU thread (CI has 2 cores shared by several jobs) and a fixed global seed."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)


def tiny_deeplab(nclass: int = NCLASS, in_channels: int = 3, seed: int = 0) -> DeepLabV3Plus:
    """DeepLabV3+ on the ``tiny`` ResNet trunk: about 100k parameters."""
    torch.manual_seed(seed)
    return DeepLabV3Plus(nclass, "tiny", width=8, reduce_channels=8, decoder_channels=16, in_channels=in_channels)


def tiny_config(**changes) -> Config:
    """A validated :class:`Config` for the tiny DeepLabV3+ on 32x32 crops (CPU, no workers)."""
    cfg = Config(nclass=NCLASS, crop_size=CROP, backbone="tiny", width=8, reduce_channels=8,
                 decoder_channels=16, epochs=2, batch_size=2, lr=0.01, num_workers=0, log_every=0,
                 conf_thresh=0.5, select_metric="mIoU")
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return cfg


class TinySegmentationSet(Dataset):
    """In-memory images that follow the data contract of the core.

    ``kind`` is ``labeled`` -> ``(image uint8 (C,H,W), mask int64)``, ``unlabeled`` ->
    ``(image, ignore_mask)`` (255 on a padded strip), ``val`` -> ``(image, mask, id)``.
    Items are horizontally flipped at random with the dataset's own RNG, which the engine
    reseeds per epoch and per worker through :meth:`reseed`, like the real datasets.
    ``reads`` counts item reads, so a test can tell whether a stream was consumed.
    """

    def __init__(self, length: int, kind: str, size: int = CROP, channels: int = 3, nclass: int = NCLASS,
                 seed: int = 0, flip: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.flip = kind, flip
        self.images = torch.randint(0, 256, (length, channels, size, size), generator=g, dtype=torch.uint8)
        # masks correlated with the image so a model can learn something in a few steps
        brightness = self.images.float().mean(1)
        self.masks = torch.bucketize(brightness, torch.tensor([85.0, 170.0])).clamp_max(nclass - 1).long()
        self.masks[:, :2, :] = 255
        self.ignore = torch.zeros(length, size, size, dtype=torch.long)
        self.ignore[:, -3:, :] = 255
        self.rng = np.random.default_rng(seed)
        self.reads = 0

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads += 1
        image, mask, ignore = self.images[index], self.masks[index], self.ignore[index]
        if self.flip and self.rng.random() < 0.5:
            image, mask, ignore = image.flip(-1), mask.flip(-1), ignore.flip(-1)
        if self.kind == "labeled":
            return image, mask
        if self.kind == "unlabeled":
            return image, ignore
        return image, mask, f"sample_{index}"


def add_nan_patch(path) -> None:
    """Rewrite the NIfTI ``path`` as float32 with a 2x2 NaN patch (4 values) in its first slice."""
    import nibabel as nib

    source = nib.load(str(path))
    data = np.asarray(source.dataobj, dtype=np.float32)
    data[3:5, 3:5, 0] = np.nan
    header = source.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, source.affine, header), str(path))
