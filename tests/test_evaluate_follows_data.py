"""``evaluate`` scores the data it is given (issue 20 item 4): with ``--data-root`` the split names
resolve under that root, never to the absolute split paths stored in the checkpoint's config;
``--split val|test`` works the same in every task; ACDC scores the run's own patient split
(``split.json`` beside the checkpoint, else the stored config's seed), whatever ``--config`` says."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from reliability_doc import TINY_2D, TINY_ACDC
from unimatch.config import load_config
from unimatch.models import build_model
from unimatch.paths import config_path


def checkpoint(path: Path, task: str, schema, extra, **stored) -> Path:
    """An untrained checkpoint whose stored config holds ``stored`` (absolute split paths, a seed)."""
    cfg = load_config(config_path(task, "synthetic.yaml"), extra, schema=schema)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, pretrained=None))
    torch.save({"model": model.state_dict(), "config": {**cfg.to_dict(), **stored}}, path)
    return path


def names(split_file: Path) -> list[str]:
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cd_roots(tmp_path_factory):
    from tasks.change_detection.synthetic import ensure_synthetic_cd

    base = tmp_path_factory.mktemp("cd")
    old = ensure_synthetic_cd(base / "old", n_train=4, n_val=2, n_test=2, tile=32, seed=3)
    new = ensure_synthetic_cd(base / "new", n_train=4, n_val=3, n_test=3, tile=32, seed=4)
    return old, new


def test_change_detection_test_split_follows_data_root(cd_roots, tmp_path):
    from tasks.change_detection import evaluate
    from tasks.change_detection.common import CDConfig

    old, new = cd_roots
    ckpt = checkpoint(tmp_path / "cd.pth", "change_detection", CDConfig, TINY_2D, data_root=str(old),
                      val_split=str(old / "splits/val.txt"), test_split=str(old / "splits/test.txt"))
    for split in ("test", "val"):
        out = tmp_path / f"{split}.json"
        evaluate.main(["--checkpoint", str(ckpt), "--data-root", str(new), "--split", split, "--device", "cpu",
                       "--json", str(out)])
        record = json.loads(out.read_text())
        assert record["split_file"] == str(new / "splits" / f"{split}.txt")
        assert record["tiles"] == len(names(new / "splits" / f"{split}.txt"))


@pytest.fixture(scope="module")
def voc_roots(tmp_path_factory):
    from tasks.natural.synthetic import ensure_synthetic_voc

    base = tmp_path_factory.mktemp("voc")
    old = ensure_synthetic_voc(base / "old", n_images=8, size=32, seed=3, labeled_fraction=0.34)
    new = ensure_synthetic_voc(base / "new", n_images=12, size=32, seed=4, labeled_fraction=0.34)
    for kind in ("val", "test"):   # a data root given on the command line holds <root>/<kind>.txt
        shutil.copy(new / "splits" / f"{kind}.txt", new / f"{kind}.txt")
    return old, new


@pytest.mark.parametrize("split", [None, "val", "test"])
def test_natural_split_names_follow_data_root(voc_roots, tmp_path, split):
    from tasks.natural import evaluate
    from tasks.natural.common import NaturalConfig

    old, new = voc_roots
    ckpt = checkpoint(tmp_path / "natural.pth", "natural", NaturalConfig, TINY_2D, data_root=str(old),
                      labeled_split=str(old / "splits/labeled.txt"), val_split=str(old / "splits/val.txt"),
                      unlabeled_split=str(old / "splits/unlabeled.txt"))
    out = tmp_path / "eval.json"
    evaluate.main(["--checkpoint", str(ckpt), "--data-root", str(new), "--device", "cpu", "--json", str(out),
                   *(["--split", split] if split else [])])
    record = json.loads(out.read_text())
    assert record["split_file"] == str(new / f"{split or 'val'}.txt")
    assert record["images"] == len(names(new / f"{split or 'val'}.txt"))


def test_natural_split_file_path_still_works(voc_roots, tmp_path):
    from tasks.natural import evaluate
    from tasks.natural.common import NaturalConfig

    old, new = voc_roots
    ckpt = checkpoint(tmp_path / "natural.pth", "natural", NaturalConfig, TINY_2D)
    out = tmp_path / "eval.json"
    evaluate.main(["--checkpoint", str(ckpt), "--data-root", str(new), "--split", "splits/test.txt",
                   "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text())["split_file"] == str(new / "splits/test.txt")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from tasks.acdc.synthetic import ensure_synthetic_acdc

    return ensure_synthetic_acdc(tmp_path_factory.mktemp("acdc") / "acdc", n_patients=8, image_size=32,
                                 n_slices=(2, 3), seed=5)


def acdc_partition(phantom: Path, seed: int):
    from tasks.acdc.readers import find_raw_root
    from tasks.acdc.splits import make_patient_split

    patients = sorted(p.name for p in find_raw_root(phantom).iterdir() if p.is_dir())
    return make_patient_split(patients, 1, seed)


def test_acdc_uses_the_runs_own_split_json(phantom, tmp_path, capsys):
    from tasks.acdc import evaluate
    from tasks.acdc.common import AcdcConfig

    run = tmp_path / "run"
    run.mkdir()
    ckpt = checkpoint(run / "best.pth", "acdc", AcdcConfig, TINY_ACDC, data_root=str(phantom), seed=0, cases=1)
    ours = acdc_partition(phantom, 0)
    # the run's record names another test patient than the seed's partition would (e.g. written by a
    # run whose patients were chosen otherwise): the record is what the weights never saw
    recorded_test = [ours.unlabeled[0]]
    (run / "split.json").write_text(json.dumps({"layout": "raw", "data_root": str(phantom), "seed": 0,
                                                "labeled": list(ours.labeled), "unlabeled": list(ours.unlabeled[1:]),
                                                "val": list(ours.val), "test": recorded_test}))
    other_seed = tmp_path / "other.yaml"
    other_seed.write_text(f"seed: 7\ndata_root: {phantom}\n" + "".join(f"{line.replace('=', ': ')}\n" for line in TINY_ACDC))
    result = evaluate.main(["--checkpoint", str(ckpt), "--config", str(other_seed), "--split", "test",
                            "--device", "cpu"])
    assert {case.split("_")[0] for case in result["cases"]} == set(recorded_test)
    assert "split.json" in capsys.readouterr().out


def test_acdc_without_split_json_uses_the_stored_seed(phantom, tmp_path, capsys):
    from tasks.acdc import evaluate
    from tasks.acdc.common import AcdcConfig

    ckpt = checkpoint(tmp_path / "best.pth", "acdc", AcdcConfig, TINY_ACDC, data_root=str(phantom), seed=0, cases=1)
    seeds = {seed: acdc_partition(phantom, seed).test for seed in range(20)}
    other = next(seed for seed, test in seeds.items() if test != seeds[0])
    config = tmp_path / "other.yaml"
    config.write_text(f"seed: {other}\ndata_root: {phantom}\n" + "".join(f"{line.replace('=', ': ')}\n" for line in TINY_ACDC))
    result = evaluate.main(["--checkpoint", str(ckpt), "--config", str(config), "--split", "test", "--device", "cpu"])
    assert {case.split("_")[0] for case in result["cases"]} == set(seeds[0])
    assert "seed 0" in capsys.readouterr().out
