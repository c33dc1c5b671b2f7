"""The label-efficiency benchmark end to end on a tiny configuration: 1 seed, 1 epoch, two methods,
the real entry points in subprocesses; it must write its three outputs with consistent numbers."""
import json

import pytest

from benchmarks import label_efficiency
from tasks.natural.synthetic import ensure_synthetic_voc

# no supervised-only warm-up (the demo configs have one), so one epoch runs the semi-supervised step
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "sup_warmup_epochs=0", "pretrained=null"]


def test_benchmark_runs_end_to_end_and_writes_results_table_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = ensure_synthetic_voc(tmp_path / "voc", n_images=20, size=40, seed=3, labeled_fraction=0.25)
    out = tmp_path / "bench"
    extra = ["--data-root", str(root), "--labeled-split", str(root / "splits/labeled.txt"),
             "--unlabeled-split", str(root / "splits/unlabeled.txt"), "--val-split", str(root / "splits/val.txt"),
             "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", *TINY]
    payload = label_efficiency.main(["--task", "natural", "--seeds", "0", "--out", str(out),
                                     "--methods", "supervised", "fixmatch dist_align=true", "--", *extra])
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["supervised", "fixmatch dist_align=true"]
    assert "--methods supervised 'fixmatch dist_align=true' --" in results["command"]  # pastes into a shell
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("supervised", 0), ("fixmatch dist_align=true", 0)]
    for run in results["runs"]:
        assert run["iterations"] == 12 // 4     # 12 unlabelled images, batch 4, one epoch: equal for both
        assert len(run["val_curve"]) == 1 and 0.0 <= run["test"]["mIoU"] <= 100.0
        config = (tmp_path / run["run_dir"] / "config.yaml").read_text()
        assert "seed: 0" in config
    fixmatch = results["runs"][1]
    assert "dist_align: true" in (tmp_path / fixmatch["run_dir"] / "config.yaml").read_text()
    summary = results["summary"]["fixmatch dist_align=true"]
    assert summary["gain_per_seed"] == [pytest.approx(fixmatch["test"]["mIoU"] - results["runs"][0]["test"]["mIoU"])]
    table = (out / "results.md").read_text()
    assert "| fixmatch dist_align=true | 3 |" in table and "mIoU" in table
    assert table.split("\n", 2)[2].strip() in capsys.readouterr().out
    assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished run is not trained again
    assert label_efficiency.main(["--task", "natural", "--seeds", "0", "--out", str(out), "--methods", "supervised",
                                  "--", *extra])["runs"][0]["test"] == results["runs"][0]["test"]
    assert payload["summary"] == results["summary"]


def test_undefined_metrics_of_some_seeds_are_left_out_of_the_mean_and_counted():
    """Evaluation JSON writes an undefined metric (HD95 of a class never predicted) as null."""
    stats = {**label_efficiency.mean_std([10.0, None, 14.0]), "of": 3}
    assert stats == {"mean": 12.0, "std": pytest.approx(2 ** 0.5 * 2), "n": 2, "of": 3}
    assert label_efficiency.pm(stats) == "12.00 ± 2.83 (2 of 3 seeds)"
    assert label_efficiency.pm({**label_efficiency.mean_std([None]), "of": 1}) == "undefined"


def test_default_comparison_trains_each_baseline_at_its_tuned_lr(tmp_path, monkeypatch):
    """Without --methods the baselines run at the lr their 3-seed grids chose on val (ACDC 0.1,
    change detection 0.32, natural images 0.04; docs/benchmarks.md), with the plain labelled loss
    where the demo config weights it (sup_weight 2), not at UniMatch's demo lr."""
    commands = []

    def record(command, **kwargs):
        commands.append(command)
        raise KeyboardInterrupt   # stop after the first training command

    monkeypatch.setattr(label_efficiency.subprocess, "run", record)
    for task in ("acdc", "change_detection", "natural"):
        with pytest.raises(KeyboardInterrupt):
            label_efficiency.main(["--task", task, "--seeds", "0", "--out", str(tmp_path / task)])
    acdc, change_detection, natural = commands
    assert acdc[acdc.index("--method") + 1] == "supervised" and acdc[-1] == "lr=0.1"
    assert change_detection[change_detection.index("--method") + 1] == "supervised"
    assert change_detection[-2:] == ["sup_weight=1.0", "lr=0.32"]
    assert natural[natural.index("--method") + 1] == "supervised" and natural[-2:] == ["sup_weight=1.0", "lr=0.04"]
