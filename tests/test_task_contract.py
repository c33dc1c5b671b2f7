"""The task contract (docs/architecture.md) for every task package under ``tasks/``: its name,
config class and default config, its commands, data resolution on a tiny synthetic set, training
sets that follow the data contract, a validation evaluator holding ``select_metric``, and
``evaluate`` / ``predict`` on a tiny checkpoint. A task added to ``tasks/`` must be added to
``CASES`` (its tiny set, model and predict inputs), or the first test fails."""
from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import shutil
from pathlib import Path

import pytest
import torch

import tasks
from reliability_doc import TINY_2D, TINY_ACDC
from unimatch.config import Config, load_config
from unimatch.data import IGNORE_INDEX
from unimatch.distributed import DistContext
from unimatch.models import build_model
from unimatch.report import EvalResult
from unimatch.task import Task


def natural_data(base: Path) -> Path:
    from tasks.natural.synthetic import ensure_synthetic_voc

    return ensure_synthetic_voc(base / "voc", n_images=8, size=32, seed=3, labeled_fraction=0.34)


def natural_predict(root: Path, work: Path) -> list[str]:
    photos = work / "photos"
    photos.mkdir()
    shutil.copy(next((root / "JPEGImages").iterdir()), photos)
    return ["--input", str(photos), "--output", str(work / "masks")]


def cd_data(base: Path) -> Path:
    from tasks.change_detection.synthetic import ensure_synthetic_cd

    return ensure_synthetic_cd(base / "cd", n_train=4, n_val=2, n_test=2, tile=32, seed=3)


def cd_predict(root: Path, work: Path) -> list[str]:
    name = next((root / "A").iterdir()).name
    return ["--before", str(root / "A" / name), "--after", str(root / "B" / name), "--out", str(work / "change.png"),
            "--no-progress"]


def acdc_data(base: Path) -> Path:
    from tasks.acdc.synthetic import ensure_synthetic_acdc

    return ensure_synthetic_acdc(base / "acdc", n_patients=6, image_size=32, n_slices=(2, 3), seed=5)


def acdc_predict(root: Path, work: Path) -> list[str]:
    from tasks.acdc.readers import find_raw_root

    patient = sorted(p for p in find_raw_root(root).iterdir() if p.is_dir())[0]
    scan = sorted(p for p in patient.glob("*_frame??.nii.gz"))[0]
    return ["--input", str(scan), "--output", str(work / "labels")]


# task -> (tiny data set, tiny model and training values, predict arguments)
CASES = {
    "natural": (natural_data, [*TINY_2D, "labeled_split=splits/labeled.txt", "unlabeled_split=splits/unlabeled.txt"],
                natural_predict),
    "change_detection": (cd_data, TINY_2D, cd_predict),
    "acdc": (acdc_data, [*TINY_ACDC, "cases=1"], acdc_predict),
}


def registered_tasks() -> dict[str, Task]:
    return {info.name: importlib.import_module(f"tasks.{info.name}.common").TASK
            for info in pkgutil.iter_modules(tasks.__path__) if info.ispkg}


TASKS = registered_tasks()


def test_every_task_has_a_case():
    assert set(CASES) == set(TASKS)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Per task: (tiny data root, its resolved config, a tiny checkpoint storing that config)."""
    torch.set_num_threads(1)
    made = {}
    for name, (make_data, values, _) in CASES.items():
        base = tmp_path_factory.mktemp(name)
        root = make_data(base)
        task = TASKS[name]
        cfg = load_config(task.default_config, [*values, "num_workers=0"], schema=task.config_class,
                          data_root=str(root), save_dir=str(base / "run"))
        cfg = task.resolve_data(cfg, DistContext())
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(cfg, pretrained=None))
        torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, base / "tiny.pth")
        made[name] = root, cfg, base / "tiny.pth"
    return made


@pytest.mark.parametrize("name", sorted(CASES))
class TestTaskContract:
    def test_declaration(self, name):
        task = TASKS[name]
        assert isinstance(task, Task) and task.name == name
        assert issubclass(task.config_class, Config)
        cfg = load_config(task.default_config, schema=task.config_class)
        assert cfg.task == name and cfg.select_metric in cfg.select_metric_keys()
        for entry in ("train", "evaluate", "predict"):
            assert task.command(entry) == f"python -m tasks.{name}.{entry}"
            assert callable(importlib.import_module(f"tasks.{name}.{entry}").main)

    def test_training_sets_follow_the_data_contract(self, name, prepared):
        root, cfg, _ = prepared[name]
        assert Path(cfg.data_root) == root
        labeled, unlabeled = TASKS[name].training_sets(cfg)
        image, mask = labeled[0]
        assert image.ndim == 3 and image.shape[0] == cfg.in_channels
        assert image.dtype in (torch.uint8, torch.float32) and mask.dtype == torch.int64
        assert mask.shape == image.shape[1:]
        assert set(mask.unique().tolist()) <= set(range(cfg.nclass)) | {IGNORE_INDEX}
        assert unlabeled is not None
        item = unlabeled[0]   # a label only for the pseudo-label statistics, when the config asks for them
        assert len(item) == (3 if cfg.pseudo_label_accuracy else 2)
        image, ignore_mask = item[:2]
        assert image.shape[0] == cfg.in_channels and ignore_mask.dtype == torch.int64
        assert set(ignore_mask.unique().tolist()) <= {0, IGNORE_INDEX}

    def test_val_evaluator_reports_the_select_metric(self, name, prepared):
        _, cfg, checkpoint = prepared[name]
        model = build_model(dataclasses.replace(cfg, pretrained=None))
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        result = TASKS[name].val_evaluator(cfg, DistContext())(model)
        assert isinstance(result, EvalResult) and cfg.select_metric in result.metrics and result.table

    def test_evaluate_and_predict_on_a_tiny_checkpoint(self, name, prepared, tmp_path):
        root, _, checkpoint = prepared[name]
        evaluate = importlib.import_module(f"tasks.{name}.evaluate")
        report = tmp_path / "report.json"
        evaluate.main(["--checkpoint", str(checkpoint), "--split", "test", "--device", "cpu", "--json", str(report)])
        assert json.loads(report.read_text())["split"] == "test"
        predict = importlib.import_module(f"tasks.{name}.predict")
        written = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", *CASES[name][2](root, tmp_path)])
        paths = written if isinstance(written, list) else [written]
        assert paths and all(Path(path).is_file() for path in paths)
