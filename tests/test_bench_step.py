"""The step benchmark's V2 scenarios on tiny shapes (crop 28, batch 2): their configs hold the
official V2 settings, our iteration runs in-process through ``run_variant``, and the command line
times a variant in a child process and prints its table. The official loop body (``official_v2``)
runs only when ``UNIMATCH_OFFICIAL_V2`` names a checkout of LiheYoung/UniMatch-V2."""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_step

OFFICIAL = os.environ.get("UNIMATCH_OFFICIAL_V2")
V2_SCENARIOS = ["natural_v2", "change_detection_v2"]
TINY = {"crop_size": 28, "batch_size": 2}


def child_args(scenario: str, variant: str, **overrides) -> argparse.Namespace:
    return argparse.Namespace(settings=json.dumps(bench_step.VARIANTS[variant]), overrides=json.dumps(overrides),
                              scenario=scenario, device="cpu", threads=torch.get_num_threads(), iters=1, warmup=1,
                              flops=False, profile=False, official=OFFICIAL)


def test_v2_scenarios_hold_the_official_v2_settings():
    natural = bench_step.scenario_config("natural_v2", bench_step.VARIANTS["fp32"])
    assert (natural.model, natural.backbone, natural.crop_size, natural.batch_size) == ("dpt", "dinov2_small", 518, 4)
    assert (natural.lr, natural.lr_multi, natural.method_setting("teacher")) == (5e-6, 40.0, "ema")
    cd = bench_step.scenario_config("change_detection_v2", bench_step.VARIANTS["fp32"], {"batch_size": 2})
    assert (cd.model, cd.backbone, cd.crop_size, cd.batch_size, cd.in_channels) == ("siamese_dpt", "dinov2_base",
                                                                                     252, 2, 6)
    assert cd.method_setting("teacher") == "student" and cd.method_setting("ema")
    assert cd.method_setting("optimizer") == "adamw" and cd.method_setting("cutmix_partner") == "flip"


@pytest.mark.parametrize("scenario", V2_SCENARIOS)
def test_our_v2_iteration_runs_and_reports_its_precision(scenario):
    result = bench_step.run_variant(child_args(scenario, "bf16", backbone="vit_tiny", **TINY))
    assert len(result["times"]) == 1 and len(result["warmup_times"]) == 1
    assert all(math.isfinite(t) and t > 0 for t in result["times"] + result["cpu_times"])
    # bf16 runs as bf16 only where the CPU has native kernels (unimatch.precision)
    from unimatch.precision import cpu_supports_bf16
    assert result["autocast"] == ("bfloat16" if cpu_supports_bf16() else "fp32")


def test_command_line_times_a_v2_variant_in_a_child_process(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_step.py", "--scenario", "natural_v2", "--variants",
                           "fp32", "--batch-size", "2", "--set", "crop_size=28", "backbone=vit_tiny", "--threads", "1",
                           "--iters", "1", "--warmup", "0", "--rounds", "1", "--json", str(out)],
                          cwd=bench_step.REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(bench_step.REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| fp32 | fp32 |" in done.stdout
    summary = json.loads(out.read_text())
    assert summary["overrides"] == {"crop_size": 28, "backbone": "vit_tiny", "batch_size": 2}
    assert summary["variants"]["fp32"]["s_per_iter_median"] > 0


@pytest.mark.skipif(not OFFICIAL, reason="set UNIMATCH_OFFICIAL_V2 to an official UniMatch-V2 checkout")
@pytest.mark.parametrize("scenario", V2_SCENARIOS)
def test_official_v2_loop_body_runs(scenario, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)   # restored after the official loop's patch
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        result = bench_step.run_variant(child_args(scenario, "official_v2", backbone="dinov2_small", **TINY))
    finally:   # both official trees name their package ``model``
        for name in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
            del sys.modules[name]
    assert result["autocast"] == "fp32" and len(result["times"]) == 1
    assert all(math.isfinite(t) and t > 0 for t in result["times"])
    assert Path(OFFICIAL).is_dir()
