"""Writing files that a later command reads, so that a crash, a signal or a full disk never leaves
a half-written one in their place.

Every such file (checkpoints, config, split records, metrics, predictions, generated datasets) is
written to a temporary file in the same folder, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic within one file system) and the folder entry fsynced. A failed write
leaves the previous file as it was, removes its temporary file and raises one
:class:`~unimatch.errors.OutputError` line that says what failed and how much space was needed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from unimatch.errors import OutputError

TEMPORARY_PREFIX = ".tmp-"
_SPACE_ERRORS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temporary_sibling(path: Path) -> Path:
    """The temporary file beside ``path``: hidden, unique to this process, and keeping the whole
    suffix (``.nii.gz``, ``.png``, ``.tif``) because writers choose the format by it."""
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:   # a folder cannot be opened on some platforms: its entries are then not fsynced
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):   # file systems without fsync on folders
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (a generated dataset before it is renamed into place)."""
    for parent, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(parent) / name)
        fsync_path(Path(parent))


def write_failure(path: Path, error: OSError, needed: int | None) -> OutputError:
    """One line: what could not be written, why, and (on a full disk or file-size limit) how much
    space it needed against what is free."""
    reason = error.strerror or str(error)
    message = f"cannot write {path}: {reason}"
    if error.errno in _SPACE_ERRORS:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        need = f"{needed / 1e6:.1f} MB needed" if needed is not None else "more space needed"
        message += f" ({need}, {free / 1e6:.1f} MB free there)" if free is not None else f" ({need})"
        message += "; free some space (or raise the file-size limit) and run the same command again"
    return OutputError(message + f"; {path} was left as it was" if path.exists() else message)


@contextlib.contextmanager
def _in_place_of(temporary: Path, path: Path, needed: int | None) -> Iterator[None]:
    """Run the block that fills ``temporary``, then fsync it and rename it over ``path``. On failure
    (a signal included) the temporary file is removed and ``path`` is left as it was; an OSError
    becomes one :class:`OutputError` line."""
    try:
        yield
        fsync_path(temporary)
        os.replace(temporary, path)
    except OSError as error:
        size = needed if needed is not None else (temporary.stat().st_size if temporary.exists() else None)
        temporary.unlink(missing_ok=True)
        raise write_failure(path, error, size) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def commit(temporary: Path, path: Path, needed: int | None = None) -> None:
    """Put the finished ``temporary`` (written by a caller that manages it) in the place of ``path``."""
    with _in_place_of(temporary, path, needed):
        pass


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name (PIL, nibabel,
    rasterio); once the block ends it is fsynced and renamed over ``path``. On any failure (a
    signal included) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    with _in_place_of(temporary, path, needed):
        yield temporary


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_output(path, needed=len(data)) as temporary:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that killed processes left in ``folder`` (a run folder when its
    one writer starts: no other process writes there then); returns what was removed."""
    removed = []
    if folder.is_dir():
        for leftover in folder.glob(f"{TEMPORARY_PREFIX}*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed
