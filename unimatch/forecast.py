"""How long a training run will take on *this* machine, from timing its own first iterations.

Why: the same demo takes about twice as long on a CPU without native bf16 as on one with it, so a
duration measured on another machine misleads. The forecast is logged once the first iterations
after a warm-up one are timed, and once more after the first evaluation, whose time it then adds.
The trainer feeds it the method's iterations only: a labelled-only warm-up epoch
(``sup_warmup_epochs``) runs several times faster and would make the forecast far too short.
"""
from __future__ import annotations

import time
from typing import Callable


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class DurationForecast:
    """Feed it the end of every iteration (:meth:`iteration_done`) and every evaluation's seconds
    (:meth:`evaluation_done`); each returns the line to log, or None."""

    def __init__(self, iterations_left: int, evaluations_left: int, warmup: int = 1, sample: int = 5,
                 synchronize: Callable[[], None] = lambda: None):
        self.iterations_left, self.evaluations_left = iterations_left, evaluations_left
        self.warmup, self.sample, self.synchronize = warmup, sample, synchronize
        self.seen, self.started = 0, None
        self.sec_per_iter: float | None = None
        self.evaluations_timed = 0

    def iteration_done(self) -> str | None:
        self.seen += 1
        if self.sec_per_iter is not None or self.seen > self.iterations_left:
            return None
        if self.seen == self.warmup or (self.warmup == 0 and self.started is None):
            self.synchronize()
            self.started = time.perf_counter()
            if self.warmup:
                return None
        timed = self.seen - self.warmup
        if timed < self.sample and self.seen < self.iterations_left:
            return None
        self.synchronize()
        self.sec_per_iter = (time.perf_counter() - self.started) / max(timed, 1)
        training = self.sec_per_iter * self.iterations_left
        return (f"expected on this machine: training about {minutes(training)} ({self.sec_per_iter:.3f} s/iter "
                f"over {timed} iteration(s) after a warm-up one, x {self.iterations_left} iterations left), plus "
                f"{self.evaluations_left} evaluation(s), timed after the first")

    def evaluation_done(self, seconds: float) -> str | None:
        """An evaluation before the iterations were timed (one after a warm-up epoch) is not counted."""
        if self.sec_per_iter is None:
            return None
        self.evaluations_timed += 1
        if self.evaluations_timed != 1 or self.evaluations_left <= 1:
            return None
        training = self.sec_per_iter * max(self.iterations_left - self.seen, 0)
        evaluations = seconds * max(self.evaluations_left - 1, 0)
        return (f"expected on this machine: about {minutes(training + evaluations)} more (training "
                f"{minutes(training)}, {self.evaluations_left - 1} more evaluation(s) of {seconds:.1f} s each)")
