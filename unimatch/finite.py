"""Guards against NaN/Inf: in decoded inputs, in the training loss and in weights about to be saved.

A single NaN voxel turns the loss, then every weight, into NaN; without these checks such a run
ends with exit status 0 and NaN checkpoints written over good ones.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from unimatch.errors import DataError, TrainingDiverged

HINT = "check the inputs for NaN/Inf, lower lr, or train without amp (or with amp=bf16 instead of fp16)"


def require_finite(array: np.ndarray, source: str | Path, nodata: float | None = None) -> np.ndarray:
    """``array`` unchanged, or a :class:`DataError` naming ``source`` if a float array holds NaN/Inf.

    ``nodata`` is the file's declared missing value: when it is NaN (common for float rasters),
    NaN pixels are missing data, not an error. Integer arrays cannot hold NaN and pass at once.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    if nodata is not None and math.isnan(nodata):
        bad &= ~np.isnan(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{source}: {int(bad.sum())} NaN/Inf value(s) in the decoded image (first at index "
                        f"{first}); repair the file, or declare them missing (e.g. nodata=nan for a raster)")
    return array


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """Keys of the floating-point tensors of ``state_dict`` that hold NaN/Inf (one host sync)."""
    keys = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not keys:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in keys]).cpu()
    return [k for k, ok in zip(keys, finite.tolist()) if not ok]


class NonFiniteLossGuard:
    """Stops training at the first non-finite loss, naming the iteration and the loss term.

    On CPU each iteration is checked as soon as its loss exists, before ``backward``, so the
    parameters never take a NaN step (BatchNorm statistics of that forward may; nothing is saved
    after it). On CUDA that check would be a host sync per iteration: there the index
    and terms of the first non-finite loss are kept on the device, and :meth:`check` (one sync) is
    called at log points and before each evaluation and checkpoint. Under torchrun the first bad
    iteration is reduced over the ranks, so every process stops at the same check.
    """

    NONE = 2 ** 62

    def __init__(self, device: torch.device, iters_per_epoch: int, distributed: bool = False):
        self.device, self.iters_per_epoch, self.distributed = device, iters_per_epoch, distributed
        self.check_every_step = device.type != "cuda"
        self.first_bad = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.term_names: list[str] = []
        self.term_values: torch.Tensor | None = None

    def observe(self, iteration: int, loss: torch.Tensor, stats: dict) -> None:
        """Record ``loss`` (and the ``loss*`` terms of ``stats``) of global ``iteration``."""
        if self.term_values is None:
            self.term_names = [k for k in stats if k.startswith("loss")]
        values = torch.stack([torch.as_tensor(stats[k], dtype=torch.float32, device=self.device).reshape(())
                              for k in self.term_names])
        first = ~torch.isfinite(loss.detach()) & (self.first_bad == self.NONE)
        self.first_bad = torch.where(first, torch.full_like(self.first_bad, iteration), self.first_bad)
        self.term_values = values if self.term_values is None else torch.where(first, values, self.term_values)
        if self.check_every_step:
            self.check()

    def check(self) -> None:
        """Raise :class:`TrainingDiverged` if any observed loss (on any rank) was non-finite."""
        first_bad = self.first_bad
        if self.distributed:
            import torch.distributed as dist

            first_bad = first_bad.clone()
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        iteration = int(first_bad)
        if iteration == self.NONE:
            return
        epoch, step = divmod(iteration, self.iters_per_epoch)
        where = f"epoch {epoch + 1}, iteration {step + 1}/{self.iters_per_epoch} (global {iteration + 1})"
        if int(self.first_bad) == iteration and self.term_values is not None:
            values = dict(zip(self.term_names, self.term_values.tolist()))
            bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)] or [f"loss={values.get('loss')}"]
            terms = f"non-finite term(s) {', '.join(bad)}"
        else:
            terms = "seen by another process"
        raise TrainingDiverged(f"non-finite loss at {where}: {terms}; training stopped, checkpoints from "
                               f"earlier epochs are kept. Hint: {HINT}")
