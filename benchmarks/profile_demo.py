"""Where a demo's time goes: one real training run of a task's demo, timed by phase.

    python -m benchmarks.profile_demo --task natural --json natural.json
    python -m benchmarks.profile_demo --task acdc --fresh-data-home -- --epochs 4
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile_demo --task change_detection -- amp=none

Runs the task's real ``train`` entry point in this process (arguments after ``--`` go to it, as to
``python -m tasks.<task>.train``) and times, by wrapping the trainer's own functions:

- ``write sets + pretrain``: resolving the data (writing the synthetic sets, and the pretraining
  child of ``pretrained: synthetic`` when the trunk is not cached; ``--fresh-data-home`` makes both
  happen), of which ``pretraining child`` is the child process;
- ``warm-up iterations`` (``sup_warmup_epochs``: the labelled term alone) and ``method
  iterations`` (the optimisation step, loading excluded), of which ``strong perturbation`` is
  the strong views (colour jitter, grayscale, blur, CutMix);
- ``loader``: waiting for the next batches (the dataset's reading and weak augmentation);
- ``validation``: the evaluation after an epoch (``eval_every``); ``checkpoints``: the epoch's
  record and ``latest.pth``.

The method iterations are split further by ``torch.profiler`` over a window of them
(``--profile-iters``, from the second method epoch's start; timed apart as ``profiled method
iterations``, since the profiler slows them): the self CPU time per iteration of convolutions
(forward and backward), normalisation, resampling, element-wise maths, the loss, the optimiser and
the rest. Writes ``--json`` and prints a table. Timings are wall seconds of this machine: run it
alone for figures to publish. ``unimatch`` is imported before torch, so the OpenMP wait policy is
the one ``python -m tasks.<task>.train`` runs with (see ``unimatch/openmp_wait.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import unimatch  # noqa: F401  (before torch: it sets OpenMP's wait policy, as the entry points get it)
import torch

# op-name patterns of the profiler's self CPU time, first match wins
OP_GROUPS = (
    ("convolution", re.compile(r"conv")),
    ("matrix products", re.compile(r"^aten::(addmm|mm|bmm|matmul|linear|_scaled_dot_product)")),
    ("normalisation", re.compile(r"batch_norm|layer_norm|group_norm")),
    ("resampling", re.compile(r"upsample|interpolate|grid_sampler|pool")),
    ("optimiser", re.compile(r"sgd|adam|_foreach|lerp")),
    ("loss", re.compile(r"nll_loss|cross_entropy|softmax")),
    ("element-wise", re.compile(r"^aten::(add|mul|div|sub|rsub|relu|threshold|where|clamp|sigmoid|exp|pow|sqrt|neg|"
                                r"abs|max|min|eq|ne|gt|lt|ge|le|copy_|fill_|zero_|cat|flip|index|masked|sum|mean|"
                                r"gelu|sign|lerp|logical|bitwise)")),
)


class PhaseClock:
    """Seconds and calls per phase, from wrapped functions; :meth:`restore` puts the originals back."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.originals: list[tuple] = []

    def patch(self, owner, name: str, replacement) -> None:
        self.originals.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, replacement)

    def wrap(self, owner, name: str, phase) -> None:
        """Times ``owner.name``; ``phase`` is a name or a function of the call's arguments giving one."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            label = phase(*args, **kwargs) if callable(phase) else phase
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1
        self.patch(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self.originals):
            setattr(owner, name, original)
        self.originals.clear()


class TimedIterator:
    def __init__(self, iterator, clock: PhaseClock):
        self.iterator, self.clock = iterator, clock

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.clock.seconds["loader"] += time.perf_counter() - start


def op_group(name: str) -> str:
    for group, pattern in OP_GROUPS:
        if pattern.search(name):
            return group
    return "other"


@contextlib.contextmanager
def instrumented(task, profile_iters: int):
    """Wraps the trainer's, the step's, the task's and the pretraining's functions for the duration;
    yields the phase clock and the profiled iteration's op groups (seconds per iteration)."""
    from unimatch import engine, method, pretrained

    clock, op_seconds = PhaseClock(), defaultdict(float)

    window = {"seen": 0, "profiler": None, "done": False}

    def iteration_phase(self, batches, iteration=None, guard=None, warmup=False):
        if warmup:
            return "warm-up iterations"
        return "profiled method iterations" if window["profiler"] is not None and not window["done"] \
            else "method iterations"
    clock.wrap(engine.Trainer, "train_iteration", iteration_phase)
    clock.wrap(method.UniMatchStep, "strong_views", "strong perturbation")
    clock.wrap(engine.Trainer, "evaluate_epoch", "validation")
    clock.wrap(engine.Trainer, "end_epoch", "checkpoints")
    clock.wrap(pretrained, "_pretrain", "pretraining child")
    owner = next(c for c in type(task).__mro__ if "resolve_data" in c.__dict__)
    clock.wrap(owner, "resolve_data", "write sets + pretrain")   # the sets and the trunk
    streams = engine.Trainer.epoch_streams
    clock.patch(engine.Trainer, "epoch_streams", lambda self, labeled, epoch, warmup: [
        TimedIterator(s, clock) for s in streams(self, labeled, epoch, warmup)])

    timed_iteration = engine.Trainer.train_iteration

    def profiling_iteration(self, batches, iteration=None, guard=None, warmup=False):
        """From the second method epoch's first iteration on, ``profile_iters`` iterations under the profiler."""
        if warmup or window["done"] or profile_iters <= 0:
            return timed_iteration(self, batches, iteration, guard, warmup)
        window["seen"] += 1
        if window["profiler"] is None and window["seen"] > self.epoch_length():
            window["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            window["profiler"].__enter__()
            window["start"] = window["seen"]
        result = timed_iteration(self, batches, iteration, guard, warmup)
        if window["profiler"] is not None and window["seen"] - window["start"] + 1 >= profile_iters:
            window["profiler"].__exit__(None, None, None)
            window["done"] = True
            for event in window["profiler"].key_averages():
                op_seconds[op_group(event.key)] += event.self_cpu_time_total / 1e6 / profile_iters
        return result
    clock.patch(engine.Trainer, "train_iteration", profiling_iteration)
    try:
        yield clock, op_seconds
    finally:
        if window["profiler"] is not None and not window["done"]:
            window["profiler"].__exit__(None, None, None)
        clock.restore()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=["natural", "change_detection", "acdc"])
    parser.add_argument("--fresh-data-home", action="store_true",
                        help="write the synthetic sets and pretrain the trunk in a new UNIMATCH_DATA_HOME")
    parser.add_argument("--profile-iters", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("train_args", nargs="*", help="after --: arguments of the task's train command")
    args = parser.parse_args(argv)
    scratch = tempfile.TemporaryDirectory(prefix="profile_demo_")
    if args.fresh_data_home:
        os.environ["UNIMATCH_DATA_HOME"] = str(Path(scratch.name) / "data")
    train_args = list(args.train_args)
    if "--save-dir" not in train_args:
        train_args += ["--save-dir", str(Path(scratch.name) / "run")]
    if "--no-progress" not in train_args:
        train_args.append("--no-progress")

    task = importlib.import_module(f"tasks.{args.task}.common").TASK
    train = importlib.import_module(f"tasks.{args.task}.train")
    with instrumented(task, args.profile_iters) as (clock, op_seconds):
        started = time.perf_counter()
        result = train.main(train_args)
        total = time.perf_counter() - started

    report = {"task": args.task, "train_args": args.train_args, "wall_seconds": total,
              "phases": dict(clock.seconds), "calls": dict(clock.calls),
              "best_score": result["best_score"],
              "profiled_method_iteration": dict(op_seconds),
              "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    scratch.cleanup()
    return report


def print_report(report: dict) -> None:
    phases, calls, total = report["phases"], report["calls"], report["wall_seconds"]
    accounted = sum(v for k, v in phases.items()
                    if k not in ("strong perturbation", "pretraining child"))
    rows = sorted(phases.items(), key=lambda kv: -kv[1]) + [("other (set-up, logging)", total - accounted)]
    print(f"\n{report['task']}: {total:.1f} s wall, {report['threads']} thread(s)")
    print("| phase | seconds | share | calls | s per call |\n|---|---:|---:|---:|---:|")
    for name, seconds in rows:
        n = calls.get(name, 0)
        per = f"{seconds / n:.3f}" if n else ""
        print(f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f} % | {n or ''} | {per} |")
    ops = report["profiled_method_iteration"]
    if ops:
        whole = sum(ops.values())
        print("\none method iteration, self CPU time by op group (torch.profiler):")
        print("| op group | s per iteration | share |\n|---|---:|---:|")
        for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {seconds:.3f} | {100 * seconds / whole:.0f} % |")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
