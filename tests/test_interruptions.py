"""A training run that is killed, interrupted, run twice at once or runs out of disk: the real
``tasks.natural.train`` entry point in child processes on a tiny synthetic set.

- killed (SIGKILL) at random moments and while it writes its files, 20 times, and rerun each time
  with the same command: the weights at the end equal those of an uninterrupted run, every epoch
  is recorded once and no temporary file is left;
- SIGINT / SIGTERM: one ``error:`` line saying where it stopped and which checkpoint the same
  command resumes from, exit 130 / 143, no traceback; an interrupted ``predict`` or ``evaluate``
  leaves no partial output file;
- a second training into the same run folder is refused in one line naming the running process;
  a lock left by a killed run is taken over;
- a checkpoint write that fails (file-size limit) leaves the previous checkpoint loadable and no
  temporary file.
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tasks.natural.synthetic import ensure_synthetic_voc
from unimatch.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0", "sup_warmup_epochs=0",
        "pretrained=null", "threads=1"]
EPOCHS = 3
KILLS_AT_RANDOM_MOMENTS = 12
# (file, which of its writes): the child kills itself (SIGKILL) at that write, after half of the
# temporary file is written and before the rename; latest.pth and best.pth are checkpoints,
# metrics.jsonl is written just before latest.pth, config.yaml when a run opens its records
KILLS_WHILE_WRITING = [("latest.pth", 1), ("best.pth", 1), ("metrics.jsonl", 2), ("latest.pth", 2),
                       ("config.yaml", 1), ("best.pth", 2), ("latest.pth", 3), ("metrics.jsonl", 3)]

# Runs the natural train entry point as ``python -m tasks.natural.train`` does; with KILL_AT=name:n
# the n-th atomic write of ``name`` is cut in half and the process SIGKILLed before the rename, and
# with SLOW_SAVE=seconds every PIL save waits first (so a signal surely lands between two outputs).
DRIVER = """
import os, signal, sys, time
from pathlib import Path
kill_at = os.environ.get("KILL_AT")
if kill_at:
    name, nth = kill_at.split(":")
    seen, real_replace = [0], os.replace
    def replace(source, target):
        if Path(target).name == name:
            seen[0] += 1
            if seen[0] == int(nth):
                data = Path(source).read_bytes()
                Path(source).write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)
    os.replace = replace
if os.environ.get("SLOW_SAVE"):
    from PIL import Image
    real_save = Image.Image.save
    def slow_save(self, *args, **kwargs):
        time.sleep(float(os.environ["SLOW_SAVE"]))
        return real_save(self, *args, **kwargs)
    Image.Image.save = slow_save
import importlib
from unimatch.cli import exit_on_user_error
command = importlib.import_module(sys.argv[1])
sys.argv = sys.argv[1:]
exit_on_user_error(command.main)
"""


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return ensure_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", n_images=16, size=40, seed=3,
                                labeled_fraction=0.25)


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KILL_AT", "SLOW_SAVE")}
    env.update(OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def train_argv(voc: Path, run: Path, epochs: int = EPOCHS) -> list[str]:
    return ["--data-root", str(voc), "--labeled-split", str(voc / "splits/labeled.txt"),
            "--unlabeled-split", str(voc / "splits/unlabeled.txt"), "--val-split", str(voc / "splits/val.txt"),
            "--save-dir", str(run), "--epochs", str(epochs), "--batch-size", "2", "--num-workers", "0",
            "--no-progress", "--device", "cpu", *TINY]


def start(module: str, argv: list[str], preexec=None, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, module, *argv], cwd=REPO, env=environment(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def run(module: str, argv: list[str], preexec=None, **env) -> subprocess.CompletedProcess:
    child = start(module, argv, preexec, **env)
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "latest.pth")["model"]


def wait_for(condition, child: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert child.poll() is None, f"the child ended first: {child.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "run.lock")


@pytest.fixture(scope="module")
def uninterrupted(voc, tmp_path_factory) -> tuple[Path, float]:
    """The reference run, and how long its training part took (from its first log line on)."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    child = start("tasks.natural.train", train_argv(voc, folder))
    first = child.stdout.readline()
    began = time.monotonic()
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, first + out + err
    return folder, time.monotonic() - began


def test_killed_twenty_times_ends_with_the_weights_of_an_uninterrupted_run(voc, uninterrupted, tmp_path):
    reference, training_seconds = uninterrupted
    folder = tmp_path / "run"
    moments = random.Random(0)
    kills = [("at random", None)] * KILLS_AT_RANDOM_MOMENTS + [("while writing", k) for k in KILLS_WHILE_WRITING]
    random.Random(1).shuffle(kills)
    killed = []
    for how, write in kills:
        if how == "while writing":
            name, nth = write
            finished = run("tasks.natural.train", train_argv(voc, folder), KILL_AT=f"{name}:{nth}")
            killed.append(finished.returncode == -signal.SIGKILL)
            continue
        child = start("tasks.natural.train", train_argv(voc, folder))
        child.stdout.readline()   # the first log line: set-up is done, training begins
        time.sleep(moments.uniform(0, training_seconds))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        killed.append(child.returncode == -signal.SIGKILL)
    # a process is only killed where it still runs; the count shows the kills were real
    assert sum(killed) >= 20, f"only {sum(killed)} of {len(kills)} children were killed"
    finished = run("tasks.natural.train", train_argv(voc, folder))
    assert finished.returncode == 0, finished.stderr
    resumed, straight = weights(folder), weights(reference)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
    assert leftovers(folder) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_training_with_one_line_naming_the_checkpoint_to_resume(voc, tmp_path, signum, status):
    folder = tmp_path / "run"
    child = start("tasks.natural.train", train_argv(voc, folder, epochs=40))
    wait_for(lambda: (folder / "latest.pth").is_file(), child)
    child.send_signal(signum)
    out, err = child.communicate(timeout=120)
    assert child.returncode == status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert errors[0].startswith(f"error: interrupted by {name} in epoch ")
    saved = load_checkpoint(folder / "latest.pth")["epoch"]
    assert errors[0].endswith(f"the same command resumes from {folder / 'latest.pth'} "
                              f"(saved at the end of epoch {saved + 1})")
    assert leftovers(folder) == []
    again = run("tasks.natural.train", train_argv(voc, folder, epochs=40) + ["--epochs", "40"])
    assert f"continuing at epoch {saved + 2}/40" in again.stdout, again.stdout + again.stderr


def test_a_signal_before_the_first_checkpoint_says_the_run_starts_again(voc, tmp_path):
    folder = tmp_path / "run"
    child = start("tasks.natural.train", train_argv(voc, folder, epochs=40), SLOW_SAVE="0")
    child.stdout.readline()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("no checkpoint was saved yet, so the same command starts the run again")
    assert not folder.exists(), "a run that never trained left its folder behind"


@pytest.fixture(scope="module")
def checkpoint(uninterrupted) -> Path:
    return uninterrupted[0] / "best.pth"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_interrupted_predictions_leave_no_partial_file(voc, checkpoint, tmp_path, command):
    output = tmp_path / "out"
    if command == "predict":
        argv = ["--checkpoint", str(checkpoint), "--input", str(voc / "JPEGImages"), "--output", str(output),
                "--device", "cpu"]
    else:
        argv = ["--checkpoint", str(checkpoint), "--data-root", str(voc), "--split", str(voc / "splits/val.txt"),
                "--save-predictions", str(output), "--json", str(tmp_path / "scores.json"), "--device", "cpu"]
    child = start(f"tasks.natural.{command}", argv, SLOW_SAVE="0.1")
    wait_for(lambda: output.is_dir() and any(p.suffix == ".png" for p in output.iterdir()), child)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT while writing its outputs")
    assert leftovers(output) == [] and not (tmp_path / "scores.json").exists()
    written = sorted(output.iterdir())
    assert written, "the signal came before any output"
    for path in written:
        Image.open(path).load()   # each one whole


def test_a_second_training_into_the_same_folder_is_refused(voc, tmp_path):
    folder = tmp_path / "run"
    first = start("tasks.natural.train", train_argv(voc, folder, epochs=6))
    wait_for(lambda: (folder / "run.lock").is_file() and (folder / "run.lock").stat().st_size > 0, first)
    second = run("tasks.natural.train", train_argv(voc, folder, epochs=6))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert second.stderr.strip() == (f"error: --save-dir {folder} is in use by another training (process {first.pid} "
                                     f"on host {os.uname().nodename}, started " + second.stderr.split("started ")[1]
                                     .split(")")[0] + "); wait for it to end or stop it, or choose another --save-dir")
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7))


def test_a_lock_and_partial_files_left_by_a_killed_run_are_taken_over(voc, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.lock").write_text(json.dumps({"host": "node7", "pid": 4321, "started": "2026-01-01 00:00:00"}))
    (folder / ".tmp-4321-latest.pth").write_bytes(b"half a checkpoint")
    (folder / ".latest.pth.tmp").write_bytes(b"half a checkpoint, as earlier versions named it")
    finished = run("tasks.natural.train", train_argv(voc, folder, epochs=1))
    assert finished.returncode == 0, finished.stderr
    assert f"taking over {folder / 'run.lock'} from process 4321 on host node7, started 2026-01-01 00:00:00" \
        in finished.stdout
    assert "removed .tmp-4321-latest.pth" in finished.stdout
    assert leftovers(folder) == []


def file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_a_failed_checkpoint_write_keeps_the_previous_one(voc, tmp_path):
    folder = tmp_path / "run"
    first = run("tasks.natural.train", train_argv(voc, folder, epochs=1))
    assert first.returncode == 0, first.stderr
    before = (folder / "latest.pth").read_bytes()
    limit = len(before) - 1   # every other file fits; the next latest.pth does not
    second = run("tasks.natural.train", train_argv(voc, folder, epochs=2) + ["--resume-with-changes"],
                 preexec=file_size_limit(limit))
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write {folder / 'latest.pth'}: File too large (")
    assert f"{len(before) / 1e6:.1f} MB needed" in line and line.endswith("was left as it was")
    assert (folder / "latest.pth").read_bytes() == before
    assert load_checkpoint(folder / "latest.pth")["epoch"] == 0
    assert leftovers(folder) == []
