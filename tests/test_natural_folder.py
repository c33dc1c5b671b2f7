"""Your own images (README, "Your own images"): the folder layout, end to end through the README's commands.

The commands are read from the README's code block and run through the CLI mains with the paths
swapped for temporary ones and the tiny model of tests/test_natural_entrypoints.py added, so the
documented commands cannot drift from what works.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.natural import evaluate as evaluate_cli
from tasks.natural import make_splits as make_splits_cli
from tasks.natural import predict as predict_cli
from tasks.natural import train as train_cli
from tasks.natural.common import NaturalConfig, with_folder_layout
from unimatch.config import load_config
from unimatch.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
MAINS = {"tasks.natural.make_splits": make_splits_cli.main, "tasks.natural.train": train_cli.main,
         "tasks.natural.evaluate": evaluate_cli.main, "tasks.natural.predict": predict_cli.main}
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0", "sup_warmup_epochs=0",
        "pretrained=null"]
TRAIN_FLAGS = ["--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--device", "cpu"]
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
SIZE, N_IMAGES, N_MASKS = 40, 12, 7
SUFFIXES = (".jpg", ".png", ".tif")


def readme_commands() -> list[list[str]]:
    """The argv lists of the bash block of the README's "Your own images" section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Your own images"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def write_dataset(root: Path, colour_masks: bool) -> list[str]:
    """12 images (jpg/png/tif, one grayscale), the first 7 with masks of 3 classes; returns the ids."""
    rng = np.random.default_rng(0)
    ids = []
    for index in range(N_IMAGES):
        sample_id = f"img{index:02d}"
        ids.append(sample_id)
        ids_mask = np.zeros((SIZE, SIZE), np.uint8)
        ids_mask[5:20, 5:25] = 1
        ids_mask[22:38, 10 + index:30 + index // 2] = 2
        image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8) + (ids_mask[..., None] * 80).astype(np.uint8)
        path = root / "images" / f"{sample_id}{SUFFIXES[index % 3]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if index == 4 else image).save(path)
        if index < N_MASKS:
            (root / "masks").mkdir(exist_ok=True)
            if colour_masks:
                Image.fromarray(np.asarray(PALETTE, np.uint8)[ids_mask]).save(root / "masks" / f"{sample_id}.png")
            else:
                ids_mask[0, :] = 255   # ignore
                Image.fromarray(ids_mask).save(root / "masks" / f"{sample_id}.png")
    return ids


def run_readme(tmp_path: Path, root: Path, *train_overrides: str) -> dict:
    """Run the README's four commands on ``root``; returns the paths they wrote to."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((root / "images").iterdir())[-3:]:
        (photos / path.name).write_bytes(path.read_bytes())
    places = {"my_images": root, "runs/my_images": tmp_path / "run",
              "runs/my_images/best.pth": tmp_path / "run/best.pth",
              "my_images_test.json": tmp_path / "test.json", "new_photos/": photos, "new_masks/": tmp_path / "masks",
              "configs/natural/folder.yaml": REPO / "configs/natural/folder.yaml"}
    results = []
    for command in readme_commands():
        assert command[:2] == ["python", "-m"], command
        module, argv = command[2], [str(places.get(token, token)) for token in command[3:]]
        if module == "tasks.natural.train":   # flags first: the overrides end the command line
            argv = TRAIN_FLAGS + argv + TINY + list(train_overrides)
        elif module != "tasks.natural.make_splits":
            argv = argv + ["--device", "cpu"]
        results.append(MAINS[module](argv))
    assert results[0] == 0
    return {"json": tmp_path / "test.json", "masks": tmp_path / "masks", "photos": photos, "run": tmp_path / "run"}


def read_list(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_readme_commands_on_index_masks(tmp_path, capsys):
    root = tmp_path / "my_images"
    ids = write_dataset(root, colour_masks=False)
    out = run_readme(tmp_path, root)
    assert "dataset: folder (from the config)" in capsys.readouterr().out

    lists = {kind: read_list(root / f"{kind}.txt") for kind in ("labeled", "unlabeled", "val", "test")}
    assert [len(lists[k]) for k in ("val", "test", "labeled", "unlabeled")] == [2, 2, 2, 6]   # 0.2 of 7, 0.25 of 8
    stems = {kind: [Path(line[0]).stem for line in lines] for kind, lines in lists.items()}
    every = sum(stems.values(), [])
    assert sorted(every) == ids and len(set(every)) == len(every)    # disjoint and complete
    with_mask = set(ids[:N_MASKS])
    for kind in ("labeled", "val", "test"):
        assert all(len(line) == 2 and Path(line[0]).stem in with_mask for line in lists[kind])
    assert {len(line) for line in lists["unlabeled"]} == {1, 2}   # a mask column only where the mask exists
    assert make_splits_cli.main(["--data-root", str(root), "--num-labeled", "2", "--seed", "1"]) == 2  # no overwrite

    metrics = json.loads(out["json"].read_text())
    assert "mIoU" in json.dumps(metrics)
    assert torch.load(out["run"] / "best.pth", map_location="cpu", weights_only=False)["config"]["dataset"] == "folder"
    for photo in out["photos"].iterdir():
        predicted = np.asarray(Image.open(out["masks"] / f"{photo.stem}.png"))
        assert predicted.shape == (SIZE, SIZE) and predicted.max() < 3


def test_readme_commands_on_colour_masks(tmp_path):
    root = tmp_path / "my_images"
    write_dataset(root, colour_masks=True)
    palette = "palette=" + json.dumps(PALETTE).replace(" ", "")
    out = run_readme(tmp_path, root, palette)
    assert json.loads(out["json"].read_text())
    written = Image.open(next(out["masks"].glob("*.png")))
    assert written.mode == "P" and written.getpalette()[:9] == sum(PALETTE, [])   # drawn in the classes' colours
    assert np.asarray(written).max() < 3


def test_a_colour_outside_the_palette_names_the_file_and_the_colour(tmp_path):
    root = tmp_path / "my_images"
    write_dataset(root, colour_masks=True)
    bad = root / "masks" / "img00.png"
    rgb = np.asarray(Image.open(bad)).copy()
    rgb[3, 3] = (1, 2, 3)
    Image.fromarray(rgb).save(bad)
    (root / "labeled.txt").write_text("images/img00.jpg masks/img00.png\nimages/img03.jpg masks/img03.png\n")
    (root / "val.txt").write_text("images/img01.png masks/img01.png\n")
    with pytest.raises(DataError, match=r"img00\.png holds the colour \[1, 2, 3\], which is no class's colour"):
        train_cli.main(TRAIN_FLAGS + ["--config", str(REPO / "configs/natural/folder.yaml"), "--data-root", str(root),
                                      "--save-dir", str(tmp_path / "run"), "--method", "supervised", *TINY,
                                      "palette=" + json.dumps(PALETTE).replace(" ", "")])


def test_the_folder_layout_is_detected_under_the_default_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger("unimatch"), "handlers", [])   # no training run: evaluate and predict
    root = tmp_path / "my_images"
    write_dataset(root, colour_masks=False)
    cfg = load_config(None, ["nclass=3"], schema=NaturalConfig, data_root=str(root))
    assert with_folder_layout(cfg).dataset == "folder"
    assert "dataset: folder (detected" in capsys.readouterr().err
    voc = tmp_path / "voc"
    (voc / "images").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    assert with_folder_layout(load_config(None, schema=NaturalConfig, data_root=str(voc))).dataset == "synthetic"


@pytest.mark.parametrize("palette", ["[[0,0,0],[128,0,0]]", "[[0,0,0],[0,0,0],[1,1,1]]", "[[0,0,0],[1,1],[2,2,2]]"])
def test_a_palette_must_give_each_class_its_own_colour(palette):
    with pytest.raises(ConfigError, match="palette"):
        load_config(REPO / "configs/natural/folder.yaml", [f"palette={palette}"], schema=NaturalConfig)


def test_make_splits_refuses_two_images_of_one_id(tmp_path):
    root = tmp_path / "my_images"
    write_dataset(root, colour_masks=False)
    (root / "images" / "img00.png").write_bytes((root / "images" / "img00.jpg").read_bytes())
    with pytest.raises(DataError, match="share the id 'img00'"):
        make_splits_cli.make_splits("folder", root, 2, 0, root)
