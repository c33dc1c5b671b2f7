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
import signal
import socket
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
KILL_AT_RANDOM = "at a random moment"
KILLS = 20
# (file, which of its writes): the child kills itself (SIGKILL) at that write, after half of the
# temporary file is written and before the rename; latest.pth and best.pth are checkpoints,
# metrics.jsonl is written just before latest.pth, config.yaml when a run opens its records
KILLS_WHILE_WRITING = [("best.pth", 1), ("latest.pth", 1), ("metrics.jsonl", 1), ("config.yaml", 1),
                       ("latest.pth", 2), ("metrics.jsonl", 2), ("best.pth", 1), ("latest.pth", 1)]


def epochs_needed(kill) -> int:
    """Epochs a run must have left for ``kill`` to happen: a write of latest.pth or metrics.jsonl
    comes once per epoch, config.yaml at every start, and best.pth surely only in the first epoch."""
    if kill == KILL_AT_RANDOM:
        return 1
    name, nth = kill
    return {"config.yaml": 0, "best.pth": EPOCHS}.get(name, nth)

# The children: one "zygote" process imports torch and the entry points once, on one thread (so no
# OpenMP pool exists to break in a fork), then forks a child per job, so that a child is ready in
# milliseconds instead of seconds of imports. Each child is a real process, killed by real
# signals. A job is a JSON line {module, argv, stdout, stderr, env, fsize}; the zygote answers
# "pid N" when the child starts and "exit N" (waitstatus_to_exitcode: -9 for SIGKILL) when it ends.
# In a child, KILL_AT=name:n cuts the n-th atomic write of ``name`` in half and SIGKILLs the
# process before the rename; SLOW_SAVE=seconds makes every PIL save wait first (so a signal
# surely lands between two outputs); fsize sets a file-size limit.
ZYGOTE = """
import importlib, json, os, resource, signal, sys, time, traceback
from pathlib import Path
import torch
from PIL import Image
from unimatch.cli import exit_on_user_error
for name in ("tasks.natural.train", "tasks.natural.evaluate", "tasks.natural.predict", "torch.utils.tensorboard",
             "torch._dynamo", "albumentations", "cv2", "scipy.ndimage"):
    importlib.import_module(name)

def child(job):
    for stream, fd in (("stdout", 1), ("stderr", 2)):
        os.dup2(os.open(job[stream], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.update(job["env"])
    if job.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    kill_at = job["env"].get("KILL_AT")
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
    if job["env"].get("SLOW_SAVE"):
        real_save = Image.Image.save
        def slow_save(self, *args, **kwargs):
            time.sleep(float(job["env"]["SLOW_SAVE"]))
            return real_save(self, *args, **kwargs)
        Image.Image.save = slow_save
    sys.argv = [job["module"], *job["argv"]]
    status = 0
    try:
        exit_on_user_error(importlib.import_module(job["module"]).main)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(job)
    print("pid", pid, flush=True)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Child:
    """One job of the zygote: its pid, its output files and, once it ended, its exit status."""

    def __init__(self, zygote: "Zygote", folder: Path):
        self.zygote, self.stdout_path, self.stderr_path = zygote, folder / "stdout.txt", folder / "stderr.txt"
        self.pid = int(zygote.answer("pid"))
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = int(self.zygote.answer("exit"))
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the child, unless it has ended already (its exit status then says so)."""
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def running(self) -> bool:
        """True until the zygote has reaped it (it waits for each child at once)."""
        if self.returncode is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


class Zygote:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, env=environment(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.jobs = 0

    def answer(self, kind: str) -> str:
        line = self.process.stdout.readline()
        assert line.startswith(kind + " "), f"the zygote said {line!r}"
        return line.split()[1]

    def start(self, module: str, argv: list[str], folder: Path, fsize: int | None = None, **env) -> Child:
        self.jobs += 1
        logs = folder / f"job{self.jobs}"
        logs.mkdir(parents=True)
        job = {"module": module, "argv": argv, "stdout": str(logs / "stdout.txt"), "stderr": str(logs / "stderr.txt"),
               "env": env, "fsize": fsize}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return Child(self, logs)

    def run(self, module: str, argv: list[str], folder: Path, fsize: int | None = None, **env) -> Child:
        child = self.start(module, argv, folder, fsize, **env)
        child.wait()
        return child

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote():
    forker = Zygote()
    yield forker
    forker.close()


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return ensure_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", n_images=16, size=40, seed=3,
                                labeled_fraction=0.25)


def environment(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def train_argv(voc: Path, run: Path, epochs: int = EPOCHS) -> list[str]:
    return ["--data-root", str(voc), "--labeled-split", str(voc / "splits/labeled.txt"),
            "--unlabeled-split", str(voc / "splits/unlabeled.txt"), "--val-split", str(voc / "splits/val.txt"),
            "--save-dir", str(run), "--epochs", str(epochs), "--batch-size", "2", "--num-workers", "0",
            "--no-progress", "--device", "cpu", *TINY]


TRAIN = "tasks.natural.train"


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "latest.pth")["model"]


def epochs_done(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "latest.pth")["epoch"] + 1 if (run_dir / "latest.pth").is_file() else 0


def wait_for(condition, child: Child, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert child.running() and time.monotonic() < deadline, child.stderr()
        time.sleep(0.005)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "run.lock")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def uninterrupted(voc, zygote, tmp_path_factory) -> tuple[Path, float]:
    """The reference run, and how long a run takes once the zygote's first job has warmed it up
    (a second run, which must end with the same weights)."""
    folder = tmp_path_factory.mktemp("reference")
    durations = []
    for name in ("warm-up", "run"):
        began = time.monotonic()
        child = zygote.run(TRAIN, train_argv(voc, folder / name), folder)
        assert child.returncode == 0, child.stderr()
        durations.append(time.monotonic() - began)
    first, second = weights(folder / "warm-up"), weights(folder / "run")
    assert all(torch.equal(first[k], second[k]) for k in first)
    return folder / "run", durations[-1]


def test_killed_twenty_times_ends_with_the_weights_of_an_uninterrupted_run(voc, zygote, uninterrupted, tmp_path):
    """SIGKILLs at random moments of what is left of the run and in the middle of writing a file,
    20 in all; after each the same command runs again. A run that completes between kills is
    compared and a new one begins, so every kill lands in a run that still trains; a random moment
    that comes after the child ended is not a kill, and another one is drawn."""
    reference, seconds = uninterrupted
    straight = weights(reference)
    moments = random.Random(0)
    plan = [KILL_AT_RANDOM] * (KILLS - len(KILLS_WHILE_WRITING))
    for index, write in enumerate(KILLS_WHILE_WRITING):
        plan.insert(index * 2, write)
    runs, kills, attempts = [tmp_path / "run0"], 0, 0

    def finish(folder: Path) -> None:
        child = zygote.run(TRAIN, train_argv(voc, folder), tmp_path)
        assert child.returncode == 0, child.stderr()
        resumed = weights(folder)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), f"{folder} ended with other weights"
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, EPOCHS + 1))
        assert leftovers(folder) == []

    while kills < KILLS and attempts < 2 * KILLS:
        kill = plan[kills]
        attempts += 1
        folder, left = runs[-1], EPOCHS - epochs_done(runs[-1])
        if left < epochs_needed(kill):
            finish(folder)
            runs.append(tmp_path / f"run{len(runs)}")
            folder, left = runs[-1], EPOCHS
        if kill == KILL_AT_RANDOM:
            child = zygote.start(TRAIN, train_argv(voc, folder), tmp_path)
            time.sleep(moments.uniform(0, seconds * left / EPOCHS))
            child.send_signal(signal.SIGKILL)
        else:
            child = zygote.start(TRAIN, train_argv(voc, folder), tmp_path, KILL_AT=f"{kill[0]}:{kill[1]}")
        kills += child.wait() == -signal.SIGKILL
    finish(runs[-1])
    assert kills == KILLS, f"only {kills} of {attempts} children were killed"


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_training_with_one_line_naming_the_checkpoint_to_resume(voc, zygote, tmp_path, signum, status):
    folder = tmp_path / "run"
    child = zygote.start(TRAIN, train_argv(voc, folder, epochs=40), tmp_path)
    wait_for(lambda: (folder / "latest.pth").is_file(), child)
    child.send_signal(signum)
    assert child.wait() == status, child.stderr()
    err = child.stderr()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == last_line(err)
    assert errors[0].startswith(f"error: interrupted by {signal.Signals(signum).name} in epoch ")
    saved = epochs_done(folder)
    assert errors[0].endswith(f"the same command resumes from {folder / 'latest.pth'} (saved at the end of epoch {saved})")
    assert leftovers(folder) == []
    again = zygote.start(TRAIN, train_argv(voc, folder, epochs=40), tmp_path)
    wait_for(lambda: "resumed from" in again.stdout(), again)
    again.send_signal(signal.SIGTERM)
    again.wait()
    assert f"continuing at epoch {saved + 1}/40" in again.stdout()


def test_a_signal_before_the_first_checkpoint_says_the_run_starts_again(voc, zygote, tmp_path):
    folder = tmp_path / "run"
    child = zygote.start(TRAIN, train_argv(voc, folder, epochs=40), tmp_path)
    wait_for(lambda: "method unimatch" in child.stdout(), child)
    child.send_signal(signal.SIGTERM)
    assert child.wait() == 143
    assert "Traceback" not in child.stderr()
    assert last_line(child.stderr()).endswith("no checkpoint was saved yet, so the same command starts the run again")
    assert not folder.exists(), "a run that never trained left its folder behind"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_interrupted_predictions_leave_no_partial_file(voc, zygote, uninterrupted, tmp_path, command):
    checkpoint, output = uninterrupted[0] / "best.pth", tmp_path / "out"
    if command == "predict":
        argv = ["--checkpoint", str(checkpoint), "--input", str(voc / "JPEGImages"), "--output", str(output),
                "--device", "cpu"]
    else:
        argv = ["--checkpoint", str(checkpoint), "--data-root", str(voc), "--split", str(voc / "splits/val.txt"),
                "--save-predictions", str(output), "--json", str(tmp_path / "scores.json"), "--device", "cpu"]
    child = zygote.start(f"tasks.natural.{command}", argv, tmp_path, SLOW_SAVE="0.2")
    wait_for(lambda: output.is_dir() and any(not p.name.startswith(".") for p in output.iterdir()), child)
    child.send_signal(signal.SIGINT)
    assert child.wait() == 130, child.stderr()
    assert "Traceback" not in child.stderr()
    assert last_line(child.stderr()).startswith("error: interrupted by SIGINT while writing its outputs; each file")
    assert leftovers(output) == [] and not (tmp_path / "scores.json").exists()
    for path in output.iterdir():
        Image.open(path).load()   # each one whole


def test_a_second_training_into_the_same_folder_is_refused(voc, zygote, tmp_path):
    """The second one is the real command line (``python -m``), refused without touching the folder."""
    folder = tmp_path / "run"
    first = zygote.start(TRAIN, train_argv(voc, folder, epochs=200), tmp_path)
    wait_for(lambda: (folder / "latest.pth").is_file(), first)
    second = subprocess.run([sys.executable, "-m", TRAIN, *train_argv(voc, folder, epochs=200)], cwd=REPO,
                            env=environment(), capture_output=True, text=True, timeout=300)
    still_running = first.running() and (folder / "run.lock").is_file()
    first.send_signal(signal.SIGTERM)
    assert first.wait() == 143 and still_running
    assert second.returncode == 2, second.stderr
    assert last_line(second.stderr).startswith(f"error: --save-dir {folder} is in use by another training (process "
                                               f"{first.pid} on host {socket.gethostname()}, started ")
    assert last_line(second.stderr).endswith("wait for it to end or stop it, or choose another --save-dir")
    assert len(second.stderr.strip().splitlines()) == 1
    assert {"latest.pth", "best.pth", "config.yaml", "metrics.jsonl", "train.log"} <= {p.name for p in folder.iterdir()}


def test_a_lock_and_partial_files_left_by_a_killed_run_are_taken_over(voc, zygote, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.lock").write_text(json.dumps({"host": "node7", "pid": 4321, "started": "2026-01-01 00:00:00"}))
    (folder / ".tmp-4321-latest.pth").write_bytes(b"half a checkpoint")
    (folder / ".latest.pth.tmp").write_bytes(b"half a checkpoint, as earlier versions named it")
    child = zygote.run(TRAIN, train_argv(voc, folder, epochs=1), tmp_path)
    assert child.returncode == 0, child.stderr()
    assert (f"taking over {folder / 'run.lock'} from process 4321 on host node7, started 2026-01-01 00:00:00, "
            "which no longer holds it") in child.stdout()
    assert "removed .tmp-4321-latest.pth" in child.stdout() and "removed .latest.pth.tmp" in child.stdout()
    assert leftovers(folder) == []


def test_a_failed_checkpoint_write_keeps_the_previous_one(voc, zygote, tmp_path):
    folder = tmp_path / "run"
    assert zygote.run(TRAIN, train_argv(voc, folder, epochs=1), tmp_path).returncode == 0
    before = (folder / "latest.pth").read_bytes()
    # every other file the run writes fits under this limit; the next latest.pth does not
    child = zygote.run(TRAIN, train_argv(voc, folder, epochs=2) + ["--resume-with-changes"], tmp_path,
                       fsize=len(before) - 1)
    assert child.returncode == 2 and "Traceback" not in child.stderr(), child.stderr()
    line = last_line(child.stderr())
    assert line.startswith(f"error: cannot write {folder / 'latest.pth'}: File too large (")
    assert f"{len(before) / 1e6:.1f} MB needed" in line and line.endswith("was left as it was")
    assert (folder / "latest.pth").read_bytes() == before
    assert epochs_done(folder) == 1
    assert leftovers(folder) == []
