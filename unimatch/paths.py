"""Where generated data lives, so every entry point agrees on one cache directory."""
import os
from pathlib import Path


def data_home() -> Path:
    """Root of cached synthetic datasets: ``$UNIMATCH_DATA_HOME`` or ``~/.cache/unimatch``."""
    root = os.environ.get("UNIMATCH_DATA_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "unimatch"


def config_path(*parts: str) -> Path:
    """A file under the installed ``configs/`` folder (works from a clone and an editable install)."""
    import configs
    return Path(configs.__file__).resolve().parent.joinpath(*parts)
