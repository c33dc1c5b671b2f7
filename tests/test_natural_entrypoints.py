"""The natural-image command-line entry points, end to end on a tiny synthetic VOC-layout set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tasks.natural import evaluate as evaluate_cli
from tasks.natural import predict as predict_cli
from tasks.natural import train as train_cli
from tasks.natural.synthetic import ensure_synthetic_voc
from unimatch.errors import CheckpointError, ConfigError, DataError

# no supervised-only warm-up (the demo configs have one), so one epoch runs the semi-supervised step;
# random weights, not the demo's pretrained trunk (which would train one on the full source set)
TINY = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
        "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0", "sup_warmup_epochs=0",
        "pretrained=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny UniMatch run (1 epoch) on a 24-image synthetic set; returns (root, run dir)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("natural")
    root = ensure_synthetic_voc(base / "voc", n_images=24, size=40, seed=3, labeled_fraction=0.2)
    run = base / "run"
    train_cli.main(["--data-root", str(root), "--labeled-split", str(root / "splits/labeled.txt"),
                    "--unlabeled-split", str(root / "splits/unlabeled.txt"), "--val-split",
                    str(root / "splits/val.txt"), "--save-dir", str(run), "--epochs", "1", "--batch-size", "4",
                    "--num-workers", "0", "--no-progress", "--device", "cpu", *TINY,
                    "conf_thresh=0.0"])   # every pseudo-label counts, so the strong loss is surely non-zero
    return root, run


def eval_args(root, run, *flags, overrides=()):
    return ["--checkpoint", str(run / "best.pth"), "--data-root", str(root), "--split",
            str(root / "splits/val.txt"), "--device", "cpu", *flags, *TINY, *overrides]


def test_train_writes_run_directory(trained):
    _, run = trained
    for name in ("best.pth", "latest.pth", "config.yaml", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert best["metrics"]["mIoU"] == record["mIoU"]   # one epoch: best.pth is the model this line scored
    assert {"loss", "loss_x", "loss_s", "loss_w_fp", "mask_ratio", "sec_per_iter"} <= set(record)
    assert record["loss_s"] > 0 and record["loss_w_fp"] >= 0


def miou_from_pngs(root, predictions, nclass):
    """mIoU (%) recomputed from the written masks and the val labels: one confusion matrix over the split,
    255 ignored, a class absent from both counting 0 (the official intersection / (union + 1e-10))."""
    confusion = np.zeros((nclass, nclass), np.int64)
    for line in (root / "splits/val.txt").read_text().split("\n"):
        if not line.strip():
            continue
        image, mask = line.split()
        pred = np.array(Image.open(predictions / f"{Path(image).stem}.png")).astype(np.int64)
        truth = np.array(Image.open(root / mask)).astype(np.int64)
        keep = truth != 255
        confusion += np.bincount(truth[keep] * nclass + pred[keep], minlength=nclass ** 2).reshape(nclass, nclass)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    return 100 * float(np.mean(np.where(union > 0, np.diag(confusion) / np.maximum(union, 1), 0.0)))


def test_evaluate_writes_json_and_named_pngs(trained, tmp_path):
    root, run = trained
    preds = tmp_path / "preds"
    metrics = evaluate_cli.main(eval_args(root, run, "--json", str(tmp_path / "m.json"),
                                          "--save-predictions", str(preds)))
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(metrics["mIoU"])
    val_ids = [line.split()[0].split("/")[-1].rsplit(".", 1)[0]
               for line in (root / "splits/val.txt").read_text().splitlines() if line.strip()]
    assert sorted(p.stem for p in preds.glob("*.png")) == sorted(val_ids)
    mask = np.array(Image.open(preds / f"{val_ids[0]}.png"))
    image = Image.open(root / "JPEGImages" / f"{val_ids[0]}.jpg")
    assert mask.shape == (image.height, image.width) and mask.max() < 6
    # the score is that of the written masks, and that training recorded for this checkpoint (same mode)
    nclass = torch.load(run / "best.pth", map_location="cpu", weights_only=False)["config"]["nclass"]
    assert metrics["mIoU"] == pytest.approx(miou_from_pngs(root, preds, nclass), abs=1e-9)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["mIoU"] == pytest.approx(record["mIoU"], abs=1e-9)
    with pytest.raises(DataError, match="already holds files"):
        evaluate_cli.main(eval_args(root, run, "--save-predictions", str(preds)))


def test_evaluate_modes_and_center_crop_error(trained, tmp_path):
    root, run = trained
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    nclass = torch.load(run / "best.pth", map_location="cpu", weights_only=False)["config"]["nclass"]
    original = evaluate_cli.main(eval_args(root, run, "--mode", "original"))
    assert original["mIoU"] == pytest.approx(record["mIoU"], abs=1e-9)   # the demo trains with eval_mode original
    window = evaluate_cli.main(eval_args(root, run, "--mode", "sliding_window", "--save-predictions",
                                         str(tmp_path / "window")))
    assert window["mIoU"] == pytest.approx(miou_from_pngs(root, tmp_path / "window", nclass), abs=1e-9)
    with pytest.raises(DataError, match="smaller than the 64x64 centre crop"):
        evaluate_cli.main(eval_args(root, run, "--mode", "center_crop", overrides=["crop_size=64"]))


def test_official_checkpoint_gives_same_predictions(trained, tmp_path):
    """An official release stores {'model': DDP state dict} with 'module.' keys."""
    root, run = trained
    ours = torch.load(run / "best.pth", map_location="cpu", weights_only=False)["model"]
    torch.save({"model": {f"module.{k}": v for k, v in ours.items()}}, tmp_path / "official.pth")
    a, b = tmp_path / "a", tmp_path / "b"
    evaluate_cli.main(eval_args(root, run, "--save-predictions", str(a)))
    official = eval_args(root, run, "--save-predictions", str(b))
    official[1] = str(tmp_path / "official.pth")
    evaluate_cli.main(official)
    for png in a.glob("*.png"):
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(b / png.name)))


def test_checkpoint_of_another_model_is_one_clear_error(trained):
    root, run = trained
    with pytest.raises(CheckpointError, match="Missing.*unexpected"):
        evaluate_cli.main(eval_args(root, run, overrides=["width=16"]))


def test_official_checkpoint_of_other_classes_says_so_in_config_keys(trained, tmp_path):
    root, run = trained
    ours = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    nclass = ours["config"]["nclass"]
    torch.save({"model": {f"module.{k}": v for k, v in ours["model"].items()}}, tmp_path / "official.pth")
    args = eval_args(root, run, overrides=[f"nclass={nclass + 2}"])
    args[1] = str(tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match=rf"the checkpoint has {nclass} classes, the config says nclass: "
                                              rf"{nclass + 2}\. Missing: \[\]"):
        evaluate_cli.main(args)


def test_unknown_config_key_lists_valid_keys(trained):
    root, run = trained
    with pytest.raises(ConfigError, match="unknown config key 'nclas'.*Valid keys: task, dataset"):
        evaluate_cli.main(eval_args(root, run, overrides=["nclas=3"]))


def test_predict_writes_masks_and_overlays_and_refuses_overwrite(trained, tmp_path):
    root, run = trained
    images = sorted((root / "JPEGImages").glob("*.jpg"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "out"
    args = ["--checkpoint", str(run / "best.pth"), "--input", str(folder), "--output", str(out), "--overlay",
            "--device", "cpu", *TINY]
    written = predict_cli.main(args)
    assert sorted(p.name for p in written) == sorted(f"{p.stem}.png" for p in images)
    assert all((out / f"{p.stem}_overlay.jpg").is_file() for p in images)
    with pytest.raises(DataError, match="exist already"):
        predict_cli.main(args)
    single = predict_cli.main(["--checkpoint", str(run / "best.pth"), "--input", str(images[0]), "--output",
                               str(tmp_path / "one"), "--device", "cpu", *TINY])
    assert [p.name for p in single] == [f"{images[0].stem}.png"]
    # one file is read alone: another file of its folder with the same id (a.jpg beside a.png) is no matter
    Image.open(images[1]).save(folder / f"{images[0].stem}.png")
    alone = predict_cli.main(["--checkpoint", str(run / "best.pth"), "--input", str(folder / images[0].name),
                              "--output", str(tmp_path / "alone"), "--device", "cpu", *TINY])
    assert [p.name for p in alone] == [f"{images[0].stem}.png"]


# ---- run set-up errors: one line, exit status 2 -------------------------------------------------
def train_args(root, save_dir, *extra):
    return ["--data-root", str(root), "--labeled-split", str(root / "splits/labeled.txt"),
            "--unlabeled-split", str(root / "splits/unlabeled.txt"), "--val-split", str(root / "splits/val.txt"),
            "--save-dir", str(save_dir), "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
            "--no-progress", "--device", "cpu", *extra, *TINY]


def exit_status_and_error(argv, monkeypatch, capsys):
    import sys

    from unimatch.cli import exit_on_user_error

    monkeypatch.setattr(sys, "argv", ["train", *argv])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(train_cli.main)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return exit_info.value.code, err


def test_save_dir_under_a_regular_file_is_one_error_line(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    status, err = exit_status_and_error(train_args(root, tmp_path / "notes.txt" / "run"), monkeypatch, capsys)
    assert status == 2 and "notes.txt/run" in err and "Not a directory" in err
    status, err = exit_status_and_error(train_args(root, tmp_path / "notes.txt"), monkeypatch, capsys)
    assert status == 2 and "notes.txt" in err and "File exists" in err


def test_unwritable_save_dir_is_one_error_line(trained, tmp_path, monkeypatch, capsys):
    """Tests run as root, for whom chmod does not block writes: the OS's refusal is simulated."""
    import errno
    import tempfile

    root, _ = trained
    target = tmp_path / "read_only"
    real_temporary_file = tempfile.TemporaryFile

    def refuse_in_target(*args, dir=None, **kwargs):
        if dir is not None and str(dir) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse_in_target)
    status, err = exit_status_and_error(train_args(root, target), monkeypatch, capsys)
    assert status == 2 and "read_only" in err and "Permission denied" in err


def test_set_smaller_than_one_batch_is_one_error_line(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    args = train_args(root, tmp_path / "run")
    args[args.index("--batch-size") + 1] = "1000"
    status, err = exit_status_and_error(args, monkeypatch, capsys)
    assert status == 2 and "the unlabelled set of" in err and "smaller than one batch of 1000" in err
    assert "lower batch_size" in err
# ---- rerunning into a run folder ---------------------------------------------------------------
def test_rerunning_the_same_command_resumes(trained, tmp_path):
    """The same command again (other loader processes and logging allowed) resumes from latest.pth."""
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    train_cli.main(train_args(root, copy, "conf_thresh=0.0", "eval_every=3"))
    epochs = [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]
    assert "resumed from" in (copy / "train.log").read_text()


def run_files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rerun_with_other_training_settings_is_refused_before_any_file_changes(trained, tmp_path, monkeypatch,
                                                                              capsys):
    """--method supervised into a UniMatch run would continue its weights silently: refused, one line,
    every file of the run folder byte for byte as it was (config.yaml, latest.pth, logs, TensorBoard)."""
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = run_files(copy)
    args = train_args(root, copy, "--method", "supervised", "conf_thresh=0.0")
    args[args.index("--epochs") + 1] = "2"
    status, err = exit_status_and_error(args, monkeypatch, capsys)
    assert status == 2
    assert "method: 'unimatch' stored, 'supervised' now" in err and "epochs: 1 stored, 2 now" in err
    assert "another --save-dir" in err and "--resume-with-changes" in err
    assert run_files(copy) == before


def test_resume_with_changes_continues_and_records_the_new_settings(trained, tmp_path):
    root, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = train_args(root, copy, "--method", "supervised", "--resume-with-changes", "conf_thresh=0.0")
    args[args.index("--epochs") + 1] = "2"
    train_cli.main(args)
    epochs = [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    log = (copy / "train.log").read_text()
    assert "resumed from" in log and "method: 'unimatch' stored, 'supervised' now" in log
    stored = torch.load(copy / "latest.pth", map_location="cpu", weights_only=False)["config"]
    assert (stored["method"], stored["epochs"]) == ("supervised", 2)
    written = yaml.safe_load((copy / "config.yaml").read_text())
    assert (written["method"], written["epochs"]) == ("supervised", 2)


def test_evaluate_and_predict_default_to_the_config_stored_in_the_checkpoint(trained, tmp_path, capsys):
    """Without --config (nor the run's overrides) the run's own model is rebuilt, and the command says so."""
    root, run = trained
    metrics = evaluate_cli.main(["--checkpoint", str(run / "best.pth"), "--data-root", str(root), "--split",
                                 str(root / "splits/val.txt"), "--device", "cpu"])
    assert f"(config: {run / 'best.pth'} (stored config))" in capsys.readouterr().out
    assert metrics == evaluate_cli.main(eval_args(root, run))
    image = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    written = predict_cli.main(["--checkpoint", str(run / "best.pth"), "--input", str(image), "--output",
                                str(tmp_path / "out"), "--device", "cpu"])
    assert [p.name for p in written] == [f"{image.stem}.png"]
    assert "(stored config)" in capsys.readouterr().out


def test_threads_key_sets_the_training_process_thread_count(trained, tmp_path):
    """``threads: 1`` (the natural demo's setting) reaches torch before training starts."""
    root, _ = trained
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_cli.main(train_args(root, tmp_path / "run", "--method", "supervised", "threads=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
