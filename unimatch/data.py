"""The data contract's shared machinery: the ignore value, weak-view training sets, their one
reseed mechanism, repeating the labelled set, and the loaders' seeding and evaluation sharding.

A task supplies only what differs per domain: how an item is decoded and its geometric
augmentation (:meth:`WeakViewDataset.view`). Everything that makes training reproducible is
here, so a fix lands in every task at once.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

IGNORE_INDEX = 255


class WeakViewDataset(Dataset):
    """Training items (labelled or not) returned as weak (geometric) views.

    Owns the augmentation's random stream: ``reseed(seed)`` restarts it (the engine calls it in
    every worker and at every epoch, so views are reproducible across a resume), and an
    albumentations ``pipeline`` given here draws from that same stream. One stream shared by all
    transforms, not ``Compose(seed=...)``, which gives every transform its own identically seeded
    generator (the horizontal and vertical flips would always fire together). A worker that was
    never reseeded (a plain DataLoader) seeds itself from ``torch.initial_seed()``, distinct per
    worker and epoch. Subclasses implement :meth:`view`.
    """

    def __init__(self, items: Sequence, seed: int, pipeline=None):
        self.items = list(items)
        self.pipeline = pipeline
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed) if self.pipeline is None else reseed_pipeline(self.pipeline, seed)
        self._rng_pid = os.getpid()

    @property
    def rng(self) -> np.random.Generator:
        if self._rng_pid != os.getpid():
            self.reseed(torch.initial_seed())
        return self._rng

    def view(self, item, rng: np.random.Generator):
        """``(image, mask)`` or ``(image, ignore_mask)`` tensors of one item: decode + weak view."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.view(self.items[index], self.rng)


def reseed_pipeline(pipeline, seed: int) -> np.random.Generator:
    """Give every transform of an albumentations ``pipeline`` the same numpy and Python generators,
    seeded by ``seed``; returns the numpy one."""
    rng = np.random.default_rng(seed)
    pipeline.set_random_state(rng, random.Random(seed))
    return rng


class RepeatDataset(Dataset):
    """The labelled set repeated (cyclically) to ``length`` items, as the official ``nsample``."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, max(length, len(dataset))

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.dataset[index % len(self.dataset)]


def reseed_dataset(dataset: Dataset, seed: int) -> None:
    """Call ``reseed(seed)`` on a dataset and on the datasets it wraps (:class:`RepeatDataset`,
    ``Subset``, ``ConcatDataset``) that have one."""
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    for child in getattr(dataset, "datasets", ()):
        reseed_dataset(child, seed)
    if hasattr(dataset, "dataset"):
        reseed_dataset(dataset.dataset, seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: numpy, ``random`` and the dataset's augmentation seeded from the
    worker's torch seed (the loader's per-epoch seed + worker id), so views are reproducible and
    no two workers or epochs repeat each other."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed_dataset(info.dataset, seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class ShardSampler(Sampler):
    """Evaluation sharding without padding (DistributedSampler would evaluate duplicates)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def sharded_eval_loader(dataset: Dataset, cfg, ctx, batch_size: int = 1) -> DataLoader:
    """Evaluation loader over this rank's shard (no padding duplicates, see :class:`ShardSampler`)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=min(cfg.num_workers, 2), pin_memory=ctx.device.type == "cuda")
