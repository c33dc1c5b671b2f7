"""A UniMatch V2 run (EMA teacher, AdamW) killed with SIGKILL three times and rerun with the same command
ends with the student and the EMA of an uninterrupted run, bit for bit: the real ``tasks.natural.train``
in child processes (the zygote of tests/test_interruptions.py, whose 20-kill test covers the mechanism
for V1). The EMA labels the unlabelled images, so an EMA not restored on resume changes both."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from tasks.natural.synthetic import ensure_synthetic_voc
from test_interruptions import TRAIN, Zygote, epochs_done, leftovers
from unimatch.checkpoint import load_checkpoint

EPOCHS = 3


def argv(voc, run):
    return ["--data-root", str(voc), "--labeled-split", str(voc / "splits/labeled.txt"),
            "--unlabeled-split", str(voc / "splits/unlabeled.txt"), "--val-split", str(voc / "splits/val.txt"),
            "--save-dir", str(run), "--epochs", str(EPOCHS), "--batch-size", "2", "--num-workers", "0",
            "--no-progress", "--device", "cpu", "--method", "unimatch_v2", "crop_size=28", "log_every=0",
            "threads=1", "conf_thresh=0.0", "pretrained=null"]


def final_states(run):
    checkpoint = load_checkpoint(run / "latest.pth")
    return checkpoint["model"], checkpoint["model_ema"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def zygote():
    forker = Zygote()
    yield forker
    forker.close()


def test_a_v2_run_killed_three_times_ends_with_the_student_and_ema_of_an_uninterrupted_run(zygote, tmp_path):
    voc = ensure_synthetic_voc(tmp_path / "voc", n_images=8, size=32, seed=3, labeled_fraction=0.25)
    reference = tmp_path / "reference"
    assert zygote.run(TRAIN, argv(voc, reference), tmp_path).returncode == 0
    run = tmp_path / "run"
    # epoch 1 saved, killed while writing epoch 2's latest.pth; then while the rerun writes epoch 2's metrics line
    for kill in ("latest.pth:2", "metrics.jsonl:1"):
        assert zygote.run(TRAIN, argv(voc, run), tmp_path, KILL_AT=kill).returncode == -signal.SIGKILL
        assert epochs_done(run) == 1
    # then at the end of epoch 3, after epoch 2's checkpoint: while the rerun writes its second latest.pth
    # (epoch 3's). Cut at a write, not on a timer: on an idle machine the tiny run finished before a poll saw epoch 2
    assert zygote.run(TRAIN, argv(voc, run), tmp_path, KILL_AT="latest.pth:2").returncode == -signal.SIGKILL
    assert epochs_done(run) == 2
    finish = zygote.run(TRAIN, argv(voc, run), tmp_path)
    assert finish.returncode == 0, finish.stderr()
    (student, ema), (student_ref, ema_ref) = final_states(run), final_states(reference)
    assert not same(ema_ref, student_ref)
    assert same(ema, ema_ref), "the EMA differs from the uninterrupted run's"
    assert same(student, student_ref), "the student differs from the uninterrupted run's"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1)) and leftovers(run) == []
