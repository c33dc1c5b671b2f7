"""Label-efficiency benchmark: each method, each seed, the same data and number of iterations.

    python -m benchmarks.label_efficiency --task change_detection --seeds 0 1 2
    python -m benchmarks.label_efficiency --task natural --seeds 0 1 2 \\
        --methods "supervised sup_weight=1.0 lr=0.04" unimatch "unimatch class_thresh=false" --out runs/bench/natural
    python -m benchmarks.label_efficiency --task acdc --seeds 0 -- --epochs 1 --num-workers 0
    python -m benchmarks.label_efficiency --task natural --seeds 0 1 2 --methods unimatch_v2

``unimatch_v2`` trains the task's V2 demo config (``synthetic_v2.yaml``: the same data and
iterations as the V1 demo), which a train command without ``--config`` takes for that method.

A method is ``NAME [KEY=VALUE ...]`` (one shell word: quote it): the training method and config
overrides, so a row with and without an extension is one more entry. Arguments after ``--`` go to
every training run. Each run is the task's real entry point (``python -m tasks.<task>.train``) in a
subprocess, with the task's default demo config, ``--seed`` and its own ``--save-dir``; the
checkpoint is selected on ``val`` by the trainer (``best.pth``), and ``test`` is scored once
afterwards by the task's ``evaluate``. A run whose ``test.json`` exists is not repeated, so an
interrupted benchmark continues where it stopped.

Writes into ``--out``: ``results.json`` (every run: validation curve, test metrics, iterations,
seconds), ``results.md`` (mean +- std over seeds per method of the headline test metric and the
secondary ones, the per-seed difference to the first method, wall time) and ``validation.png``
(validation metric per epoch: mean line and min-max band per method). The table is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from unimatch import atomic
from unimatch.report import read_json_lines


@dataclass(frozen=True)
class TaskSpec:
    """What differs between tasks: the validation metric, the test metrics and how to get them."""
    val_metric: str
    headline: str
    secondary: tuple[str, ...]
    train_args: tuple[str, ...] = ()
    # the default comparison: the baseline at the learning rate its grid search chose on val
    # (docs/benchmarks.md; with the plain labelled loss where the demo config weights it), then
    # UniMatch with the demo config as it is
    methods: tuple[str, ...] = ("supervised", "unimatch")

    def eval_command(self, task: str, run_dir: Path, out: Path) -> list[str]:
        command = [sys.executable, "-m", f"tasks.{task}.evaluate", "--checkpoint", str(run_dir / "best.pth"),
                   "--config", str(run_dir / "config.yaml"), "--json", str(out), "--overwrite"]
        return command + ["--split", "test"]

    def test_metrics(self, task: str, payload: dict) -> dict:
        if task == "acdc":
            mean = payload["summary"]["mean"]
            return {"mean_dice": mean["dice"], "mean_hd95_mm": mean["hd95_mm"], "mean_asd_mm": mean["asd_mm"],
                    **{f"dice/{name}": row["dice"] for name, row in payload["summary"]["classes"].items()}}
        return dict(payload["metrics"])


TASKS = {
    "change_detection": TaskSpec("changed_IoU", "changed_IoU", ("F1", "precision", "recall", "OA"),
                                 methods=("supervised sup_weight=1.0 lr=0.08", "unimatch")),
    "acdc": TaskSpec("mean_dice", "mean_dice", ("mean_hd95_mm", "mean_asd_mm"),
                     methods=("supervised lr=0.1", "unimatch")),
    "natural": TaskSpec("mIoU", "mIoU", ("OA",), methods=("supervised sup_weight=1.0 lr=0.04", "unimatch")),
}


@dataclass
class Run:
    method: str
    seed: int
    run_dir: Path
    val_curve: list = field(default_factory=list)  # [(epoch, value)]
    test: dict = field(default_factory=dict)
    iterations: int = 0
    sec_per_iter: float = math.nan
    wall_s: float = math.nan


def split_method(entry: str) -> tuple[str, list[str]]:
    """``"unimatch sup_weight=2"`` -> ("unimatch", ["sup_weight=2"])."""
    name, *overrides = entry.split()
    return name, overrides


def train_command(task: str, entry: str, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    """Flags first, then every KEY=VALUE override (the entry points take overrides as trailing words)."""
    name, overrides = split_method(entry)
    extra_flags = [a for a in extra if "=" not in a or a.startswith("-")]
    extra_overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    return [sys.executable, "-m", f"tasks.{task}.train", "--method", name, "--seed", str(seed),
            "--save-dir", str(run_dir), "--no-progress", *extra_flags, *extra_overrides, *overrides]


def slug(entry: str) -> str:
    return "_".join(entry.replace("=", "-").split()).replace("/", "-")


def run_one(task: str, entry: str, seed: int, out: Path, extra: list[str]) -> Run:
    spec = TASKS[task]
    run_dir = out / "runs" / slug(entry) / f"seed{seed}"
    run = Run(entry, seed, run_dir)
    test_json, timing = run_dir / "test.json", run_dir / "wall_seconds.txt"
    if not test_json.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        subprocess.run(train_command(task, entry, seed, run_dir, extra), check=True)
        atomic.write_text(timing, f"{time.perf_counter() - start:.1f}\n")
        subprocess.run(spec.eval_command(task, run_dir, test_json), check=True, stdout=subprocess.DEVNULL)
    records = read_json_lines(run_dir / "metrics.jsonl")
    run.val_curve = [(r["epoch"], r[spec.val_metric]) for r in records if spec.val_metric in r]
    run.iterations = records[-1]["iterations"]
    run.sec_per_iter = sum(r["sec_per_iter"] for r in records) / len(records)
    run.wall_s = float(timing.read_text()) if timing.is_file() else math.nan
    run.test = spec.test_metrics(task, json.loads(test_json.read_text()))
    return run


def mean_std(values: list[float | None]) -> dict:
    """Mean and std over the seeds where the metric is defined (an evaluation JSON writes an
    undefined metric, e.g. the HD95 of a class never predicted, as null); ``n`` counts them."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(defined), "std": statistics.stdev(defined) if len(defined) > 1 else 0.0,
            "n": len(defined)}


def pm(stats: dict) -> str:
    if stats["mean"] is None:
        return "undefined"
    where = "" if stats["n"] == stats.get("of", stats["n"]) else f" ({stats['n']} of {stats['of']} seeds)"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}{where}"


def summarize(task: str, methods: list[str], runs: list[Run]) -> dict:
    """Per method: mean and std over seeds of each test metric, best validation, seconds; and the
    per-seed difference of the headline metric to the first method (the baseline)."""
    spec = TASKS[task]
    by_method = {m: sorted((r for r in runs if r.method == m), key=lambda r: r.seed) for m in methods}
    baseline = {r.seed: r.test[spec.headline] for r in by_method[methods[0]]}
    summary = {}
    for method, method_runs in by_method.items():
        row = {"seeds": [r.seed for r in method_runs], "iterations": sorted({r.iterations for r in method_runs})}
        for metric in (spec.headline, *spec.secondary):
            row[metric] = {**mean_std([r.test[metric] for r in method_runs]), "of": len(method_runs)}
        row["per_seed"] = [r.test[spec.headline] for r in method_runs]
        row["gain_per_seed"] = [r.test[spec.headline] - baseline[r.seed] for r in method_runs if r.seed in baseline]
        row["best_val"] = mean_std([max(v for _, v in r.val_curve) for r in method_runs])
        row["wall_s"] = mean_std([r.wall_s for r in method_runs])
        row["sec_per_iter"] = mean_std([r.sec_per_iter for r in method_runs])
        summary[method] = row
    return summary


def markdown_table(task: str, methods: list[str], summary: dict) -> str:
    spec = TASKS[task]
    metrics = (spec.headline, *spec.secondary)
    header = (["method", "iterations", f"test {spec.headline} (mean ± std)", "per seed",
               f"Δ vs {methods[0]} per seed"] + [f"test {m}" for m in spec.secondary]
              + [f"best val {spec.val_metric}", "wall s", "s/iter"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = summary[method]
        cells = [method, "/".join(str(i) for i in row["iterations"]),
                 pm(row[spec.headline]),
                 " / ".join(f"{v:.1f}" for v in row["per_seed"]),
                 " / ".join(f"{v:+.1f}" for v in row["gain_per_seed"])]
        cells += [pm(row[m]) for m in metrics[1:]]
        cells += [pm(row["best_val"]), f"{row['wall_s']['mean']:.0f}", f"{row['sec_per_iter']['mean']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_validation(task: str, methods: list[str], runs: list[Run], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        curves = [dict(r.val_curve) for r in runs if r.method == method]
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        values = [[c[e] for c in curves] for e in epochs]
        line, = axis.plot(epochs, [statistics.fmean(v) for v in values], marker="o", markersize=3, label=method)
        axis.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                          alpha=0.2)
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"val {TASKS[task].val_metric}")
    axis.set_title(f"{task}: validation per epoch (mean, min-max over {len({r.seed for r in runs})} seed(s))")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.label_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+",
                        help='first = baseline of the Δ column; "NAME KEY=VALUE ..." adds config overrides '
                             '(default: the task\'s baseline at its tuned lr, then unimatch)')
    parser.add_argument("--out", type=Path, help="default: runs/label_efficiency/<task>")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: passed to every training run")
    args = parser.parse_args(argv)
    args.methods = args.methods or list(TASKS[args.task].methods)
    out = args.out or Path("runs") / "label_efficiency" / args.task
    extra = [a for a in args.train_args if a != "--"]
    runs = [run_one(args.task, method, seed, out, extra) for seed in args.seeds for method in args.methods]
    summary = summarize(args.task, args.methods, runs)
    table = markdown_table(args.task, args.methods, summary)
    # quoted as a shell needs it, so a method with overrides stays one word when the line is pasted
    command = "python -m benchmarks.label_efficiency " + shlex.join(argv if argv is not None else sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    payload = {"task": args.task, "seeds": args.seeds, "methods": args.methods, "train_args": extra,
               "command": command, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "summary": summary,
               "runs": [{"method": r.method, "seed": r.seed, "run_dir": str(r.run_dir), "iterations": r.iterations,
                         "val_curve": r.val_curve, "test": r.test, "wall_s": r.wall_s,
                         "sec_per_iter": r.sec_per_iter} for r in runs]}
    atomic.write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic.write_text(out / "results.md", f"`{command}`\n\n{table}\n")
    plot_validation(args.task, args.methods, runs, out / "validation.png")
    print(table)
    return payload


if __name__ == "__main__":
    main()
