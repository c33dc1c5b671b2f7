"""How OpenMP threads wait for work, chosen before torch loads its OpenMP runtime.

libgomp (the runtime of torch's Linux wheels) reads ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT``
once, when torch is imported, so :mod:`unimatch` calls :func:`choose_wait_policy` on import and the
entry points import ``unimatch`` first. Two measured costs pull in opposite directions
(docs/benchmarks.md, "OpenMP wait policy"), both on a two-thread iteration of a small UNet on a
2-core CPU: threads that spin about 0.1 ms before sleeping (``GOMP_SPINCOUNT=10000``) are 1.45x faster
than threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``) on an idle CPU, and 2x slower when
another training run shares the cores. So the choice follows how busy the CPU is as the process
starts. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is always kept.
"""
from __future__ import annotations

import os
import time
from typing import Callable, MutableMapping, Optional

SPIN_COUNT = 10000          # libgomp's spin rounds before a thread sleeps (its default: 300000, ~3 ms)
BUSY_SHARE = 0.25           # above this share of the CPU's time in use at start, threads sleep at once
SAMPLE_SECONDS = 0.1
USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def busy_share_between(before: str, after: str) -> Optional[float]:
    """Share of CPU time spent working between two readings of ``/proc/stat`` (None if no time passed).

    The first line sums all CPUs: user nice system idle iowait irq softirq steal ...; idle and
    iowait are the time nobody used.
    """
    def totals(text: str) -> tuple[int, int]:
        fields = [int(v) for v in text.splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    (total0, idle0), (total1, idle1) = totals(before), totals(after)
    elapsed = total1 - total0
    return None if elapsed <= 0 else (elapsed - (idle1 - idle0)) / elapsed


def cpu_busy_share(sample_seconds: float = SAMPLE_SECONDS) -> Optional[float]:
    """How busy the whole CPU is now: ``/proc/stat`` over ``sample_seconds`` on Linux, else the
    one-minute load average per core; None when neither is available."""
    try:
        with open("/proc/stat") as stat:
            before = stat.read()
        time.sleep(sample_seconds)
        with open("/proc/stat") as stat:
            after = stat.read()
        return busy_share_between(before, after)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return min(os.getloadavg()[0] / (os.cpu_count() or 1), 1.0)
    except (OSError, AttributeError):
        return None


def choose_wait_policy(environ: MutableMapping[str, str],
                       measure: Callable[[], Optional[float]] = cpu_busy_share) -> str:
    """Set the wait variables in ``environ`` unless the user set one; return the line that says why.

    ``measure()`` gives the share of the CPU in use (None: unknown, which counts as busy); it is not
    called when the user chose.
    """
    given = {name: environ[name] for name in USER_VARIABLES if name in environ}
    if given:
        return "OpenMP wait: as set (" + ", ".join(f"{k}={v}" for k, v in given.items()) + ")"
    busy = measure()
    if busy is not None and busy < BUSY_SHARE:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        return (f"OpenMP wait: threads spin ~0.1 ms before sleeping (GOMP_SPINCOUNT={SPIN_COUNT}): the CPU "
                f"was {100 * busy:.0f} % busy at start; on cores shared with other work set OMP_WAIT_POLICY=PASSIVE")
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    state = "of unknown load" if busy is None else f"{100 * busy:.0f} % busy"
    return (f"OpenMP wait: threads sleep at once (OMP_WAIT_POLICY=PASSIVE): the CPU was {state} at start; "
            f"on a CPU of your own set GOMP_SPINCOUNT={SPIN_COUNT}")
