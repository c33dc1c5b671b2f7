"""Exceptions with messages meant for users, not stack traces."""


class DataError(ValueError):
    """Bad input data: the message names the file (and split line) and says what to do."""


class ConfigError(ValueError):
    """Bad configuration: unknown key, wrong type or value; the message lists what is valid."""


class CheckpointError(ValueError):
    """A checkpoint whose keys do not fit the model; the message lists missing/unexpected keys."""
