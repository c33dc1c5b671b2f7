"""UniMatch V2 through the natural-image and change-detection entry points, end to end on tiny synthetic
sets: ``train --method unimatch_v2`` without ``--config`` takes the task's V2 demo config (the DPT), the
run keeps and evaluates an EMA, and ``evaluate`` / ``predict`` rebuild the model from ``best.pth`` alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine

from tasks.change_detection import evaluate as cd_evaluate
from tasks.change_detection import predict as cd_predict
from tasks.change_detection import train as cd_train
from tasks.change_detection.synthetic import ensure_synthetic_cd
from tasks.natural import evaluate as nat_evaluate
from tasks.natural import predict as nat_predict
from tasks.natural import train as nat_train
from tasks.natural.synthetic import ensure_synthetic_voc
from unimatch.checkpoint import load_checkpoint

# 28 px crops (two patches a side), every pseudo-label counted so the strong loss is surely non-zero;
# random weights, so that no synthetic trunk is pretrained here (tests/test_pretrain.py does that)
SMALL = ["crop_size=28", "log_every=0", "threads=1", "conf_thresh=0.0", "pretrained=null"]
COMMON = ["--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu",
          "--seed", "0", "--method", "unimatch_v2"]


def check_v2_run(run, metric):
    """The run is the V2 demo config's: a DPT on vit_tiny, AdamW, an EMA teacher kept in latest.pth and
    scored beside the student; best.pth holds whichever scored best and says which."""
    latest, best = load_checkpoint(run / "latest.pth"), load_checkpoint(run / "best.pth")
    stored = latest["config"]
    assert (stored["method"], stored["backbone"]) == ("unimatch_v2", "vit_tiny")
    assert stored["model"] in ("dpt", "siamese_dpt")
    assert latest["model_ema"].keys() == latest["model"].keys()
    assert any(not torch.equal(latest["model_ema"][k], latest["model"][k]) for k in latest["model"])
    assert "betas" in latest["optimizer"]["param_groups"][0]            # AdamW
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss_s"] > 0 and f"ema/{metric}" in record
    assert best["weights"] in ("student", "ema")
    chosen = record[metric] if best["weights"] == "student" else record[f"ema/{metric}"]
    assert best["metrics"][metric] == pytest.approx(chosen)
    return record, best


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("v2nat")
    root = ensure_synthetic_voc(base / "voc", n_images=16, size=40, seed=3, labeled_fraction=0.25)
    run = base / "run"
    nat_train.main(["--data-root", str(root), "--labeled-split", str(root / "splits/labeled.txt"),
                    "--unlabeled-split", str(root / "splits/unlabeled.txt"), "--val-split",
                    str(root / "splits/val.txt"), "--save-dir", str(run), *COMMON, *SMALL])
    return root, run


@pytest.fixture(scope="module")
def cd_run(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("v2cd")
    root = ensure_synthetic_cd(base / "data", n_train=16, n_val=4, n_test=4, tile=48, seed=3)
    run = base / "run"
    cd_train.main(["--data-root", str(root), "--labeled-split", "splits/20%/labeled.txt", "--unlabeled-split",
                   "splits/20%/unlabeled.txt", "--save-dir", str(run), *COMMON, *SMALL])
    return root, run


def test_natural_v2_train_evaluate_and_predict_from_best_pth_alone(natural_run, tmp_path, capsys):
    root, run = natural_run
    record, best = check_v2_run(run, "mIoU")
    capsys.readouterr()
    metrics = nat_evaluate.main(["--checkpoint", str(run / "best.pth")])
    assert "(stored config)" in capsys.readouterr().out
    assert metrics["mIoU"] == pytest.approx(best["metrics"]["mIoU"])   # the stored val split, the stored weights
    image = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    written = nat_predict.main(["--checkpoint", str(run / "best.pth"), "--input", str(image),
                                "--output", str(tmp_path / "out")])
    assert [p.name for p in written] == [f"{image.stem}.png"]


def write_geotiff(path, array):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=3,
                       dtype="uint8", crs=CRS.from_epsg(32650), transform=Affine(0.5, 0, 1000, 0, -0.5, 2000)) as dst:
        dst.write(array)


def test_change_detection_v2_train_evaluate_and_predict_from_best_pth_alone(cd_run, tmp_path, capsys):
    root, run = cd_run
    record, best = check_v2_run(run, "changed_IoU")
    stored = load_checkpoint(run / "best.pth")["config"]
    assert stored["teacher"] is None   # the demo keeps V2's EMA teacher; levir_v2/whu_v2 set the student
    capsys.readouterr()
    metrics = cd_evaluate.main(["--checkpoint", str(run / "best.pth")])
    assert "(stored config)" in capsys.readouterr().out
    assert metrics["changed_IoU"] == pytest.approx(best["metrics"]["changed_IoU"], nan_ok=True)
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (3, 50, 70), dtype=np.uint8)
    after = before.copy()
    after[:, 10:30, 20:50] = 255 - after[:, 10:30, 20:50]
    write_geotiff(tmp_path / "before.tif", before)
    write_geotiff(tmp_path / "after.tif", after)
    cd_predict.main(["--checkpoint", str(run / "best.pth"), "--before", str(tmp_path / "before.tif"),
                     "--after", str(tmp_path / "after.tif"), "--out", str(tmp_path / "change.tif"), "--no-progress"])
    with rasterio.open(tmp_path / "change.tif") as dst:
        assert (dst.width, dst.height) == (70, 50) and set(np.unique(dst.read(1))) <= {0, 1}
