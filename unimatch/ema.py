"""An exponential moving average (EMA) of the student's weights: UniMatch V2's teacher, and a
second model to evaluate (``ema``, ``teacher: ema``; ``unimatch.config.METHOD_SETTINGS``).

After the optimizer step of 0-based global iteration ``it`` every parameter and floating buffer
becomes ``ema * r + student * (1 - r)`` with ``r = min(1 - 1 / (it + 1), ema_ratio)``, the
official V2 rule, computed in the same order of operations (the products first, then their sum),
so the numbers are those of the official loop: ``r`` is 0 at iteration 0 (the EMA starts as a
copy of the student after its first step) and reaches the cap 0.996 at iteration 249.

Integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged: a blend of counts
is no count, and the official blend, computed in floating point and written back into the integer
buffer, truncates ``ema + (1 - r)`` to ``ema``, which freezes the counter after the first step. The
counter is read only by a BatchNorm without momentum (a cumulative average); copied, it is the
student's.

The EMA is of the unwrapped model (no DDP wrapper: it has no gradient to synchronise) and is
always in eval mode; its parameters need no gradient.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from unimatch.distributed import unwrap


def ema_ratio(iteration: int, cap: float) -> float:
    """The weight of the EMA's own value after 0-based global iteration ``iteration``."""
    return min(1 - 1 / (iteration + 1), cap)


class ModelEMA:
    """The EMA model (``model``, an eval-mode copy of the student) and its update."""

    def __init__(self, student: nn.Module, cap: float):
        self.cap = cap
        self.model = copy.deepcopy(unwrap(student)).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """Move the EMA towards ``student`` after the optimizer step of ``iteration``."""
        r = ema_ratio(iteration, self.cap)
        student = unwrap(student)
        averaged = list(self.model.parameters())
        current = [p.detach() for p in student.parameters()]
        if len(averaged) != len(current):
            raise ValueError(f"the EMA has {len(averaged)} parameters, the student {len(current)}")
        for buffer, student_buffer in zip(self.model.buffers(), student.buffers()):
            if buffer.is_floating_point():
                averaged.append(buffer)
                current.append(student_buffer)
            else:
                buffer.copy_(student_buffer)
        scaled = torch._foreach_mul(current, 1 - r)
        torch._foreach_mul_(averaged, r)
        torch._foreach_add_(averaged, scaled)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
