"""ACDC entry points end to end on a tiny phantom: train, evaluate (val/test/list file, JSON, CSV,
NIfTI predictions), predict (NIfTI geometry, overlays), official checkpoints, bad input."""
import csv
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import add_nan_patch, strict_json_loads
from tasks.acdc import evaluate, predict, train
from tasks.acdc.common import AcdcConfig
from tasks.acdc.evaluation import evaluate_volumes
from tasks.acdc.data import VolumeDataset, build_eval_volumes
from tasks.acdc.readers import list_raw_cases, load_raw_case
from unimatch.config import load_config
from unimatch.distributed import DistContext
from unimatch.engine import load_model_weights
from unimatch.errors import CheckpointError, ConfigError, DataError
from unimatch.inference import Predictor
from unimatch.losses import CrossEntropyDice
from unimatch.metrics.volume import score_volume
from unimatch.models import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "acdc" / "synthetic.yaml"
MODEL = ["crop_size=32", "feature_channels=[4,8,16,32,64]"]


def _train_args(root: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--data-root", str(root), "--save-dir", str(save_dir), "--epochs", "1",
            "--batch-size", "4", "--num-workers", "0", "--seed", "0", "--no-progress", "--device", "cpu",
            *extra, *MODEL]


@pytest.fixture(scope="module")
def run(acdc_phantom, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    save_dir = tmp_path_factory.mktemp("run")
    train.main(_train_args(acdc_phantom, save_dir, "--cases", "1"))
    return save_dir


@pytest.fixture(scope="module")
def fitted(run, acdc_phantom, tmp_path_factory) -> Path:
    """A checkpoint in our format (with the run's config) whose predictions hold several classes.

    One epoch of the entry point on a 48 px phantom predicts a single class everywhere, which
    would make every "same predictions" check pass trivially; here the run's model is fitted
    directly on the test patients' slices for a few dozen steps.
    """
    stored = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    cfg = load_config(None, schema=AcdcConfig, **stored["config"])
    model = build_model(cfg)
    model.load_state_dict(stored["model"])
    items = build_eval_volumes(acdc_phantom, "test", seed=cfg.seed).items
    size = (cfg.crop_size, cfg.crop_size)
    x = torch.cat([F.interpolate(torch.from_numpy(i.volume)[:, None], size, mode="bilinear", align_corners=False)
                   for i in items])
    y = torch.cat([F.interpolate(torch.from_numpy(i.label)[:, None].float(), size, mode="nearest")[:, 0].long()
                   for i in items])
    criterion = CrossEntropyDice(cfg.nclass)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    torch.manual_seed(0)
    model.train()
    for _ in range(30):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("fitted") / "fitted.pth"
    torch.save({"model": model.state_dict(), "config": stored["config"]}, path)
    return path


def _image_file(acdc_phantom: Path, patient: str = "patient001") -> Path:
    folder = acdc_phantom / "training" / patient
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.endswith("_gt.nii.gz"))[0]


# ----------------------------------------------------------------------------- train

def test_train_writes_checkpoints_metrics_and_the_patient_split(run):
    assert (run / "best.pth").is_file() and (run / "latest.pth").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    for key in ("mean_dice", "dice/RV", "dice/Myo", "dice/LV", "hd95_mm/LV", "hd95_vox/LV", "asd_mm/LV"):
        assert key in records[0]
    # the mean over the three structures, and the score best.pth (this epoch's model) was kept for; evaluate
    # recomputes it from the checkpoint (test_evaluate_reports_the_test_patients_only)
    assert records[0]["mean_dice"] == pytest.approx(np.mean([records[0][f"dice/{c}"] for c in ("RV", "Myo", "LV")]))
    split = json.loads((run / "split.json").read_text())
    assert len(split["labeled"]) == 1 and len(split["unlabeled"]) == 4
    assert len(split["val"]) == 1 and len(split["test"]) == 2
    everyone = split["labeled"] + split["unlabeled"] + split["val"] + split["test"]
    assert len(set(everyone)) == 8
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert best["metrics"]["n_cases"] == 2.0  # the validation patient's ED and ES volumes only
    assert best["metrics"]["mean_dice"] == records[0]["mean_dice"]


def test_cases_beyond_the_training_patients_is_one_clear_error(acdc_phantom, tmp_path):
    with pytest.raises(DataError, match=r"cases=6 .* 5 training patients"):
        train.main(_train_args(acdc_phantom, tmp_path / "run", "--cases", "6"))


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_reports_the_test_patients_only(run, acdc_phantom, tmp_path):
    split = json.loads((run / "split.json").read_text())
    out = evaluate.main(["--checkpoint", str(run / "best.pth"), "--split", "test", "--device", "cpu",
                         "--json", str(tmp_path / "test.json"), "--csv", str(tmp_path / "test.csv")])
    report = strict_json_loads((tmp_path / "test.json").read_text())  # undefined distances are null, not NaN
    cases = {row["case"] for row in report["per_case"]}
    patients = {case.split("_")[0] for case in cases}
    assert patients == set(split["test"])
    assert len(cases) == 2 * len(split["test"])  # ED and ES of each
    assert report["summary"]["n_cases"] == len(cases) and out["cases"] == sorted(cases)
    assert set(report["summary"]["classes"]) == {"RV", "Myo", "LV"}
    for name in ("dice", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        assert name in report["summary"]["mean"]
    with open(tmp_path / "test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(cases)
    assert {r["case"] for r in rows} == cases and {r["class"] for r in rows} == {"RV", "Myo", "LV"}

    val = evaluate.main(["--checkpoint", str(run / "best.pth"), "--split", "val", "--device", "cpu"])
    assert {c.split("_")[0] for c in val["cases"]} == set(split["val"])
    assert not set(val["cases"]) & cases
    # the validation score equals the one the training run selected its best checkpoint with
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert val["metrics"]["mean_dice"] == pytest.approx(best["metrics"]["mean_dice"])


def test_evaluate_official_list_file_and_saved_predictions(run, fitted, acdc_phantom, tmp_path):
    patient = json.loads((run / "split.json").read_text())["test"][0]
    case = sorted(p.name[:-len(".nii.gz")] for p in (acdc_phantom / "training" / patient).glob("*_frame??.nii.gz"))[0]
    listing = tmp_path / "test.txt"
    listing.write_text(f"data/{case}.h5\n")
    args = ["--checkpoint", str(fitted), "--split", str(listing), "--device", "cpu",
            "--save-predictions", str(tmp_path / "pred")]
    out = evaluate.main(args)
    assert out["cases"] == [case]
    written = nib.load(str(tmp_path / "pred" / f"{case}.nii.gz"))
    source = nib.load(str(acdc_phantom / "training" / patient / f"{case}.nii.gz"))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    labels = set(np.unique(np.asarray(written.dataobj)).tolist())
    assert labels <= {0, 1, 2, 3} and len(labels) > 1
    # the saved map is the one that was scored
    truth = np.asarray(nib.load(str(acdc_phantom / "training" / patient / f"{case}_gt.nii.gz")).dataobj)
    saved = np.asarray(written.dataobj)
    dice_lv = 2 * ((saved == 3) & (truth == 3)).sum() / ((saved == 3).sum() + (truth == 3).sum())
    assert out["metrics"]["dice/LV"] == pytest.approx(100 * dice_lv)
    with pytest.raises(DataError, match="exist"):
        evaluate.main(args)


def test_volume_evaluation_equals_a_hand_loop_over_slices(fitted, acdc_phantom):
    # the official protocol in fp32 (the demo config's bf16 would round differently from the hand loop)
    cfg = load_config(CONFIG, MODEL + ["amp=none", "channels_last=false"], schema=AcdcConfig,
                      data_root=str(acdc_phantom))
    model = build_model(cfg)
    load_model_weights(model, fitted)
    model.eval()
    item = build_eval_volumes(acdc_phantom, "val", seed=0).items[0]
    result = evaluate_volumes(Predictor(model, cfg, torch.device("cpu")), VolumeDataset([item]), cfg, DistContext())

    slices = []
    with torch.no_grad():
        for z in range(item.volume.shape[0]):
            x = torch.from_numpy(item.volume[z])[None, None]
            h, w = x.shape[-2:]
            logits = model(F.interpolate(x, (32, 32), mode="bilinear", align_corners=False))
            slices.append(F.interpolate(logits, (h, w), mode="bilinear", align_corners=False).argmax(1)[0])
    labels = torch.stack(slices).numpy()
    assert len(np.unique(labels)) > 1
    by_hand = score_volume(labels, item.label, item.spacing, {1: "RV", 2: "Myo", 3: "LV"})
    assert result.per_case == [(item.case_id, by_hand)]
    assert result.summary["mean"]["dice"] == pytest.approx(np.mean([s.dice for s in by_hand.values()]))


# ----------------------------------------------------------------------------- predict

def test_predict_keeps_the_source_geometry_and_writes_overlays(fitted, acdc_phantom, tmp_path):
    source_path = _image_file(acdc_phantom)
    predict.main(["--checkpoint", str(fitted), "--input", str(source_path), "--output",
                  str(tmp_path / "out"), "--overlay-slices", "0,2", "--device", "cpu"])
    stem = source_path.name[:-len(".nii.gz")]
    written = nib.load(str(tmp_path / "out" / f"{stem}_seg.nii.gz"))
    source = nib.load(str(source_path))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"]) == 1
    assert int(written.header["qform_code"]) == int(source.header["qform_code"]) == 1
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) > 1
    for z in (0, 2):
        png = np.asarray(Image.open(tmp_path / "out" / f"{stem}_slice{z:02d}.png"))
        assert png.shape == (source.shape[1], source.shape[0], 3)


def test_official_checkpoint_predicts_like_ours(fitted, acdc_phantom, tmp_path):
    ours = torch.load(fitted, map_location="cpu", weights_only=False)["model"]
    official = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in ours.items()}}, official)
    folder = acdc_phantom / "training" / "patient002"
    predict.main(["--checkpoint", str(fitted), "--input", str(folder), "--output", str(tmp_path / "a"),
                  "--device", "cpu"])
    predict.main(["--checkpoint", str(official), "--config", str(CONFIG), "--input", str(folder),
                  "--output", str(tmp_path / "b"), "--device", "cpu", *MODEL])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 2 and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        ours_labels = np.asarray(nib.load(str(tmp_path / "a" / name)).dataobj)
        assert len(np.unique(ours_labels)) > 1
        np.testing.assert_array_equal(ours_labels, np.asarray(nib.load(str(tmp_path / "b" / name)).dataobj))


def test_official_checkpoint_of_other_widths_says_what_does_not_fit(fitted, acdc_phantom, tmp_path):
    """Official checkpoints store no config; without --config the built-in default UNet (8..128
    channels) is built, and the error says so in config keys before any key listing."""
    ours = torch.load(fitted, map_location="cpu", weights_only=False)["model"]
    official = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in ours.items()}}, official)
    with pytest.raises(CheckpointError) as error:
        predict.main(["--checkpoint", str(official), "--input", str(_image_file(acdc_phantom)), "--output",
                      str(tmp_path / "out"), "--device", "cpu"])
    message = str(error.value)
    assert f"does not fit the model built from the config {predict.TASK.default_config} (the checkpoint stores none)" \
        in message
    assert ("the checkpoint's UNet has 4..64 feature channels ([4, 8, 16, 32, 64]), the config says "
            "feature_channels: [8, 16, 32, 64, 128]. Missing: []") in message


def test_predict_4d_needs_a_frame(run, acdc_phantom, tmp_path):
    source = nib.load(str(_image_file(acdc_phantom)))
    data = np.asarray(source.dataobj)
    cine = nib.Nifti1Image(np.stack([data, data[::-1]], axis=-1), source.affine, source.header)
    path = tmp_path / "patient001_4d.nii.gz"
    nib.save(cine, str(path))
    args = ["--checkpoint", str(run / "best.pth"), "--input", str(path), "--output", str(tmp_path / "out"),
            "--device", "cpu"]
    with pytest.raises(DataError, match="--frame"):
        predict.main(args)
    assert not (tmp_path / "out").exists()
    predict.main(args + ["--frame", "1"])
    written = nib.load(str(tmp_path / "out" / "patient001_4d_t01_seg.nii.gz"))
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, source.affine)


def test_predict_refuses_truncated_and_non_nifti_files(run, acdc_phantom, tmp_path):
    raw = _image_file(acdc_phantom).read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated"):
        predict.main(["--checkpoint", str(run / "best.pth"), "--input", str(truncated), "--output",
                      str(tmp_path / "out"), "--device", "cpu"])
    fake = tmp_path / "notes.nii.gz"
    fake.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    with pytest.raises(DataError, match="not a readable NIfTI"):
        predict.main(["--checkpoint", str(run / "best.pth"), "--input", str(fake), "--output",
                      str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()


def test_predict_never_replaces_existing_output_without_overwrite(run, acdc_phantom, tmp_path):
    source_path = _image_file(acdc_phantom)
    local = Path(shutil.copy(source_path, tmp_path / source_path.name))
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"{local.name[:-len('.nii.gz')]}_seg.nii.gz"
    target.write_bytes(b"keep me")
    args = ["--checkpoint", str(run / "best.pth"), "--input", str(local), "--output", str(out), "--device", "cpu"]
    with pytest.raises(DataError, match="exist"):
        predict.main(args)
    assert target.read_bytes() == b"keep me"
    predict.main(args + ["--overwrite"])
    assert nib.load(str(target)).shape == nib.load(str(local)).shape


def _h5_copy(acdc_phantom: Path, root: Path) -> dict[str, list[str]]:
    """The phantom in the official preprocessed layout (data/*.h5 volumes, data/slices/*.h5), and
    official-style list files: patients 1 labelled, 2-5 unlabelled, 6 validation, 7-8 test."""
    lists: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "val": [], "test": []}
    (root / "data" / "slices").mkdir(parents=True)
    for patient, cases in list_raw_cases(acdc_phantom).items():
        number = int(patient[-3:])
        kind = "labeled" if number == 1 else "unlabeled" if number <= 5 else "val" if number == 6 else "test"
        for case in cases:
            volume, label, _, _ = load_raw_case(case, with_label=True)
            with h5py.File(root / "data" / f"{case.case_id}.h5", "w") as f:
                f["image"], f["label"] = volume, label.astype(np.uint8)
            if kind in ("val", "test"):
                lists[kind].append(f"data/{case.case_id}.h5")
                continue
            for z in range(volume.shape[0]):
                with h5py.File(root / "data" / "slices" / f"{case.case_id}_slice_{z}.h5", "w") as f:
                    f["image"], f["label"] = volume[z], label[z].astype(np.uint8)
                lists[kind].append(f"data/slices/{case.case_id}_slice_{z}.h5")
    for kind, entries in lists.items():
        (root / f"{kind}.txt").write_text("".join(e + "\n" for e in entries))
    return lists


def test_h5_layout_with_official_lists_trains_evaluates_and_writes_spacing_scaled_nifti(acdc_phantom, tmp_path):
    root = tmp_path / "ACDC"
    lists = _h5_copy(acdc_phantom, root)
    run = tmp_path / "run"
    train.main(_train_args(root, run, "--labeled-split", str(root / "labeled.txt"), "--unlabeled-split",
                           str(root / "unlabeled.txt"), "--val-split", str(root / "val.txt"),
                           f"test_split={root / 'test.txt'}", "h5_spacing=[10.0,1.5,1.25]"))
    split = json.loads((run / "split.json").read_text())
    assert split["layout"] == "h5" and split["labeled"] == ["patient001"] and split["val"] == ["patient006"]
    out = evaluate.main(["--checkpoint", str(run / "best.pth"), "--split", "test", "--device", "cpu",
                         "--save-predictions", str(tmp_path / "pred")])
    assert out["cases"] == sorted(Path(e).stem for e in lists["test"])
    written = nib.load(str(tmp_path / "pred" / f"{out['cases'][0]}.nii.gz"))
    np.testing.assert_allclose(written.affine, np.diag([1.25, 1.5, 10.0, 1.0]))
    with h5py.File(root / "data" / f"{out['cases'][0]}.h5") as f:
        depth, height, width = f["image"].shape
    assert written.shape == (width, height, depth)
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1


# ----------------------------------------------------------------------------- distributed

DISTRIBUTED_WORKER = """
import json, os, sys
import torch
torch.set_num_threads(1)
from tasks.acdc import evaluate
out = evaluate.main(sys.argv[2:])
with open(os.path.join(sys.argv[1], "rank_%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(out, f)
"""


@pytest.mark.timeout(120)
def test_two_processes_shard_the_volumes_and_report_the_same_scores(fitted, acdc_phantom, tmp_path):
    cases = sorted(p.name[:-len(".nii.gz")] for p in (acdc_phantom / "training").glob("patient00[45]/*_frame??.nii.gz"))
    listing = tmp_path / "three.txt"
    listing.write_text("".join(f"data/{case}.h5\n" for case in cases[:3]))  # uneven: 2 + 1 volumes
    script = tmp_path / "worker.py"
    script.write_text(DISTRIBUTED_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--checkpoint", str(fitted), "--split", str(listing), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", str(script), str(tmp_path),
               *args, "--save-predictions", str(tmp_path / "pred")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["cases"] == cases[:3]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [f"{c}.nii.gz" for c in cases[:3]]
    single = evaluate.main(args)
    assert single["cases"] == ranks[0]["cases"]
    assert single["metrics"] == pytest.approx(ranks[0]["metrics"], nan_ok=True)


# ----------------------------------------------------------------------------- non-finite data and loss

def _exit_status_and_error(main, argv, monkeypatch, capsys):
    from unimatch.cli import exit_on_user_error

    monkeypatch.setattr(sys, "argv", ["train", *argv])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(main)
    return exit_info.value.code, capsys.readouterr().err


def test_training_nifti_with_a_nan_patch_exits_2_naming_the_file(acdc_phantom, tmp_path, monkeypatch, capsys):
    root = Path(shutil.copytree(acdc_phantom, tmp_path / "acdc"))
    for image_path in sorted(root.glob("training/patient*/patient*_frame*.nii.gz")):
        if image_path.name.endswith("_gt.nii.gz"):
            continue
        add_nan_patch(image_path)
    status, err = _exit_status_and_error(train.main, _train_args(root, tmp_path / "run", "--cases", "1"),
                                         monkeypatch, capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "_frame" in err and ".nii.gz: 4 NaN/Inf value(s)" in err
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_diverging_training_exits_2_and_keeps_the_good_checkpoints(acdc_phantom, tmp_path, monkeypatch, capsys):
    save_dir = tmp_path / "run"
    train.main(_train_args(acdc_phantom, save_dir, "--cases", "1"))
    before = {name: (save_dir / name).read_bytes() for name in ("latest.pth", "best.pth")}
    args = _train_args(acdc_phantom, save_dir, "--cases", "1", "--resume-with-changes", "lr=1e30")
    args[args.index("--epochs") + 1] = "2"
    status, err = _exit_status_and_error(train.main, args, monkeypatch, capsys)
    assert status == 2
    assert err.startswith("error: non-finite loss at epoch 2, iteration") and err.count("\n") == 1
    assert "lower lr" in err
    for name, content in before.items():
        assert (save_dir / name).read_bytes() == content, name


def test_rerun_with_more_cases_is_refused_and_leaves_the_split_of_the_weights(run, acdc_phantom, tmp_path, monkeypatch,
                                                                               capsys):
    """--cases 2 into a finished --cases 1 run: its weights saw one labelled patient, so split.json and
    config.yaml must keep saying so; the command stops before any file is written."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    before = {path.relative_to(copy): path.read_bytes() for path in sorted(copy.rglob("*")) if path.is_file()}
    status, err = _exit_status_and_error(train.main, _train_args(acdc_phantom, copy, "--cases", "2"), monkeypatch, capsys)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "cases: 1 stored, 2 now" in err and "--resume-with-changes" in err
    after = {path.relative_to(copy): path.read_bytes() for path in sorted(copy.rglob("*")) if path.is_file()}
    assert after == before


def test_an_acdc_checkpoint_given_to_another_task_names_the_command_to_use(run, tmp_path):
    from tasks.change_detection import evaluate as cd_evaluate
    from tasks.natural import evaluate as natural_evaluate

    checkpoint = run / "best.pth"
    for main, other in ((cd_evaluate.main, "change_detection"), (natural_evaluate.main, "natural")):
        with pytest.raises(CheckpointError) as error:
            main(["--checkpoint", str(checkpoint), "--device", "cpu"])
        assert str(error.value) == (f"checkpoint {checkpoint} was trained by the acdc task, not {other}; "
                                    f"use python -m tasks.acdc.evaluate")


def test_evaluate_and_predict_default_to_the_config_stored_in_the_checkpoint(run, acdc_phantom, tmp_path, capsys):
    """Without --config (nor the run's model overrides) the run's own UNet, slice size and seed are
    used, and both commands say which configuration they used."""
    checkpoint = run / "best.pth"
    evaluate.main(["--checkpoint", str(checkpoint), "--device", "cpu"])
    assert f"(config: {checkpoint} (stored config))" in capsys.readouterr().out
    predict.main(["--checkpoint", str(checkpoint), "--input", str(_image_file(acdc_phantom)), "--output",
                  str(tmp_path / "out"), "--device", "cpu"])
    assert f"config: {checkpoint} (stored config)" in capsys.readouterr().out


def test_training_another_task_into_a_run_folder_is_refused_even_with_resume_with_changes(run, acdc_phantom, tmp_path):
    from tasks.natural import train as natural_train

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    before = {path.relative_to(copy): path.read_bytes() for path in sorted(copy.rglob("*")) if path.is_file()}
    with pytest.raises(ConfigError) as error:
        natural_train.main(["--data-root", str(acdc_phantom), "--save-dir", str(copy), "--resume-with-changes",
                            "--no-progress", "--device", "cpu"])
    assert str(error.value) == (f"--save-dir {copy} holds a run of the acdc task (python -m tasks.acdc.train), "
                                f"not natural; choose another --save-dir")
    assert {path.relative_to(copy): path.read_bytes() for path in sorted(copy.rglob("*")) if path.is_file()} == before
