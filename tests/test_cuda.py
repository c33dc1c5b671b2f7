"""CUDA behaviour of the core; skipped where no GPU is present (CI has none)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import TinySegmentationSet, tiny_config, tiny_deeplab
from unimatch.distributed import DistContext
from unimatch.engine import Trainer
from unimatch.inference import Predictor, evaluate_segmentation
from unimatch.losses import build_criterion
from unimatch.method import StepSettings, UniMatchStep
from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
from unimatch.report import EvalResult

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def test_perturbation_on_cuda_equals_cpu_for_the_same_generator_state():
    images = torch.rand(16, 6, 48, 48)
    cpu = StrongPerturbation(PerturbationSettings(), torch.Generator().manual_seed(5))
    gpu = StrongPerturbation(PerturbationSettings(), torch.Generator().manual_seed(5))
    a = cpu(images)
    b = gpu(images.to(CUDA)).cpu()
    assert torch.allclose(a, b, atol=2e-4)
    assert torch.equal(cpu.cutmix_boxes(16, 48, 48), gpu.cutmix_boxes(16, 48, 48, device=CUDA).cpu())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_step_runs_under_autocast_and_matches_fp32_loosely(amp):
    cfg = tiny_config(amp=amp, conf_thresh=0.0)
    model = tiny_deeplab().to(CUDA).train()
    labeled = TinySegmentationSet(4, "labeled")
    unlabeled = TinySegmentationSet(8, "unlabeled", seed=1)
    batch = [torch.stack([labeled[i][j] for i in range(4)]).to(CUDA) for j in range(2)]
    weak = [torch.stack([unlabeled[i][j] for i in range(4)]).to(CUDA) for j in range(2)]
    partner = [torch.stack([unlabeled[i][j] for i in range(4, 8)]).to(CUDA) for j in range(2)]
    losses = {}
    for name, autocast in (("fp32", torch.autocast("cuda", enabled=False)),
                           (amp, torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16))):
        torch.manual_seed(0)
        step = UniMatchStep(model, StepSettings.from_config(cfg), build_criterion(cfg.criterion, cfg.nclass),
                            StrongPerturbation(PerturbationSettings.from_config(cfg), torch.Generator().manual_seed(0)),
                            Normalizer(cfg.mean, cfg.std, 3), cfg.nclass)
        loss, stats = step(batch, weak, partner, autocast=autocast)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                            if p.grad is not None)
        model.zero_grad()
        losses[name] = loss.item()
    assert losses[amp] == pytest.approx(losses["fp32"], rel=0.1)


def test_trainer_on_cuda_with_bf16_resumes(tmp_path):
    cfg = dataclasses.replace(tiny_config(amp="bf16", epochs=2), num_workers=2)
    ctx = DistContext(device=CUDA)
    val = TinySegmentationSet(4, "val", seed=9)
    loader = torch.utils.data.DataLoader(val, batch_size=1)

    def evaluate(model):
        confusion = evaluate_segmentation(Predictor(model, cfg, CUDA), loader, cfg.nclass, "original",
                                          cfg.crop_size)
        return EvalResult({"mIoU": confusion.miou()})

    def run(epochs):
        torch.manual_seed(0)
        model = tiny_deeplab().to(CUDA)
        trainer = Trainer(dataclasses.replace(cfg, epochs=epochs), model, TinySegmentationSet(8, "labeled"),
                          TinySegmentationSet(16, "unlabeled", seed=1), evaluate, ctx, tmp_path / "run",
                          progress=False)
        trainer.fit()
        return model

    run(1)
    model = run(2)
    assert (tmp_path / "run" / "best.pth").is_file()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_loss_guard_adds_no_host_sync_per_iteration():
    """On CUDA the non-finite check is deferred: observing a step must not synchronise."""
    from unimatch.errors import TrainingDiverged
    from unimatch.finite import NonFiniteLossGuard

    guard = NonFiniteLossGuard(CUDA, iters_per_epoch=4)
    loss = torch.tensor(1.0, device=CUDA)
    stats = {"loss": loss, "loss_x": loss * 2, "mask_ratio": loss / 2}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for iteration in range(3):
            guard.observe(iteration, loss, stats)
        bad = loss * float("nan")
        guard.observe(3, bad, {"loss": bad, "loss_x": bad, "mask_ratio": loss})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(TrainingDiverged, match=r"epoch 1, iteration 4/4 \(global 4\): non-finite term\(s\) "
                                               r"loss=nan, loss_x=nan"):
        guard.check()
