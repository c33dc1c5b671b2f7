"""The change-detection command-line entry points, end to end on a tiny synthetic WHU-layout set."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine

from helpers import strict_json_loads
from tasks.change_detection import evaluate as evaluate_cli
from tasks.change_detection import predict as predict_cli
from tasks.change_detection import train as train_cli
from tasks.change_detection.common import CDConfig, change_report
from unimatch.cli import exit_on_user_error
from tasks.change_detection.synthetic import ensure_synthetic_cd
from unimatch.config import load_config
from unimatch.errors import CheckpointError, ConfigError, DataError
from unimatch.metrics.confusion import ConfusionMatrix
from unimatch.models import build_model
from unimatch.paths import config_path

TILE = 48
# random weights (the demo's pretrained: synthetic trains a backbone first) and no supervised-only
# warm-up, so one epoch runs the UniMatch step
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0",
        "pretrained=null", "sup_warmup_epochs=0"]


def train_args(root, run, *extra):
    # relative split paths are found under the data root; val comes from the config (splits/val.txt)
    return ["--data-root", str(root), "--labeled-split", "splits/20%/labeled.txt", "--unlabeled-split",
            "splits/20%/unlabeled.txt", "--save-dir", str(run), "--epochs", "1", "--batch-size", "4",
            "--num-workers", "0", "--no-progress", "--device", "cpu", *extra, *TINY]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny UniMatch run (1 epoch) on 16 + 4 + 4 tiles of 48 px; returns (root, run dir)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cd")
    root = ensure_synthetic_cd(base / "data", n_train=16, n_val=4, n_test=4, tile=TILE, seed=3)
    run = base / "run"
    # every pseudo-label counts (non-zero unlabelled loss); the paper's loss at lr 0.02 rather than the
    # demo's extensions at 0.08, with which one epoch of the tiny model predicts no change at all and
    # F1 is undefined
    train_cli.main(train_args(root, run, "conf_thresh=0.0", "lr=0.02", "sup_weight=1.0", "class_thresh=false"))
    return root, run


def eval_args(root, checkpoint, *extra):
    return ["--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu", *extra, *TINY]


def names_of(split_file):
    return [line.strip() for line in split_file.read_text().splitlines() if line.strip()]


def test_train_writes_checkpoints_and_change_metrics(trained):
    root, run = trained
    for name in ("best.pth", "latest.pth", "config.yaml", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("changed_IoU", "unchanged_IoU", "OA", "F1", "precision", "recall", "kappa"):
        assert key in record, key
    # the scores of the validation split, as evaluate recomputes them from the checkpoint (metrics.jsonl
    # writes an undefined score, NaN, as null)
    scores = evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "val"))
    for key in ("changed_IoU", "unchanged_IoU", "OA", "F1", "precision", "recall", "kappa"):
        assert record[key] == (None if math.isnan(scores[key]) else pytest.approx(scores[key])), key
    assert record["loss_s"] > 0 and record["loss_w_fp"] > 0
    log = (run / "train.log").read_text()
    assert "changed IoU" in log and "F1 (changed)" in log and "overall accuracy" in log
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert best["metrics"]["changed_IoU"] == pytest.approx(record["changed_IoU"])


def confusion_from_pngs(root, directory, names):
    """Scores recomputed from the written masks and the label files."""
    confusion = ConfusionMatrix(2)
    for name in names:
        pred = np.array(Image.open(directory / name)) // 255
        label = np.array(Image.open(root / "label" / name)) // 255
        confusion.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))
    return change_report(confusion)[0]


def test_evaluate_test_split_writes_json_csv_and_masks(trained, tmp_path):
    root, run = trained
    preds, json_path, csv_path = tmp_path / "preds", tmp_path / "test.json", tmp_path / "test.csv"
    metrics = evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "test", "--json", str(json_path),
                                          "--csv", str(csv_path), "--save-predictions", str(preds)))
    saved = json.loads(json_path.read_text())
    assert saved["split"] == "test" and saved["tiles"] == 4
    assert saved["metrics"] == pytest.approx(metrics, nan_ok=True)
    assert np.array(saved["confusion"]).sum() == 4 * TILE * TILE
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["split"] == "test"
    assert float(rows[0]["changed_IoU"]) == pytest.approx(metrics["changed_IoU"])
    test_names = names_of(root / "splits/test.txt")
    assert sorted(p.name for p in preds.glob("*.png")) == sorted(test_names)
    mask = np.array(Image.open(preds / test_names[0]))
    assert mask.shape == (TILE, TILE) and set(np.unique(mask)) <= {0, 255}
    recomputed = confusion_from_pngs(root, preds, test_names)
    assert recomputed["changed_IoU"] == pytest.approx(metrics["changed_IoU"], nan_ok=True)
    assert recomputed["OA"] == pytest.approx(metrics["OA"])
    # a split file works as well as a split name, and outputs are never replaced silently
    by_file = evaluate_cli.main(eval_args(root, run / "best.pth", "--split", str(root / "splits/test.txt")))
    assert by_file == pytest.approx(metrics, nan_ok=True)
    # the demo evaluates 16 tiles per forward: the same scores as one at a time
    batched = evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "test", "eval_batch_size=3"))
    assert batched == pytest.approx(metrics, nan_ok=True, rel=1e-6)
    with pytest.raises(DataError, match="already exist"):
        evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "test", "--json", str(json_path)))
    with pytest.raises(DataError, match="already holds files"):
        evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "test", "--save-predictions", str(preds)))


def test_evaluate_with_the_demo_config_never_pretrains_a_backbone(trained, tmp_path, monkeypatch):
    """pretrained: synthetic is a starting point for training; evaluate reads every weight from the
    checkpoint and must not spend a pretraining run on a file it would not read."""
    from unimatch import pretrained as pretrain

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate pretrained a backbone")

    monkeypatch.setattr(pretrain, "synthetic_backbone", refuse)
    root, run = trained
    # after TINY, whose pretrained=null would otherwise win
    metrics = evaluate_cli.main([*eval_args(root, run / "best.pth", "--split", "test"), "pretrained=synthetic"])
    # every weight came from the checkpoint: the scores are those without a pretrained setting
    assert metrics == pytest.approx(evaluate_cli.main(eval_args(root, run / "best.pth", "--split", "test")),
                                    nan_ok=True)


def test_evaluate_json_writes_undefined_precision_as_null(trained, tmp_path):
    """A model that predicts no change has no precision (NaN): the JSON file says null, so strict
    parsers read it."""
    root, run = trained
    checkpoint = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    checkpoint["model"]["classifier.weight"].zero_()
    checkpoint["model"]["classifier.bias"].copy_(torch.tensor([10.0, -10.0]))
    never_changed = tmp_path / "never_changed.pth"
    torch.save(checkpoint, never_changed)
    json_path = tmp_path / "test.json"
    metrics = evaluate_cli.main(eval_args(root, never_changed, "--split", "test", "--json", str(json_path)))
    assert math.isnan(metrics["precision"])
    saved = strict_json_loads(json_path.read_text())
    assert saved["metrics"]["precision"] is None
    assert saved["metrics"]["OA"] == pytest.approx(metrics["OA"])


def test_official_checkpoint_gives_identical_predictions(trained, tmp_path):
    """An official release: {'model': DDP state dict}, every key prefixed 'module.'."""
    root, run = trained
    ours = torch.load(run / "best.pth", map_location="cpu", weights_only=False)["model"]
    official = tmp_path / "whu_official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ours.items()}}, official)
    a, b = tmp_path / "ours", tmp_path / "official"
    ours_metrics = evaluate_cli.main(eval_args(root, run / "best.pth", "--save-predictions", str(a)))
    official_metrics = evaluate_cli.main(eval_args(root, official, "--save-predictions", str(b)))
    assert official_metrics == pytest.approx(ours_metrics, nan_ok=True)
    pngs = sorted(a.glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(b / png.name)))


def write_geotiff(path, array, crs="EPSG:32633", transform=None):
    transform = transform or Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)  # 0.5 m pixels, UTM 33N
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs=CRS.from_string(crs), transform=transform) as dst:
        dst.write(array)


def scene_pair(tmp_path, height=70, width=100):
    """Two uint8 3-band GeoTIFFs several 32-px windows wide, built from synthetic tiles."""
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    after = before.copy()
    after[:, 20:40, 30:60] = 255 - after[:, 20:40, 30:60]
    write_geotiff(tmp_path / "before.tif", before)
    write_geotiff(tmp_path / "after.tif", after)
    return tmp_path / "before.tif", tmp_path / "after.tif"


def predict_args(run, before, after, out, *extra):
    return ["--checkpoint", str(run / "best.pth"), "--before", str(before), "--after", str(after), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra, *TINY]


def test_predict_geotiff_keeps_georeference(trained, tmp_path):
    _, run = trained
    before, after = scene_pair(tmp_path)
    out = tmp_path / "change.tif"
    predict_cli.main(predict_args(run, before, after, out, "--window", "32", "--overlap", "8", "--probability"))
    with rasterio.open(before) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height, dst.count) == (100, 70, 2)
        assert set(np.unique(dst.read(1))) <= {0, 1}
    with pytest.raises(DataError, match="already exists"):
        predict_cli.main(predict_args(run, before, after, out))
    predict_cli.main(predict_args(run, before, after, out, "--overwrite", "--bands", "3,2,1"))


def test_predict_png_pair_writes_png_equal_to_evaluation(trained, tmp_path):
    """A PNG tile pair predicted in one window gives the mask the evaluation writes for it."""
    root, run = trained
    name = names_of(root / "splits/val.txt")[0]
    evaluate_cli.main(eval_args(root, run / "best.pth", "--save-predictions", str(tmp_path / "eval")))
    out = tmp_path / "change.png"
    predict_cli.main(predict_args(run, root / "A" / name, root / "B" / name, out, "--window", str(TILE)))
    predicted = np.array(Image.open(out))
    assert Image.open(out).format == "PNG" and predicted.shape == (TILE, TILE)
    assert np.array_equal(predicted * 255, np.array(Image.open(tmp_path / "eval" / name)))


def test_predict_refuses_mismatched_or_unreadable_scenes(trained, tmp_path):
    _, run = trained
    before, after = scene_pair(tmp_path)
    rng = np.random.default_rng(1)
    write_geotiff(tmp_path / "smaller.tif", rng.integers(0, 256, (3, 60, 100), dtype=np.uint8))
    with pytest.raises(DataError, match="size 100x70 vs 100x60.*smaller.tif"):
        predict_cli.main(predict_args(run, before, tmp_path / "smaller.tif", tmp_path / "a.tif"))
    write_geotiff(tmp_path / "other_crs.tif", rng.integers(0, 256, (3, 70, 100), dtype=np.uint8), crs="EPSG:4326")
    with pytest.raises(DataError, match="CRS"):
        predict_cli.main(predict_args(run, before, tmp_path / "other_crs.tif", tmp_path / "b.tif"))
    shifted = Affine(0.5, 0.0, 500010.0, 0.0, -0.5, 4100000.0)
    write_geotiff(tmp_path / "shifted.tif", rng.integers(0, 256, (3, 70, 100), dtype=np.uint8), transform=shifted)
    with pytest.raises(DataError, match="transform"):
        predict_cli.main(predict_args(run, before, tmp_path / "shifted.tif", tmp_path / "c.tif"))
    write_geotiff(tmp_path / "four_bands.tif", rng.integers(0, 256, (4, 70, 100), dtype=np.uint8))
    with pytest.raises(DataError, match="band count 3 vs 4"):
        predict_cli.main(predict_args(run, before, tmp_path / "four_bands.tif", tmp_path / "d.tif"))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="broken.tif"):
        predict_cli.main(predict_args(run, tmp_path / "broken.tif", after, tmp_path / "e.tif"))
    assert not any((tmp_path / f"{c}.tif").exists() for c in "abcde")


def test_user_errors_exit_with_one_message(trained, tmp_path, monkeypatch, capsys):
    _, run = trained
    before, _ = scene_pair(tmp_path)
    monkeypatch.setattr(sys, "argv", ["predict", *predict_args(run, before, tmp_path / "missing.tif",
                                                                tmp_path / "out.tif")])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(predict_cli.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input scene") and "missing.tif does not exist" in err


def test_file_missing_in_b_is_a_data_error_naming_it(trained, tmp_path):
    root, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    labeled = names_of(copy / "splits/20%/labeled.txt")
    (copy / "B" / labeled[1]).unlink()
    with pytest.raises(DataError, match=rf"{copy / 'B' / labeled[1]} is missing.*line 2 of .*labeled.txt"):
        train_cli.main(train_args(copy, tmp_path / "run"))
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_change_metrics_by_hand():
    """TP 30, FP 10, FN 20, TN 40 (and 7 ignored pixels): every score computed on paper."""
    target = torch.tensor([1] * 30 + [0] * 10 + [1] * 20 + [0] * 40 + [255] * 7)
    pred = torch.tensor([1] * 30 + [1] * 10 + [0] * 20 + [0] * 40 + [1] * 7)
    confusion = ConfusionMatrix(2)
    confusion.update(pred, target)
    metrics, table = change_report(confusion)
    assert metrics["changed_IoU"] == pytest.approx(100 * 30 / 60)
    assert metrics["unchanged_IoU"] == pytest.approx(100 * 40 / 70)
    assert metrics["OA"] == pytest.approx(70.0)
    assert metrics["precision"] == pytest.approx(75.0)
    assert metrics["recall"] == pytest.approx(60.0)
    assert metrics["F1"] == pytest.approx(100 * 2 * 0.75 * 0.6 / 1.35)
    # observed 0.7, expected by chance (50*40 + 50*60) / 100^2 = 0.5 -> (0.7 - 0.5) / 0.5
    assert metrics["kappa"] == pytest.approx(40.0)
    assert metrics["mIoU"] == pytest.approx((50 + 100 * 40 / 70) / 2)
    rows = dict(line.rsplit(None, 1) for line in table.splitlines()[2:])
    assert rows["changed IoU"] == "50.00" and rows["F1 (changed)"] == "66.67" and rows["Cohen's kappa x100"] == "40.00"
    nothing_predicted = ConfusionMatrix(2)
    nothing_predicted.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1]))
    assert change_report(nothing_predicted)[0]["F1"] == 0.0
    no_change_anywhere = ConfusionMatrix(2)
    no_change_anywhere.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert change_report(no_change_anywhere)[0]["changed_IoU"] == 0.0  # the official 0 / (0 + 1e-10)


def test_three_classes_count_every_nonzero_class_as_change():
    target = torch.tensor([0, 0, 1, 2, 2, 1])
    pred = torch.tensor([0, 2, 2, 2, 0, 1])
    confusion = ConfusionMatrix(3)
    confusion.update(pred, target)
    metrics, _ = change_report(confusion, ["none", "built", "demolished"])
    # binary: TP 3 (1->2, 2->2, 1->1), FP 1 (0->2), FN 1 (2->0), TN 1
    assert metrics["changed_IoU"] == pytest.approx(60.0)
    assert metrics["OA"] == pytest.approx(100 * 4 / 6)
    assert "IoU/demolished" in metrics


def test_config_checks_bands_against_channels():
    with pytest.raises(ConfigError, match=r"in_channels \(6\) must be 2 x len\(bands\) = 8"):
        load_config(None, ["bands=[1,2,3,4]"], schema=CDConfig)
    with pytest.raises(ConfigError, match="class_values"):
        load_config(None, ["class_values=[0,1,255]"], schema=CDConfig)
    assert load_config(None, ["stretch=256"], schema=CDConfig).stretch == 256


@pytest.mark.parametrize("name, params", [("whu.yaml", "40.5M"), ("levir.yaml", "40.5M"),
                                          ("whu_pspnet.yaml", "46.7M"), ("levir_pspnet.yaml", "46.7M")])
def test_shipped_configs_are_the_official_set_up(name, params):
    """Official hyperparameters, and the model size printed by the official training logs."""
    cfg = load_config(config_path("change_detection", name), schema=CDConfig)
    assert (cfg.crop_size, cfg.batch_size, cfg.lr, cfg.lr_multi, cfg.epochs, cfg.conf_thresh) == \
        (256, 8, 0.02, 1.0, 80, 0.95)
    assert cfg.grayscale_p == 0.0 and cfg.select_metric == "changed_IoU" and cfg.class_values == [0, 255]
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg, pretrained=None))
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M" == params


def test_evaluate_and_predict_default_to_the_config_stored_in_the_checkpoint(trained, tmp_path, capsys):
    """Without --config (nor the run's overrides) the run's own model is rebuilt, and the command says so."""
    root, run = trained
    metrics = evaluate_cli.main(["--checkpoint", str(run / "best.pth"), "--data-root", str(root), "--device", "cpu"])
    assert "(stored config)" in capsys.readouterr().out
    assert metrics == pytest.approx(evaluate_cli.main(eval_args(root, run / "best.pth")), nan_ok=True)
    before, after = scene_pair(tmp_path)
    predict_cli.main(["--checkpoint", str(run / "best.pth"), "--before", str(before), "--after", str(after),
                      "--out", str(tmp_path / "change.tif"), "--device", "cpu", "--no-progress"])
    assert (tmp_path / "change.tif").is_file() and "(stored config)" in capsys.readouterr().out


def test_a_change_detection_checkpoint_given_to_another_task_names_the_command_to_use(trained, tmp_path,
                                                                                      monkeypatch, capsys):
    """Not a select_metric complaint: the stored config's task says which command reads the checkpoint."""
    from tasks.acdc import evaluate as acdc_evaluate
    from tasks.natural import predict as natural_predict

    root, run = trained
    checkpoint = run / "best.pth"
    monkeypatch.setattr(sys, "argv", ["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(acdc_evaluate.main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: checkpoint {checkpoint} was trained by the change_detection task, "
                                       f"not acdc; use python -m tasks.change_detection.evaluate\n")
    with pytest.raises(CheckpointError, match=r"trained by the change_detection task, not natural; "
                                              r"use python -m tasks\.change_detection\.predict$"):
        natural_predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path), "--output",
                              str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()
