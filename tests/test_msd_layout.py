"""Your own volumes (README, "Your own volumes (Medical Segmentation Decathlon / nnU-Net layout)"):
the README's commands run through the CLI mains on tiny MSD and nnU-Net v2 datasets (MRI and CT)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tasks.acdc import evaluate as evaluate_cli
from tasks.acdc import predict as predict_cli
from tasks.acdc import train as train_cli
from unimatch.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
MAINS = {"tasks.acdc.train": train_cli.main, "tasks.acdc.evaluate": evaluate_cli.main,
         "tasks.acdc.predict": predict_cli.main}
TINY = ["crop_size=32", "feature_channels=[4,8,16,32,64]"]
TRAIN_FLAGS = ["--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]
CLASSES = ["background", "left atrium", "scar"]
SPACING = (1.5, 1.5, 5.0)
N_CASES, N_TEST, SHAPE = 6, 2, (32, 32, 4)


def readme_commands() -> list[list[str]]:
    """The argv lists of the bash block of the README's section on the MSD layout, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Your own volumes (Medical Segmentation Decathlon / nnU-Net layout)"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), str(path))


def volume_pair(index: int, ct: bool) -> tuple[np.ndarray, np.ndarray]:
    """A (32, 32, 4) image and its labels 0..2: a disc (1) with a smaller blob (2)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    label = np.zeros(SHAPE, np.uint8)
    disc = (yy - 14 - index % 3) ** 2 + (xx - 16) ** 2 < 64
    label[disc, :] = 1
    label[20:26, 8 + index:14 + index, 1:3] = 2
    if ct:   # Hounsfield units: air around soft tissue and a bright lesion
        image = np.choose(label, [-900.0, 40.0, 400.0]) + rng.normal(0, 20, SHAPE)
    else:
        image = np.choose(label, [50.0, 300.0, 600.0]) + rng.normal(0, 30, SHAPE)
    return image.astype(np.float32 if not ct else np.int16), label


def write_dataset(root: Path, form: str, ct: bool, labels_override=None) -> None:
    """6 labelled cases and 2 imagesTs volumes with a dataset.json in MSD (``msd``) or nnU-Net v2 form."""
    channel = "_0000" if form == "v2" else ""
    training = []
    for index in range(N_CASES + N_TEST):
        case = f"vol_{index:03d}"
        image, label = volume_pair(index, ct)
        if index >= N_CASES:
            save(image, root / "imagesTs" / f"{case}{channel}.nii.gz")
            continue
        save(image, root / "imagesTr" / f"{case}{channel}.nii.gz")
        save(label, root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    modality = {"0": "CT" if ct else "MRI"}
    if form == "v2":
        meta = {"channel_names": modality, "labels": {name: i for i, name in enumerate(CLASSES)},
                "numTraining": N_CASES, "file_ending": ".nii.gz"}
    else:
        meta = {"name": "tiny", "modality": modality, "labels": {str(i): name for i, name in enumerate(CLASSES)},
                "numTraining": N_CASES, "training": training,
                "test": [f"./imagesTs/vol_{i:03d}.nii.gz" for i in range(N_CASES, N_CASES + N_TEST)]}
    meta.update(labels_override or {})
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("form,ct", [("msd", False), ("v2", True)])
def test_readme_commands(tmp_path, capsys, form, ct):
    root = tmp_path / "my_volumes"
    write_dataset(root, form, ct)
    places = {"my_volumes": root, "runs/my_volumes": tmp_path / "run",
              "runs/my_volumes/best.pth": tmp_path / "run/best.pth",
              "my_volumes_test.json": tmp_path / "test.json", "my_volumes/imagesTs/": root / "imagesTs",
              "my_volumes_seg/": tmp_path / "seg", "configs/acdc/msd.yaml": REPO / "configs/acdc/msd.yaml"}
    for command in readme_commands():
        assert command[:2] == ["python", "-m"], command
        module, argv = command[2], [str(places.get(token, token)) for token in command[3:]]
        extra = TRAIN_FLAGS + argv + TINY if module == "tasks.acdc.train" else argv + ["--device", "cpu"]
        MAINS[module](extra)
    out = capsys.readouterr()
    line = next(text for text in (out.out + out.err).splitlines() if "dataset: msd (from the config)" in text)
    assert "3 classes" in line and ("ct_window [-1000, 1000] HU" in line if ct else "intensity minmax" in line)

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [len(split[k]) for k in ("labeled", "unlabeled", "val", "test")] == [4, 0, 1, 1]
    record = json.loads((tmp_path / "test.json").read_text())
    assert record["split"] == "test" and record["summary"]["n_cases"] == 1
    assert set(record["summary"]["classes"]) == set(CLASSES[1:])
    written = sorted((tmp_path / "seg").iterdir())
    assert len(written) == N_TEST
    source = nib.load(str(sorted((root / "imagesTs").iterdir())[0]))
    seg = nib.load(str(written[0]))
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def train_argv(root: Path, work: Path, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--cases", "2", "--save-dir", str(work / "run"), *TRAIN_FLAGS, *TINY, *extra]


def test_detected_without_config_and_unlabelled_cases(tmp_path, capsys):
    root = tmp_path / "ds"
    write_dataset(root, "v2", ct=False)
    train_cli.main(train_argv(root, tmp_path))
    assert f"dataset: msd (detected: {root} holds dataset.json)" in capsys.readouterr().err + \
        (tmp_path / "run" / "train.log").read_text()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [len(split[k]) for k in ("labeled", "unlabeled", "val", "test")] == [2, 2, 1, 1]


def test_case_lists(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, "msd", ct=False)
    (tmp_path / "val.txt").write_text("vol_000\nvol_001\n")
    train_cli.main(train_argv(root, tmp_path, "dataset=msd", f"val_split={tmp_path / 'val.txt'}"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["val"] == ["vol_000", "vol_001"] and len(split["test"]) == 1


def test_bad_inputs(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, "msd", ct=True)
    with pytest.raises(ConfigError, match=r"nclass: 5, but .*dataset.json names 3 classes"):
        train_cli.main(train_argv(root, tmp_path, "dataset=msd", "nclass=5"))
    write_dataset(root, "msd", True, {"labels": {"0": "background", "1": "left atrium"}})
    with pytest.raises(DataError, match=r"labels \[2\] outside 0..1 \(0 background, 1 left atrium, as named in"):
        train_cli.main(train_argv(root, tmp_path / "b", "dataset=msd"))
    write_dataset(root, "msd", True, {"modality": {"0": "FLAIR", "1": "T1w"}})
    with pytest.raises(DataError, match="2 input channels .* only one is supported"):
        train_cli.main(train_argv(root, tmp_path / "c", "dataset=msd"))
