"""Split lists, read one way for every task: one entry per line, and the hygiene a run relies on.

A list written on Windows (a UTF-8 byte-order mark, CRLF line ends) reads as the same entries; a
name listed twice within a list is refused (it would weigh that sample twice); and the labelled,
unlabelled, validation and test lists may share no entry (a validation image among the training
images inflates every score). Labelled images among the unlabelled ones are allowed only when the
config asks for it (``allow_labeled_in_unlabeled: true``), with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Mapping

from unimatch.errors import DataError

log = logging.getLogger("unimatch")

SPLIT_KINDS = ("labeled", "unlabeled", "val", "test")   # config keys <kind>_split, in this order


def read_split_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line of a split list; a missing or empty
    file, or a line repeated, is a :class:`DataError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; check the path")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read split file {path} ({error}); save it as UTF-8 text") from error
    lines, first_seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.strip()
        if not entry:
            continue
        if entry in first_seen:
            raise DataError(f"{path}:{number}: {entry} is listed twice (also on line {first_seen[entry]}); "
                            "list each sample once: remove one of the lines")
        first_seen[entry] = number
        lines.append((number, entry))
    if not lines:
        raise DataError(f"split file {path} lists nothing; write one sample per line")
    return lines


def first_field(entry: str) -> str:
    """What names the sample of a line: its first field (an id, a file name, an image path)."""
    return entry.split()[0]


def check_disjoint(lists: Mapping[str, str | os.PathLike | None], key: Callable[[str], str] = first_field,
                   allow_labeled_in_unlabeled: bool = False) -> None:
    """Refuse any entry (as ``key`` names it) shared by two of ``lists`` (kind -> file or None),
    naming both files and the first shared entry; labelled among unlabelled entries are only
    logged when ``allow_labeled_in_unlabeled``."""
    keys = {}
    for kind, path in lists.items():
        if path is not None and Path(path).is_file():
            keys[kind] = (Path(path), [key(entry) for _, entry in read_split_lines(path)])
    kinds = list(keys)
    for i, kind in enumerate(kinds):
        path, entries = keys[kind]
        for other in kinds[i + 1:]:
            other_path, other_entries = keys[other]
            if other_path.resolve() == path.resolve():
                raise DataError(f"the {kind} and {other} lists are the same file {path}; give each its own list")
            others = set(other_entries)
            shared = [entry for entry in entries if entry in others]
            if not shared:
                continue
            if {kind, other} == {"labeled", "unlabeled"} and allow_labeled_in_unlabeled:
                log.warning(f"{len(shared)} labelled sample(s) of {path} are also in {other_path} (first: "
                            f"{shared[0]}); trained on as unlabelled too (allow_labeled_in_unlabeled: true)")
                continue
            allow = " (or set allow_labeled_in_unlabeled: true to train on them as unlabelled too)" \
                if {kind, other} == {"labeled", "unlabeled"} else ""
            raise DataError(f"{path} and {other_path} both list {shared[0]} ({len(shared)} shared); a sample "
                            f"belongs to one split: remove it from one of them{allow}")


def configured_lists(cfg) -> dict[str, str | None]:
    """kind -> the config's ``<kind>_split`` file (None where the config has no such key)."""
    return {kind: getattr(cfg, f"{kind}_split", None) for kind in SPLIT_KINDS}
