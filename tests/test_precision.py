"""The speed options change how the maths runs, not what it computes.

channels_last must give the fp32 loss and gradients to float rounding; bf16 autocast on the CPU
must stay within bf16's precision of the fp32 loss; the allocator setting must keep large
blocks on the heap; compile must fall back to eager with one log line where it cannot work; and
the step must hand its stats to the engine without reading them back from the device.
"""
import copy
import dataclasses
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import TinySegmentationSet, deterministic, tiny_config, tiny_deeplab
from unimatch import precision
from unimatch.config import Config
from unimatch.distributed import DistContext
from unimatch.engine import Trainer
from unimatch.errors import ConfigError
from unimatch.losses import build_criterion
from unimatch.method import StepSettings, UniMatchStep
from unimatch.models.siamese import SiameseDeepLabV3Plus
from unimatch.models.unet import UNet
from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
from unimatch.report import EvalResult

CPU = torch.device("cpu")


def setup_module():
    deterministic()


def models():
    torch.manual_seed(0)
    return {
        "deeplabv3plus": (tiny_deeplab(), 3, 3),
        "siamese": (SiameseDeepLabV3Plus(nclass=2, backbone="tiny", width=8, reduce_channels=8,
                                         decoder_channels=16), 6, 2),
        "unet": (UNet(in_chns=1, class_num=4, feature_channels=[4, 8, 16, 32, 64]), 1, 4),
    }


def batches(channels: int, nclass: int, n: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(3)

    def image():
        return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    ignore = torch.zeros(n, size, size, dtype=torch.long)
    ignore[:, -4:] = 255
    return [(image(), torch.randint(0, nclass, (n, size, size), generator=g)), (image(), ignore),
            (image(), ignore.clone())]


def step_loss(model, channels, nclass, data, autocast, channels_last=False):
    """Loss and gradients of one UniMatch step (conf_thresh 0: every pixel counts)."""
    torch.manual_seed(0)  # Dropout2d of the FP stream
    settings = StepSettings(conf_thresh=0.0, unsup_loss="ce")
    step = UniMatchStep(model, settings, build_criterion({"name": "CELoss", "kwargs": {"ignore_index": 255}}, nclass),
                        StrongPerturbation(PerturbationSettings(channel_group_size=1 if channels == 1 else 3),
                                           torch.Generator().manual_seed(0)),
                        Normalizer([0.5] * (1 if channels == 1 else 3), [0.25] * (1 if channels == 1 else 3),
                                   channels), nclass)
    data = [[precision.to_memory_format(t, channels_last) for t in pair] for pair in data]
    loss, stats = step(*data, autocast=autocast)
    model.zero_grad()
    loss.backward()
    return loss.item(), stats, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def without_elementwise_dropout(model):
    """The UNet's nn.Dropout draws its mask in memory order, so under channels_last it drops other
    (equally many, equally random) elements; Dropout2d (the FP stream) draws per channel and is
    unaffected. For an exact comparison the element-wise dropouts are switched off."""
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.p = 0.0
    return model


@pytest.mark.parametrize("name", ["deeplabv3plus", "siamese", "unet"])
def test_channels_last_gives_the_fp32_loss_and_gradients(name):
    model, channels, nclass = models()[name]
    model = without_elementwise_dropout(model).train()
    fast = precision.prepare_model(copy.deepcopy(model), channels_last=True, compile_model=False)
    assert fast.state_dict().keys() == model.state_dict().keys()
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
                and m.in_channels > 1)  # with one input channel both layouts have the same strides
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    data = batches(channels, nclass)
    off = torch.autocast("cpu", enabled=False)
    loss, _, grads = step_loss(model, channels, nclass, data, off)
    loss_cl, _, grads_cl = step_loss(fast, channels, nclass, data, off, channels_last=True)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == grads_cl.keys()
    # summation order differs in NHWC kernels; measured: 2e-5 (DeepLabV3+) and up to 1.6e-3 (UNet,
    # one thread: its BatchNorm/bilinear backward on 2x2 bottleneck maps) of the gradient's norm
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_cl = torch.cat([grads_cl[k].flatten() for k in grads])
    assert (flat_cl - flat).norm() <= 5e-3 * flat.norm()


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="CPU without native bf16")
@pytest.mark.parametrize("name", ["deeplabv3plus", "siamese", "unet"])
def test_bf16_autocast_on_cpu_stays_within_bf16_precision_of_fp32(name):
    model, channels, nclass = models()[name]
    model.train()
    data = batches(channels, nclass)
    loss, _, grads = step_loss(model, channels, nclass, data, precision.autocast_for("none", CPU))
    loss_bf16, stats, grads_bf16 = step_loss(copy.deepcopy(model), channels, nclass, data,
                                             precision.autocast_for("bf16", CPU), channels_last=True)
    # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %); a few percent over a whole step
    assert loss_bf16 == pytest.approx(loss, rel=3e-2)
    assert stats["loss"].dtype == torch.float32
    # the weights and their gradients stay fp32: autocast only lowers the convolutions/matmuls
    assert all(g.dtype == torch.float32 for g in grads_bf16.values())
    assert grads_bf16.keys() == grads.keys()


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="CPU without native bf16")
def test_bf16_training_on_cpu_follows_the_fp32_course(tmp_path):
    """Single-step gradients at random initialisation are small sums of cancelling terms, where
    bf16 rounding is a large share (cosine to fp32's 0.2-0.95 on the tiny models); what must
    hold is that training takes the same course. Measured: the per-epoch losses agree within
    0.4 %. (The supervised method, because the tiny model's pseudo-labels at random init make
    UniMatch's first epoch chaotic in fp32 already.)"""
    import json

    def train(amp):
        torch.manual_seed(0)
        cfg = tiny_config(amp=amp, epochs=6, lr=0.05, method="supervised")
        run = tmp_path / amp
        trainer = Trainer(cfg, tiny_deeplab(), TinySegmentationSet(8, "labeled"),
                          TinySegmentationSet(16, "unlabeled", seed=1), lambda m: EvalResult({"mIoU": 0.0}),
                          DistContext(device=CPU), run, progress=False)
        trainer.fit()
        return [json.loads(line)["loss_x"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    fp32, bf16 = train("none"), train("bf16")
    assert fp32[-1] < 0.9 * fp32[0]  # it learns
    assert bf16 == pytest.approx(fp32, rel=0.02)


def test_bf16_logits_on_cpu_are_close_to_fp32():
    model = tiny_deeplab().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fp32 = model(x)
        with precision.autocast_for("bf16", CPU):
            bf16 = model(x).float()
    scale = fp32.abs().max()
    assert (bf16 - fp32).abs().max() <= 3e-2 * scale


def test_autocast_choice_per_device(monkeypatch, caplog):
    assert precision.autocast_dtype("none", CPU) is None
    assert precision.autocast_dtype("fp16", torch.device("cuda")) is torch.float16
    assert precision.autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        precision.autocast_dtype("fp16", CPU)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="unimatch"):
        assert precision.autocast_dtype("bf16", CPU) is None
    assert "no native bf16" in caplog.text


def test_speed_keys_default_to_the_plain_fp32_layout_and_are_validated():
    """Every speed option is opt-in: each changes a run's numbers against the official fp32 NCHW run with the
    same seed (channels_last reorders Dropout's draws), so none is on unless asked for."""
    cfg = Config()
    assert (cfg.channels_last, cfg.compile, cfg.cpu_allocator, cfg.amp) == (False, False, "default", "none")
    with pytest.raises(ConfigError, match="cpu_allocator"):
        dataclasses.replace(cfg, cpu_allocator="jemalloc").validate()
    assert cfg.threads is None
    with pytest.raises(ConfigError, match="threads"):
        dataclasses.replace(cfg, threads=0).validate()


ALLOCATION_PROBE = textwrap.dedent("""
    import ctypes, sys
    from unimatch.precision import configure_cpu_allocator
    applied = configure_cpu_allocator(sys.argv[1], keep_mb=int(sys.argv[2]))

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2()
    blocks = [libc.malloc(64 << 20) for _ in range(3)]
    mapped = libc.mallinfo2().hblkhd - before.hblkhd
    for b in blocks:
        libc.free(b)
    kept = libc.mallinfo2().arena - before.arena
    print(applied, mapped >> 20, kept >> 20)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_reuse_allocator_keeps_large_blocks_on_a_bounded_heap(tmp_path):
    """Three 64 MiB blocks: by default each is a fresh mmap (zero-filled by the kernel on every
    iteration); with ``reuse`` they come from the heap, which keeps at most keep_mb of free top."""
    def probe(mode, keep_mb):
        out = subprocess.run([sys.executable, "-c", ALLOCATION_PROBE, mode, str(keep_mb)], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1]), int(out[2])
    applied, mapped, _ = probe("default", 1024)
    assert not applied and mapped >= 192
    applied, mapped, kept = probe("reuse", 1024)
    assert applied and mapped == 0 and kept >= 190  # 192 MiB freed, kept for the next iteration
    applied, mapped, kept = probe("reuse", 64)
    assert applied and mapped == 0 and kept <= 1  # beyond keep_mb it goes back to the system
    with pytest.raises(ConfigError):
        precision.configure_cpu_allocator("unbounded")


def test_compile_falls_back_to_eager_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(precision, "compile_available", lambda device: "RuntimeError: no C++ compiler")
    model = tiny_deeplab().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    with caplog.at_level(logging.WARNING, logger="unimatch"):
        prepared = precision.prepare_model(model, channels_last=False, compile_model=True)
    assert len(caplog.records) == 1 and "running the model eagerly" in caplog.text
    with torch.no_grad():
        assert torch.equal(prepared(x), expected)


def test_compiled_model_keeps_its_state_dict_keys(monkeypatch):
    monkeypatch.setattr(precision, "compile_available", lambda device: None)
    model = tiny_deeplab()
    keys = list(model.state_dict())
    prepared = precision.prepare_model(model, channels_last=True, compile_model=True)
    assert prepared is model and list(prepared.state_dict()) == keys  # checkpoints stay official


def test_step_returns_device_tensors_and_the_trainer_logs_numbers(tmp_path):
    """No .item() inside the step: on CUDA it would wait for the GPU every iteration."""
    cfg = tiny_config(epochs=1, log_every=2, channels_last=True)
    model = precision.prepare_model(tiny_deeplab(), cfg.channels_last, False)
    labeled, unlabeled = TinySegmentationSet(4, "labeled"), TinySegmentationSet(8, "unlabeled", seed=1)
    trainer = Trainer(cfg, model, labeled, unlabeled, lambda m: EvalResult({"mIoU": 1.0}),
                      DistContext(device=CPU), tmp_path, progress=False)
    data = [trainer.to_device([torch.stack([s[i][j] for i in range(2)]) for j in range(2)])
            for s in (labeled, unlabeled, unlabeled)]
    assert data[0][0].is_contiguous(memory_format=torch.channels_last)
    stats = trainer.train_iteration(data)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in stats.values())
    sums = {}
    last = trainer.record_stats([(0, 0.1, stats), (1, 0.1, stats)], sums)
    assert isinstance(last["loss"], float) and sums["loss"] == pytest.approx(2 * last["loss"])
    trainer.fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines and isinstance(__import__("json").loads(lines[-1])["loss"], float)
