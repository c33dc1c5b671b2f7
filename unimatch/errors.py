"""Exceptions with messages meant for users, not stack traces.

Every one is a :class:`UserError`: the command-line entry points print its message as one
``error:`` line and exit with status 2 (``unimatch.cli.exit_on_user_error``); bugs keep their
traceback.
"""
import re


class UserError(ValueError):
    """Something the user can fix: the message says what is wrong and what to do."""


class DataError(UserError):
    """Bad input data: the message names the file (and split line) and says what to do."""


class ConfigError(UserError):
    """Bad configuration: unknown key, wrong type or value; the message lists what is valid."""


class CheckpointError(UserError):
    """A checkpoint whose keys do not fit the model; the message lists missing/unexpected keys."""


class TrainingDiverged(UserError):
    """The loss or the weights became NaN/Inf; the run stops before a checkpoint is overwritten."""


class OutputError(UserError):
    """An output location (run directory, prediction folder) that cannot be created or written."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (what a cluster scheduler sends on pre-emption), raised by the
    handler :func:`unimatch.cli.exit_on_user_error` installs. The entry point prints one line (where
    the work stopped, ``note``) and exits with ``128 + signal``, as a shell reports a signal. A
    KeyboardInterrupt, so DataLoader worker processes, which inherit the handler, exit quietly."""

    def __init__(self, signum: int, note: str = ""):
        super().__init__(signum)
        self.signum, self.note = signum, note

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        import signal

        name = signal.Signals(self.signum).name
        return f"interrupted by {name}" + (f" {self.note}" if self.note else "")


_WORKER_WRAPPER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.")


def user_message(error: Exception) -> str:
    """The message a user should read for ``error``.

    A DataLoader worker's exception reaches the main process re-raised with the worker's whole
    traceback as its message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."), the real message last; this returns that last message alone.
    """
    text = str(error)
    wrapped = _WORKER_WRAPPER.match(text)
    if wrapped:
        marker = f"{wrapped.group(1)}: "
        for line in reversed(text.rstrip().splitlines()):
            if marker in line:
                return line.split(marker, 1)[1]
    return text
