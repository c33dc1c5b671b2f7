"""The core's data machinery: one reseed mechanism for every task's training sets, reaching them
through the wrappers the engine and users put around them."""
import albumentations as A
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset

from unimatch.data import RepeatDataset, WeakViewDataset, reseed_dataset


class Draws(WeakViewDataset):
    """Each item is a draw from the dataset's stream (and, with a pipeline, a flip decision)."""

    def view(self, item, rng):
        if self.pipeline is None:
            return float(rng.random())
        flipped = self.pipeline(image=np.arange(4, dtype=np.uint8).reshape(1, 4, 1))["image"]
        return int(flipped[0, 0, 0])


def test_reseed_restarts_the_stream_and_other_seeds_differ():
    dataset = Draws(range(6), seed=3)
    first = [dataset[i] for i in range(6)]
    dataset.reseed(3)
    assert [dataset[i] for i in range(6)] == first
    dataset.reseed(4)
    assert [dataset[i] for i in range(6)] != first


def test_an_albumentations_pipeline_draws_from_the_dataset_stream():
    dataset = Draws(range(40), seed=0, pipeline=A.Compose([A.HorizontalFlip(p=0.5)]))
    first = [dataset[i] for i in range(40)]
    assert set(first) == {0, 3}  # both outcomes occur
    dataset.reseed(0)
    assert [dataset[i] for i in range(40)] == first


def test_reseed_dataset_reaches_through_repeat_subset_and_concat():
    inner = [Draws(range(3), seed=s) for s in (1, 2, 3)]
    wrapped = ConcatDataset([RepeatDataset(inner[0], 5), Subset(inner[1], [0, 1]), inner[2]])
    reseed_dataset(wrapped, 9)
    expected = float(np.random.default_rng(9).random())
    assert [d[0] for d in inner] == [expected] * 3


def test_a_worker_that_was_never_reseeded_seeds_itself_from_torch():
    loader = torch.utils.data.DataLoader(Draws(range(8), seed=0), batch_size=1, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    draws = [float(x) for x in loader]
    assert len(set(draws)) == len(draws)  # the two workers do not repeat each other's stream
