"""The label-efficiency benchmark's own logic, on run folders the tests write (real ``metrics.jsonl``
and ``test.json`` files, no training): the commands it builds, the mean ± std over seeds and the
per-seed difference to the first method, and that finished runs are read instead of trained again."""
import json
import shlex
import statistics
from pathlib import Path

import pytest

from benchmarks import label_efficiency

# change detection: test.json holds {"metrics": {...}}, evaluate takes --split test
TASK = "change_detection"
# per method and seed: (best val changed_IoU, test changed_IoU)
SCORES = {
    "supervised lr=0.5": {0: (40.0, 45.0), 1: (42.0, 47.0), 2: (41.0, 43.0)},
    "unimatch class_thresh=false": {0: (50.0, 55.5), 1: (51.0, 52.0), 2: (49.0, 60.0)},
}


def write_run(run_dir: Path, best_val: float, test_value: float, iterations: int = 24) -> None:
    """What a finished train + evaluate leaves in a run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = [{"epoch": 1, "iterations": iterations // 3, "sec_per_iter": 0.5, "changed_IoU": best_val - 10},
               {"epoch": 2, "iterations": 2 * iterations // 3, "sec_per_iter": 1.0, "changed_IoU": best_val},
               {"epoch": 3, "iterations": iterations, "sec_per_iter": 1.5, "changed_IoU": best_val - 5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"changed_IoU": test_value, "F1": test_value + 1, "precision": None, "recall": 70.0, "OA": 99.0}
    (run_dir / "test.json").write_text(json.dumps({"metrics": metrics}))
    (run_dir / "wall_seconds.txt").write_text("12.5\n")


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / label_efficiency.slug(method) / f"seed{seed}"


REAL_RUN = label_efficiency.subprocess.run


def intercept(monkeypatch, handler):
    """Send the benchmark's ``python -m tasks...`` commands to ``handler``; anything else (matplotlib
    asks fc-list for fonts) runs for real. ``subprocess`` is one module for everybody."""
    def run(command, *args, **kwargs):
        if command[1:2] == ["-m"] and command[2].startswith("tasks."):
            return handler(command, **kwargs)
        return REAL_RUN(command, *args, **kwargs)
    monkeypatch.setattr(label_efficiency.subprocess, "run", run)


def no_subprocess(command, **kwargs):
    raise AssertionError(f"a finished run was started again: {command}")


def test_train_command_puts_flags_first_and_the_methods_overrides_last():
    command = label_efficiency.train_command(
        TASK, "unimatch sup_weight=2.0 lr=0.3", 4, Path("out/run"), ["--epochs", "1", "pretrained=null", "--num-workers=0"])
    assert command[1:3] == ["-m", "tasks.change_detection.train"]
    assert command[command.index("--method") + 1] == "unimatch"
    assert command[command.index("--seed") + 1] == "4"
    assert command[command.index("--save-dir") + 1] == str(Path("out/run"))
    # the entry points take KEY=VALUE overrides as trailing words: every flag before them, and the
    # method's own overrides after the shared ones, so they win where both set a key
    assert command[-3:] == ["pretrained=null", "sup_weight=2.0", "lr=0.3"]
    assert command.index("--epochs") < command.index("pretrained=null")
    assert command.index("--num-workers=0") < command.index("pretrained=null")


def test_results_are_mean_and_std_over_seeds_with_the_per_seed_difference_to_the_first_method(
        tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    for method, seeds in SCORES.items():
        for seed, (best_val, test_value) in seeds.items():
            write_run(run_dir(out, method, seed), best_val, test_value)
    intercept(monkeypatch, no_subprocess)
    methods = list(SCORES)
    payload = label_efficiency.main(["--task", TASK, "--seeds", "0", "1", "2", "--out", str(out), "--methods", *methods])

    baseline, unimatch = (payload["summary"][m] for m in methods)
    tests = [SCORES[methods[1]][s][1] for s in (0, 1, 2)]
    assert unimatch["changed_IoU"] == {"mean": pytest.approx(statistics.fmean(tests)),
                                       "std": pytest.approx(statistics.stdev(tests)), "n": 3, "of": 3}
    assert unimatch["per_seed"] == tests
    assert unimatch["gain_per_seed"] == pytest.approx([10.5, 5.0, 17.0])
    assert baseline["gain_per_seed"] == [0.0, 0.0, 0.0]
    assert unimatch["best_val"]["mean"] == pytest.approx(50.0)          # the best epoch, not the last
    assert unimatch["iterations"] == [24]
    assert unimatch["sec_per_iter"]["mean"] == pytest.approx(1.0)
    assert unimatch["wall_s"]["mean"] == pytest.approx(12.5)
    assert unimatch["precision"] == {"mean": None, "std": None, "n": 0, "of": 3}   # null in every test.json

    # the same numbers in the three outputs, and the printed table is results.md's
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == payload["summary"]
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| unimatch class_thresh=false |"))
    assert "| 55.83 ± 4.01 | 55.5 / 52.0 / 60.0 | +10.5 / +5.0 / +17.0 |" in row and "| undefined |" in row
    assert row in capsys.readouterr().out
    assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the recorded command pastes into a shell: each method with overrides stays one word
    command = shlex.split(results["command"])
    assert command[command.index("--methods") + 1:] == methods


def test_only_unfinished_runs_are_trained_and_each_is_scored_from_its_best_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    write_run(run_dir(out, "supervised", 0), 40.0, 45.0)     # finished earlier: read, not trained
    commands = []

    def fake_subprocess(command, check, **kwargs):
        """Stands in for the real train and evaluate: writes what they would."""
        assert check
        commands.append(command)
        if command[2].endswith(".train"):
            target = Path(command[command.index("--save-dir") + 1])
            write_run(target, 30.0, 0.0)
            (target / "test.json").unlink()
        else:
            (Path(command[command.index("--json") + 1])).write_text(json.dumps(
                {"metrics": {"changed_IoU": 33.0, "F1": 1.0, "precision": 2.0, "recall": 3.0, "OA": 4.0}}))
        return None

    intercept(monkeypatch, fake_subprocess)
    payload = label_efficiency.main(["--task", TASK, "--seeds", "0", "--out", str(out),
                                     "--methods", "supervised", "unimatch sup_weight=1.0", "--", "--epochs", "2"])
    unimatch_dir = run_dir(out, "unimatch sup_weight=1.0", 0)
    train, evaluate = commands                                 # one training, one evaluation: the new run's
    assert train[train.index("--save-dir") + 1] == str(unimatch_dir) and train[-1] == "sup_weight=1.0"
    assert "--epochs" in train
    assert evaluate[1:3] == ["-m", "tasks.change_detection.evaluate"]
    assert evaluate[evaluate.index("--checkpoint") + 1] == str(unimatch_dir / "best.pth")
    assert evaluate[evaluate.index("--split") + 1] == "test"
    assert [r["test"]["changed_IoU"] for r in payload["runs"]] == [45.0, 33.0]
    assert payload["summary"]["unimatch sup_weight=1.0"]["gain_per_seed"] == pytest.approx([-12.0])

    # everything finished now: a second call trains nothing and gives the same results
    intercept(monkeypatch, no_subprocess)
    again = label_efficiency.main(["--task", TASK, "--seeds", "0", "--out", str(out),
                                   "--methods", "supervised", "unimatch sup_weight=1.0", "--", "--epochs", "2"])
    assert again["summary"] == payload["summary"]


def test_undefined_metrics_of_some_seeds_are_left_out_of_the_mean_and_counted():
    """Evaluation JSON writes an undefined metric (HD95 of a class never predicted) as null."""
    stats = {**label_efficiency.mean_std([10.0, None, 14.0]), "of": 3}
    assert stats == {"mean": 12.0, "std": pytest.approx(2 ** 0.5 * 2), "n": 2, "of": 3}
    assert label_efficiency.pm(stats) == "12.00 ± 2.83 (2 of 3 seeds)"
    assert label_efficiency.pm({**label_efficiency.mean_std([None]), "of": 1}) == "undefined"
