"""The demo profiler (benchmarks/profile_demo.py) on a tiny ACDC run: every phase it names is timed
as often as the run does it, the profiled iterations are split by op group, and the trainer's
functions are its own again afterwards."""
import torch

from benchmarks import profile_demo
from unimatch import engine, method


def test_op_groups_name_the_kernels_of_a_training_step():
    assert profile_demo.op_group("aten::mkldnn_convolution") == "convolution"
    assert profile_demo.op_group("aten::convolution_backward") == "convolution"
    assert profile_demo.op_group("aten::native_batch_norm_backward") == "normalisation"
    assert profile_demo.op_group("aten::upsample_bilinear2d") == "resampling"
    assert profile_demo.op_group("aten::_foreach_add_") == "optimiser"
    assert profile_demo.op_group("aten::nll_loss2d_forward") == "loss"
    assert profile_demo.op_group("aten::mul") == "element-wise"
    assert profile_demo.op_group("aten::linear") == profile_demo.op_group("aten::addmm") == "matrix products"
    assert profile_demo.op_group("aten::empty_strided") == "other"


def test_a_tiny_acdc_run_is_timed_by_phase(acdc_phantom, tmp_path, capsys):
    torch.set_num_threads(1)
    originals = (engine.Trainer.train_iteration, engine.Trainer.epoch_streams, method.UniMatchStep.strong_views)
    report = profile_demo.main(["--task", "acdc", "--profile-iters", "2", "--", "--data-root", str(acdc_phantom),
                                "--cases", "1", "--epochs", "3", "--batch-size", "4", "--num-workers", "0",
                                "--save-dir", str(tmp_path / "run"), "crop_size=32",
                                "feature_channels=[4,8,16,32,64]", "sup_warmup_epochs=1", "eval_every=1"])
    calls, phases = report["calls"], report["phases"]
    per_epoch = calls["warm-up iterations"]            # the one warm-up epoch
    assert per_epoch > 2
    # two method epochs: the second one's first two iterations ran under the profiler
    assert calls["profiled method iterations"] == 2
    assert calls["method iterations"] == 2 * per_epoch - 2
    assert calls["strong perturbation"] == 2 * per_epoch
    assert calls["validation"] == 3 and calls["checkpoints"] == 3
    assert calls["write sets + pretrain"] == 1 and "pretraining child" not in calls   # ACDC has no trunk
    assert phases["loader"] > 0
    assert sum(v for k, v in phases.items() if k not in ("strong perturbation", "pretraining child")) \
        < report["wall_seconds"]
    ops = report["profiled_method_iteration"]
    assert ops["convolution"] > 0 and ops["element-wise"] > 0
    assert "| method iterations |" in capsys.readouterr().out
    assert (engine.Trainer.train_iteration, engine.Trainer.epoch_streams,
            method.UniMatchStep.strong_views) == originals
