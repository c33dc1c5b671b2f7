"""write_once: the one place where generated datasets are cached atomically."""
import json

import pytest

from unimatch.errors import DataError
from unimatch.paths import write_once


def test_written_once_then_reused_without_calling_the_writer(tmp_path, capsys):
    calls = []

    def write(folder):
        calls.append(folder)
        (folder / "data.txt").write_text("x")

    root = tmp_path / "set"
    assert write_once(root, {"seed": 1}, write) == root
    assert write_once(root, {"seed": 1}, write) == root
    assert len(calls) == 1 and (root / "data.txt").read_text() == "x"
    assert json.loads((root / "meta.json").read_text()) == {"seed": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no staging folder left behind
    said = capsys.readouterr().err  # the first run says why it is busy; the reuse is silent
    assert said.count(f"writing the built-in synthetic dataset to {root}") == 1 and said.count("wrote") == 1


def test_a_crash_while_writing_leaves_nothing_that_looks_complete(tmp_path):
    def broken(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_once(tmp_path / "set", {"seed": 1}, broken)
    assert list(tmp_path.iterdir()) == []


def test_other_parameters_or_a_foreign_folder_are_refused(tmp_path):
    root = tmp_path / "set"
    write_once(root, {"seed": 1}, lambda folder: None)
    with pytest.raises(DataError, match="seed: on disk 1, asked 2"):
        write_once(root, {"seed": 2}, lambda folder: None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="no readable meta.json"):
        write_once(foreign, {"seed": 1}, lambda folder: None)
    assert (foreign / "mine.txt").read_text() == "keep"
