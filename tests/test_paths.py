"""write_once: the one place where generated datasets are cached atomically; find_split_file and
refuse_overwriting_inputs, the rules every task shares for split paths and outputs."""
import functools
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


def test_a_writer_that_loses_the_race_uses_the_winners_dataset(tmp_path):
    """Two runs started together (e.g. a benchmark's two processes) both write the set; the one
    that finishes second finds the folder filled and uses it instead of failing."""
    root = tmp_path / "set"
    root.mkdir()   # an empty folder when both started

    def winner(folder):
        (folder / "data.txt").write_text("first")

    def loser(folder):
        write_once(root, {"seed": 1}, winner)   # the other process finishes meanwhile
        (folder / "data.txt").write_text("second")

    assert write_once(root, {"seed": 1}, loser) == root
    assert (root / "data.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


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


# ----------------------------------------------------------------------------- split files, inputs as outputs

def test_relative_split_found_under_the_data_root_from_any_folder(tmp_path, monkeypatch):
    from unimatch.paths import find_split_file

    root = tmp_path / "data"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "labeled.txt").write_text("a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert find_split_file("splits/labeled.txt", root) == str(root / "splits" / "labeled.txt")
    (elsewhere / "splits").mkdir()
    (elsewhere / "splits" / "labeled.txt").write_text("b\n")
    assert find_split_file("splits/labeled.txt", root) == "splits/labeled.txt"   # as given wins when it exists
    assert find_split_file("splits/none.txt", root) == "splits/none.txt"         # the reader reports it missing
    assert find_split_file(None, root) is None


@pytest.mark.parametrize("task", ["natural", "change_detection", "acdc"])
def test_every_task_resolves_relative_splits_under_the_data_root(task, tmp_path, monkeypatch):
    import importlib

    from unimatch.config import load_config
    from unimatch.paths import config_path

    common = importlib.import_module(f"tasks.{task}.common")
    root = tmp_path / "data"
    (root / "lists").mkdir(parents=True)
    for kind in ("labeled", "unlabeled", "val"):
        (root / "lists" / f"{kind}.txt").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    # pretrained=null: the demo's trunk would be trained first, a minute of CI for a path check
    cfg = load_config(config_path(task, "synthetic.yaml"), ["pretrained=null"], schema=common.TASK.config_class,
                      data_root=str(root),
                      labeled_split="lists/labeled.txt", unlabeled_split="lists/unlabeled.txt",
                      val_split="lists/val.txt")
    resolved = common.TASK.resolve_data(cfg)
    for kind in ("labeled", "unlabeled", "val"):
        assert getattr(resolved, f"{kind}_split") == str(root / "lists" / f"{kind}.txt")


def test_an_output_that_is_an_input_is_refused_by_path_or_by_link(tmp_path):
    import os

    from unimatch.paths import refuse_overwriting_inputs

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"x")
    with pytest.raises(DataError, match="would overwrite the input"):
        refuse_overwriting_inputs([tmp_path / "in" / ".." / "in" / "a.png"], [image])
    os.link(image, tmp_path / "hard.png")
    with pytest.raises(DataError, match="would overwrite the input"):
        refuse_overwriting_inputs([tmp_path / "hard.png"], [image])
    refuse_overwriting_inputs([tmp_path / "in" / "b.png", None], [image])


def test_map_in_processes_keeps_the_order_of_a_serial_map():
    from unimatch.paths import map_in_processes

    assert map_in_processes(functools.partial(pow, 3), 80, min_per_process=4) == [3 ** i for i in range(80)]
    assert map_in_processes(functools.partial(pow, 3), 5) == [3 ** i for i in range(5)]


@pytest.mark.parametrize("task", ["change_detection", "natural"])
def test_a_synthetic_set_written_by_several_processes_equals_the_one_process_set(task, tmp_path, monkeypatch):
    """Each item has its own generator, so the forked writers must give the same bytes, in the same files."""
    import unimatch.paths
    from tasks.change_detection import synthetic as cd_synthetic
    from tasks.natural import synthetic as natural_synthetic

    module = cd_synthetic if task == "change_detection" else natural_synthetic
    folders = {}
    for name, per_process in (("forked", 1), ("serial", 10 ** 9)):
        monkeypatch.setattr(module, "map_in_processes",
                            functools.partial(unimatch.paths.map_in_processes, min_per_process=per_process))
        if task == "change_detection":
            folders[name] = cd_synthetic.ensure_synthetic_cd(tmp_path / name, n_train=12, n_val=4, n_test=4, tile=64)
        else:
            folders[name] = natural_synthetic.ensure_synthetic_voc(tmp_path / name, n_images=16, size=48)
    files = {name: {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
             for name, folder in folders.items()}
    assert len(files["serial"]) > 20 and files["forked"] == files["serial"]
