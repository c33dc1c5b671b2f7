"""Where generated data lives, so every entry point agrees on one cache directory, and the one guard
that keeps outputs from being overwritten."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from unimatch import atomic
from unimatch.errors import DataError


def data_home() -> Path:
    """Root of cached synthetic datasets: ``$UNIMATCH_DATA_HOME`` or ``~/.cache/unimatch``."""
    root = os.environ.get("UNIMATCH_DATA_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "unimatch"


def config_path(*parts: str) -> Path:
    """A file under the installed ``configs/`` folder (works from a clone and an editable install)."""
    import configs
    return Path(configs.__file__).resolve().parent.joinpath(*parts)


def write_once(root: Path, parameters: dict, write, manifest: str = "meta.json",
               what: str = "the built-in synthetic dataset") -> Path:
    """Make ``root`` hold a generated dataset exactly once, atomically, and return it.

    ``write(folder)`` fills a temporary sibling folder, which is then renamed into place, so an
    interrupted run never leaves a folder that looks complete (``what`` names it in the two log
    lines). ``root/manifest`` (JSON) records
    ``parameters`` (``write`` may store more in it); a later call with other parameters, or a
    non-empty folder without a manifest, is a :class:`DataError`, never an overwrite. Two
    processes racing to write the same dataset both end up using the first one renamed.
    """
    import json
    import shutil
    import tempfile

    root = Path(root)

    def check() -> Path:
        try:
            found = json.loads((root / manifest).read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{root} exists but holds no readable {manifest}, so it is not a finished generated "
                            f"dataset ({error}); delete it or choose another root") from error
        differing = {k: (found.get(k), v) for k, v in parameters.items() if found.get(k) != v}
        if differing:
            details = ", ".join(f"{k}: on disk {have!r}, asked {want!r}" for k, (have, want) in differing.items())
            raise DataError(f"{root / manifest}: this folder holds a dataset generated with other parameters "
                            f"({details}); delete it or choose another root")
        return root

    if root.exists() and (any(root.iterdir()) or (root / manifest).exists()):
        return check()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    started = time.monotonic()
    print(f"writing {what} to {root} (first run only; later runs reuse it) ...",
          file=sys.stderr, flush=True)
    try:
        write(staging)
        if not (staging / manifest).exists():
            (staging / manifest).write_text(json.dumps(parameters, indent=2) + "\n")
        atomic.fsync_tree(staging)   # every file on the disk before the folder is renamed into place
        try:
            if root.exists():
                root.rmdir()   # an empty folder; one another writer has filled since is not empty
            os.rename(staging, root)
            atomic.fsync_path(root.parent)
        except OSError:
            if not (root / manifest).is_file():   # not a finished dataset from a concurrent writer
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {root} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return check()


def map_in_processes(render, count: int, min_per_process: int = 32) -> list:
    """``[render(i) for i in range(count)]``, computed by one forked process per core.

    Why: a synthetic set is written on a demo's first run, and each of its items draws from its
    own generator (``default_rng([seed, i])``), so splitting the items across cores writes the same
    files as one process, in part of the time. ``render`` must be picklable (a module-level function
    or a ``functools.partial`` of one). One process where fork is not available (spawned workers
    would import torch again) or the set is small.
    """
    import concurrent.futures
    import multiprocessing

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cores, count // min_per_process)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [render(index) for index in range(count)]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(render, range(count), chunksize=8))


def find_split_file(given: str | os.PathLike | None, data_root: str | os.PathLike | None) -> str | None:
    """The split file a user means by ``given``: the path as given when it exists (or is absolute),
    else the same relative path under ``data_root`` when it exists there (so ``--labeled-split
    splits/5%/labeled.txt`` works from any folder), else ``given`` unchanged for the reader to
    report as missing. Every task resolves its split options through this one rule."""
    if given is None:
        return None
    path = Path(given)
    if path.is_file() or path.is_absolute() or data_root is None:
        return str(given)
    under_root = Path(data_root) / path
    return str(under_root) if under_root.is_file() else str(given)


def refuse_existing(paths, overwrite: bool) -> None:
    """The one overwrite guard: output files that exist already stop the work before it starts,
    unless ``overwrite`` (``--overwrite``)."""
    existing = [str(p) for p in paths if p is not None and Path(p).exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} already exists ({len(existing)} output file(s) exist already), refusing to "
                        "overwrite: choose another path or pass --overwrite (overwrite=True in Python)")


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """An output path that is one of the inputs stops the work, even with ``--overwrite``: writing
    it would destroy an input (a photo, a scan, a scene) that cannot be made again. Call it before
    :func:`refuse_existing`, whose advice (``--overwrite``) would be wrong here."""
    by_path = {}
    for path in inputs:
        by_path.setdefault(Path(path).resolve(), Path(path))
    for output in outputs:
        if output is None:
            continue
        source = by_path.get(Path(output).resolve())
        if source is None and Path(output).exists():
            source = next((p for p in by_path.values() if p.exists() and os.path.samefile(p, output)), None)
        if source is not None:
            raise DataError(f"output {output} would overwrite the input {source}; choose an output folder or name "
                            "that is not an input (--overwrite never replaces an input)")


def guard_outputs(outputs, inputs, overwrite: bool) -> None:
    """The output check of every ``predict``, before the model is loaded: no output is one of the
    inputs (:func:`refuse_overwriting_inputs`), and none exists unless ``overwrite``."""
    refuse_overwriting_inputs(outputs, inputs)
    refuse_existing(outputs, overwrite)


def prepare_output_dir(directory: Path | None, overwrite: bool) -> None:
    """Create a folder for predictions; one that already holds files is refused unless ``--overwrite``."""
    if directory is None:
        return
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise DataError(f"{directory} already holds files; choose an empty folder or pass --overwrite")
    directory.mkdir(parents=True, exist_ok=True)
