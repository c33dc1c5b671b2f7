"""The run folder (``--save-dir``): its one writer, whether a run there may be resumed, and what a
run that never trained leaves behind.

The training loop (:mod:`unimatch.engine`) writes the checkpoints and records; this module decides
who may write there and what is there already.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

from unimatch import atomic
from unimatch.checkpoint import load_checkpoint
from unimatch.config import Config, training_differences
from unimatch.errors import CheckpointError, ConfigError, OutputError

try:
    import fcntl
except ImportError:   # Windows: no advisory locks; the folder is then not guarded
    fcntl = None

log = logging.getLogger("unimatch")

LOCK_FILE = "run.lock"
# temporary checkpoint files of versions before unimatch.atomic, removed like its own leftovers
LEGACY_TEMPORARIES = (".latest.pth.tmp", ".best.pth.tmp")


def prepare_run_dir(save_dir: Path) -> Path:
    """Create ``save_dir`` and check that files can be written there, before any data is read:
    a save dir under a regular file or without write permission is one error line, not a
    traceback after minutes of set-up."""
    import tempfile

    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=save_dir):
            pass
    except OSError as error:
        raise OutputError(f"--save-dir {save_dir}: cannot create or write the run directory there "
                          f"({error.strerror}: {error.filename}); choose another folder") from None
    return save_dir


def stored_run_config(save_dir: Path) -> tuple[dict | None, Path | None]:
    """The config of the run in ``save_dir`` and the file it came from: ``latest.pth``'s (the one that
    describes the weights), else ``config.yaml`` (a run stopped before its first epoch ended);
    ``(None, None)`` for a new run folder."""
    import yaml

    latest, written = save_dir / "latest.pth", save_dir / "config.yaml"
    if latest.is_file():
        try:
            checkpoint = load_checkpoint(latest, mmap=True)
        except CheckpointError as error:
            raise CheckpointError(f"{error}. Move it away to start over, or choose another --save-dir") from None
        stored = checkpoint.get("config") if isinstance(checkpoint, dict) else None
        if isinstance(stored, dict):
            return stored, latest
    if written.is_file():
        with open(written) as f:
            stored = yaml.safe_load(f)
        if isinstance(stored, dict):
            return stored, written
    return None, None


def describe_changes(changes: dict) -> str:
    """``key: <stored> stored, <now> now`` for each changed key, in one line."""
    return "; ".join(f"{key}: {before!r} stored, {now!r} now" for key, (before, now) in changes.items())


def refuse_another_tasks_run(save_dir: Path, task: str, train_command: Callable[[str], str] | None = None,
                             stored: dict | None = None) -> None:
    """A run folder holding another task's run is refused, whatever ``--resume-with-changes`` says:
    its weights are not this task's. Checked first, before the data (and a pretrained trunk) are
    prepared, since nothing of them could be used."""
    if stored is None:
        stored, _ = stored_run_config(save_dir)
    if stored is not None and stored.get("task") != task:
        command = f" ({train_command(stored['task'])})" if train_command is not None else ""
        raise ConfigError(f"--save-dir {save_dir} holds a run of the {stored['task']} task{command}, "
                          f"not {task}; choose another --save-dir")


def check_resumable(save_dir: Path, cfg: Config, allow_changes: bool = False,
                    train_command: Callable[[str], str] | None = None) -> dict:
    """The training settings in which ``cfg`` differs from the run already in ``save_dir``
    (:func:`unimatch.config.training_differences`); raises :class:`ConfigError` when there are any
    and ``allow_changes`` is False, or when the run is another task's (named with its command,
    ``train_command(task name)``, when given: :meth:`unimatch.task.Task.command`).

    Called before anything in the run folder is written (config, split, logs), so a rerun with
    another command never continues weights trained under other settings, nor rewrites the
    records that describe them.
    """
    stored, source = stored_run_config(save_dir)
    if stored is None:
        return {}
    refuse_another_tasks_run(save_dir, cfg.task, train_command, stored)
    changes = training_differences(stored, cfg)
    if changes and not allow_changes:
        raise ConfigError(f"--save-dir {save_dir} holds a run trained with other settings "
                          f"({describe_changes(changes)}; from {source.name}); resuming would continue its weights "
                          f"under the new ones. Start a new run with another --save-dir, or add "
                          f"--resume-with-changes to continue it on purpose")
    return changes


RUN_FILES = ("config.yaml", "train.log", "metrics.jsonl", "tensorboard")   # and the task's own (Task.run_files)


class NewRunFiles:
    """The files a training run adds to its folder, removed again when it fails before it saved a
    checkpoint: a run that never trained leaves nothing that looks like a run. Files of an earlier
    run (anything there when the run began) and any folder that holds a checkpoint are never touched."""

    def __init__(self, save_dir: Path, is_main: bool, task_files: tuple[str, ...] = ()):
        self.save_dir = Path(save_dir)
        self.names = (*RUN_FILES, *task_files)
        self.created_folder = not self.save_dir.exists()
        self.present = set() if self.created_folder or not self.save_dir.is_dir() else \
            {p.name for p in self.save_dir.iterdir()}
        self.active = is_main and "latest.pth" not in self.present

    def remove_if_untrained(self) -> None:
        import shutil

        if not self.active or not self.save_dir.is_dir():
            return
        if any((self.save_dir / name).exists() for name in ("latest.pth", "best.pth")):
            return
        for handler in list(log.handlers):
            if isinstance(handler, logging.FileHandler) and \
                    Path(handler.baseFilename).parent == self.save_dir.resolve():
                handler.close()
                log.removeHandler(handler)
        for name in self.names:
            path = self.save_dir / name
            if name in self.present or not path.exists():
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if self.created_folder and not any(self.save_dir.iterdir()):
            self.save_dir.rmdir()




class RunFolderBusy(OutputError):
    """Another training holds the run folder: this one must not touch anything in it."""


class RunLock:
    """One training writes into a run folder at a time.

    The lock is an advisory ``flock`` on ``run.lock``, which also records the holder's host, PID
    and start time for the message a second training gets. The kernel drops the lock when its
    process dies, however it dies, so a lock file left by a killed run is taken over instead of
    blocking its resume. Temporary files that killed writers left in the folder are removed then,
    since no other process writes there. ``notes`` says what was taken over and removed, for the
    run's log (which is opened only once the folder is this run's).
    """

    def __init__(self, path: Path, fd: int | None, notes: list[str] = ()):
        self.path, self.fd, self.notes = path, fd, list(notes)

    @classmethod
    def acquire(cls, save_dir: Path) -> "RunLock":
        path = Path(save_dir) / LOCK_FILE
        if fcntl is None:
            return cls(path, None, [f"this platform has no file locks: nothing stops a second training from "
                                    f"writing into {save_dir}"])
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = cls._describe(cls._read(fd))
                os.close(fd)
                raise RunFolderBusy(f"--save-dir {save_dir} is in use by another training ({holder}); wait for it to "
                                  f"end or stop it, or choose another --save-dir") from None
            try:   # the file may have been removed by the holder that just released it: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous, notes = cls._read(fd), []
        if previous:
            notes.append(f"taking over {path} from {cls._describe(previous)}, which no longer holds it")
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        for leftover in atomic.remove_stale_temporaries(Path(save_dir)) + cls._remove_legacy(Path(save_dir)):
            notes.append(f"removed {leftover.name}, a partial file an interrupted run left in {save_dir}")
        return cls(path, fd, notes)

    @staticmethod
    def _remove_legacy(folder: Path) -> list[Path]:
        removed = [folder / name for name in LEGACY_TEMPORARIES if (folder / name).is_file()]
        for path in removed:
            path.unlink()
        return removed

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _describe(holder: dict) -> str:
        if not holder:
            return "a process that did not say which"
        return f"process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file first, while it is still held)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
