"""Two CPU processes under torchrun (gloo): training stays in step and evaluation is all-reduced
(also with an EMA teacher and AdamW: the EMA, of the unwrapped model, stays the same on both ranks)."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import TinySegmentationSet, deterministic, tiny_config, tiny_deeplab
from unimatch.inference import Predictor, evaluate_segmentation

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VAL_SIZE = 5  # odd: the two ranks evaluate 3 and 2 images

WORKER = textwrap.dedent("""
    import json
    import sys

    import torch
    from torch.utils.data import DataLoader

    from helpers import TinySegmentationSet, tiny_config, tiny_deeplab
    from unimatch.distributed import cleanup, setup_distributed, unwrap, wrap_model
    from unimatch.data import ShardSampler
    from unimatch.engine import Trainer
    from unimatch.inference import Predictor, evaluate_segmentation
    from unimatch.report import EvalResult

    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    cfg = tiny_config(epochs=2, **json.loads(sys.argv[2]))
    model = wrap_model(tiny_deeplab(seed=ctx.rank), ctx)  # different inits: DDP must broadcast rank 0's
    labeled = TinySegmentationSet(4, "labeled", seed=1)
    unlabeled = TinySegmentationSet(8, "unlabeled", seed=2)
    val = TinySegmentationSet({val_size}, "val", seed=3, flip=False)
    loader = DataLoader(val, batch_size=1, sampler=ShardSampler(len(val), ctx.rank, ctx.world_size))
    evaluations = []

    def evaluate(m):
        cm = evaluate_segmentation(Predictor(m, cfg, ctx.device), loader, cfg.nclass, "original", cfg.crop_size)
        evaluations.append({{"mIoU": cm.miou(), "OA": cm.overall_accuracy(), "matrix": cm.matrix.tolist()}})
        return EvalResult({{"mIoU": cm.miou(), "OA": cm.overall_accuracy()}})

    trainer = Trainer(cfg, model, labeled, unlabeled, evaluate, ctx, out_dir + "/run", progress=False)
    result = trainer.fit()
    torch.save(unwrap(model).state_dict(), f"{{out_dir}}/state_{{ctx.rank}}.pt")
    if trainer.ema is not None:
        torch.save(trainer.ema.state_dict(), f"{{out_dir}}/ema_{{ctx.rank}}.pt")
    with open(f"{{out_dir}}/rank_{{ctx.rank}}.json", "w") as f:
        json.dump({{"world_size": ctx.world_size, "evaluated": len(loader), "evaluations": evaluations,
                   "best": result["best_score"], "iterations": trainer.epoch_length(),
                   "labeled_reads": labeled.reads, "unlabeled_reads": unlabeled.reads}}, f)
    cleanup()
""").format(val_size=VAL_SIZE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("changes", [{}, {"teacher": "ema", "optimizer": "adamw"}], ids=["sgd", "ema-adamw"])
def test_two_processes_train_in_step_and_report_identical_metrics(tmp_path, changes):
    deterministic()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(script), str(tmp_path), json.dumps(changes)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["evaluated"] for r in ranks] == [3, 2]  # sharded without padding
    # each rank trains on its half of the unlabelled set: 8 / 2 ranks / batch 2 = 2 iterations
    assert [r["iterations"] for r in ranks] == [2, 2]
    assert [r["unlabeled_reads"] for r in ranks] == [2 * 2 * 2 * 2] * 2  # 2 streams x 2 iters x 2 x 2 epochs
    # every evaluation is all-reduced: both ranks report the same scores of the same confusion matrix
    assert len(ranks[0]["evaluations"]) == 2 * (2 if changes else 1)   # student (and EMA) after each epoch
    assert ranks[0]["evaluations"] == ranks[1]["evaluations"]
    assert ranks[0]["best"] == ranks[1]["best"]
    matrix = torch.tensor(ranks[0]["evaluations"][-2 if changes else -1]["matrix"])   # the student's
    assert matrix.sum().item() == VAL_SIZE * (32 * 32 - 2 * 32)  # every image, ignore rows skipped

    states = [torch.load(tmp_path / f"state_{r}.pt") for r in (0, 1)]
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key

    # the all-reduced matrix is the single-process evaluation of the final model on the whole set
    cfg = tiny_config()
    model = tiny_deeplab()
    model.load_state_dict(states[0])
    val = TinySegmentationSet(VAL_SIZE, "val", seed=3, flip=False)
    cm = evaluate_segmentation(Predictor(model, cfg, torch.device("cpu")), DataLoader(val, batch_size=1), cfg.nclass,
                               "original", cfg.crop_size)
    assert torch.equal(cm.matrix, matrix.to(cm.matrix.dtype))

    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # written by rank 0 only
    checkpoint = torch.load(run / "latest.pth", weights_only=False)
    for key in states[0]:
        assert torch.equal(checkpoint["model"][key], states[0][key]), key
    if changes:
        emas = [torch.load(tmp_path / f"ema_{r}.pt") for r in (0, 1)]
        assert list(emas[0]) == list(states[0])   # the unwrapped model's keys, no "module."
        for key in emas[0]:
            assert torch.equal(emas[0][key], emas[1][key]), key
            assert torch.equal(checkpoint["model_ema"][key], emas[0][key]), key
