"""Train one task with several methods for the same number of iterations and tabulate the results.

    python benchmarks/compare_methods.py --task natural --methods supervised fixmatch unimatch \\
        --out runs/bench/natural -- --epochs 15
    python benchmarks/compare_methods.py --task acdc --methods supervised unimatch -- --cases 1

Arguments after ``--`` go to every ``python -m tasks.<task>.train`` run unchanged (each run gets
its own ``--save-dir``). The table shows the best and the last validation score of the config's
``select_metric``, and the mean seconds per training iteration measured by the engine.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", required=True, choices=["natural", "acdc", "change_detection"])
    parser.add_argument("--methods", nargs="+", default=["supervised", "fixmatch", "unimatch"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = [a for a in args.train_args if a != "--"]
    train = importlib.import_module(f"tasks.{args.task}.train")
    rows = []
    for method in args.methods:
        run_dir = args.out / method
        start = time.perf_counter()
        train.main(["--method", method, "--save-dir", str(run_dir), "--no-progress", *extra])
        wall = time.perf_counter() - start
        records = read_records(run_dir)
        config = (run_dir / "config.yaml").read_text()
        metric = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("select_metric:"))
        scores = [r[metric] for r in records if metric in r]
        rows.append({"method": method, "metric": metric, "best": max(scores), "last": scores[-1],
                     "iterations": records[-1]["iterations"],
                     "sec_per_iter": sum(r["sec_per_iter"] for r in records) / len(records), "wall_s": wall,
                     "last_record": records[-1]})
    lines = [f"| method | iterations | best {rows[0]['metric']} | last {rows[0]['metric']} | s/iter | wall s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['iterations']} | {r['best']:.2f} | {r['last']:.2f} | {r['sec_per_iter']:.3f} | "
              f"{r['wall_s']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
