"""The split-folders change-detection layout (ROOT/{train,val,test}/{A,B,label}) end to end.

The commands are the README's ("Your own change pairs"), read from it and run through the CLI
mains: only the data and run paths are replaced and test-only flags (tiny model, CPU, one epoch)
appended, so the README's commands and this test stay identical.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.change_detection import evaluate, make_splits, predict, train
from tasks.change_detection.layout import detect_layout
from unimatch.errors import DataError

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
TILE = 48
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0",
        "pretrained=null", "sup_warmup_epochs=0"]
TEST_FLAGS = {
    "train": ["--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--device", "cpu", *TINY],
    "evaluate": ["--device", "cpu"],
    "predict": ["--device", "cpu", "--no-progress"],
    "make_splits": [],
}
MAINS = {"make_splits": make_splits.main, "train": train.main, "evaluate": evaluate.main, "predict": predict.main}


def readme_commands() -> list[list[str]]:
    """The shell lines of the README's "Your own change pairs" bash block, split into arguments."""
    section = README.read_text().split("### Your own change pairs", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def write_pairs(folder: Path, names, rng, label_values=None) -> None:
    for sub in ("A", "B") + (("label",) if label_values else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        before = rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
        after = before.copy()
        change = np.zeros((TILE, TILE), bool)
        change[8:24, 10:30] = True
        after[change] = 255 - after[change]
        Image.fromarray(before).save(folder / "A" / name)
        Image.fromarray(after).save(folder / "B" / name)
        if label_values:
            Image.fromarray(np.where(change, label_values[1], label_values[0]).astype(np.uint8)).save(
                folder / "label" / name)


def make_layout(root: Path, label_values) -> Path:
    """6 labelled + 2 label-less train pairs, 2 unlabelled, 2 val, 2 test (48x48 PNG tiles)."""
    rng = np.random.default_rng(0)
    write_pairs(root / "train", [f"{i:04d}.png" for i in range(1, 7)], rng, label_values)
    write_pairs(root / "train", ["0007.png", "0008.png"], rng)
    write_pairs(root / "unlabeled", ["u1.png", "u2.png"], rng)
    write_pairs(root / "val", ["0001.png", "0002.png"], rng, label_values)
    write_pairs(root / "test", ["0001.png", "0002.png"], rng, label_values)
    return root


@pytest.mark.parametrize("label_values", [(0, 255), (0, 1)], ids=["labels-0-255", "labels-0-1"])
def test_readme_commands_on_the_split_folders_layout(tmp_path, monkeypatch, capsys, label_values):
    torch.set_num_threads(1)
    root = make_layout(tmp_path / "my-pairs", label_values)
    monkeypatch.chdir(tmp_path)   # runs/, the JSON and the PNG land here; configs/ is the repository's
    assert detect_layout(root) == "split_folders"
    for argv in readme_commands():
        assert argv[:2] == ["python", "-m"]
        entry = argv[2].rsplit(".", 1)[1]
        args = [re.sub(r"^configs/", f"{REPOSITORY}/configs/", arg.replace("/data/my-pairs", str(root)))
                for arg in argv[3:]] + TEST_FLAGS[entry]
        assert MAINS[entry](args) != 2, entry   # make_splits returns 2 on a user error; the others raise
    out = capsys.readouterr().out
    assert "change-detection layout: split_folders" in out

    labeled = (root / "splits/50%/labeled.txt").read_text().split()
    unlabeled = (root / "splits/50%/unlabeled.txt").read_text().split()
    assert len(labeled) == 3 and all(entry.startswith("train/") for entry in labeled)
    assert {"train/0007.png", "train/0008.png", "unlabeled/u1.png", "unlabeled/u2.png"} <= set(unlabeled)
    assert len(unlabeled) == 7 and not set(labeled) & set(unlabeled)

    assert (tmp_path / "runs/my-pairs/best.pth").is_file()
    record = json.loads((tmp_path / "my-pairs-test.json").read_text())
    assert record["split"] == "test" and record["split_file"] == str(root / "test") and record["tiles"] == 2
    assert 0 <= record["metrics"]["OA"] <= 100
    change = np.asarray(Image.open(tmp_path / "change-0001.png"))
    assert change.shape == (TILE, TILE) and set(np.unique(change)) <= {0, 1}


def test_make_splits_by_count_and_a_missing_B(tmp_path):
    root = make_layout(tmp_path / "pairs", (0, 255))
    labeled, unlabeled = make_splits.write_splits(root, None, seed=1, count=2)
    assert labeled.parent == root / "splits" / "2" and len(labeled.read_text().split()) == 2
    with pytest.raises(DataError, match="already exists"):
        make_splits.write_splits(root, None, seed=1, count=2)
    (root / "train/B/0003.png").unlink()
    with pytest.raises(DataError, match=r"train/A/0003\.png has no .*train/B/0003\.png"):
        make_splits.write_splits(root, None, seed=1, count=2, overwrite=True)


def test_label_value_7_names_the_file_values_and_fix(tmp_path):
    from tasks.change_detection.data import EvalPairs

    root = make_layout(tmp_path / "pairs", (0, 1))
    Image.fromarray(np.full((TILE, TILE), 7, np.uint8)).save(root / "val/label/0002.png")
    dataset = EvalPairs(root, root / "val", layout="split_folders")
    dataset[0]
    with pytest.raises(DataError, match=r"val/label/0002\.png has pixel values \[7\]; labels must be 0/255 or 0/1"):
        dataset[1]
