"""Exceptions with messages meant for users, not stack traces."""
import re


class DataError(ValueError):
    """Bad input data: the message names the file (and split line) and says what to do."""


class ConfigError(ValueError):
    """Bad configuration: unknown key, wrong type or value; the message lists what is valid."""


class CheckpointError(ValueError):
    """A checkpoint whose keys do not fit the model; the message lists missing/unexpected keys."""


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
