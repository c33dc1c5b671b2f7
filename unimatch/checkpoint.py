"""Reading and writing checkpoint files without running code hidden in them.

A ``.pth`` file is a pickle, and unpickling can call any function the file names: a checkpoint
shared by download (as the official ones are) could run code on load. Every checkpoint this
package reads goes through :func:`load_checkpoint`, which unpickles with ``weights_only=True``:
tensors, numbers, strings, lists, tuples and dicts only, plus NumPy arrays (plain data; the
random-number state in checkpoints written by earlier versions of this package holds one). A file
that needs anything else is refused with one line naming what it asked for. What we write holds
only those types (:func:`save_checkpoint`), written atomically (:mod:`unimatch.atomic`).
"""
from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimatch import atomic
from unimatch.errors import CheckpointError


def _numpy_array_globals() -> list:
    """What unpickling a NumPy array names: its reconstructor, ``ndarray``, ``dtype`` and the dtype classes."""
    try:
        from numpy._core import multiarray
    except ImportError:   # NumPy 1.x
        from numpy.core import multiarray
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


ALLOWED_GLOBALS = _numpy_array_globals()


def _allowing_numpy_arrays():
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        return safe_globals(ALLOWED_GLOBALS)
    torch.serialization.add_safe_globals(ALLOWED_GLOBALS)   # torch 2.4: no context manager yet
    return contextlib.nullcontext()


def unsafe_globals(path: Path) -> list[str]:
    """The functions and classes a pickle names that ``weights_only`` refuses (read without running them)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        allowed = {f"{g.__module__}.{g.__name__}" for g in ALLOWED_GLOBALS}
        return [name for name in finder(str(path)) if name not in allowed]
    except Exception:
        return []


def load_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """The object in ``path``, unpickled with ``weights_only=True`` on the CPU.

    A file that is missing, unreadable, or that asks for arbitrary unpickling is one
    :class:`CheckpointError` line; the code such a file names is never run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with _allowing_numpy_arrays():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        names = unsafe_globals(path)
        if names or "GLOBAL" in str(error):   # else bytes that are no pickle at all
            asked = f" (it names {', '.join(names[:3])}{' ...' if len(names) > 3 else ''})" if names else ""
            raise CheckpointError(
                f"{path}: refused to load this {what}: reading it needs arbitrary unpickling{asked}, which can run "
                f"code hidden in the file. Only tensors, numbers, strings, lists and dicts are loaded; if you trust "
                f"the file's source, re-save its state dict alone (torch.save(state_dict, new_path)) and give that "
                f"file") from None
        raise CheckpointError(f"{path}: not a readable PyTorch {what} ({error}); the file may be truncated or of "
                              f"another format - re-copy or re-download it") from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch {what} ({type(error).__name__}: {error}); the file "
                              f"may be truncated or of another format - re-copy or re-download it") from None


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` (plain types only, see the module docstring) to ``path`` atomically.

    It is serialised in memory first, so a full disk is reported with the exact size needed and
    never as a half-written file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(path, buffer.getbuffer())
