"""docs/reliability.md is what users see: every bad input of tests/reliability_doc.py, run through
the real entry point, gives exactly the row the document shows; and the promises stated there
(no run files of a run that never trained, nothing written before every input is checked, an
input never overwritten) hold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reliability_doc as doc
from reliability_doc import CASES, DOC, build_clean_data, outcome, row


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("clean")
    build_clean_data(base)
    return base


@pytest.fixture(scope="module")
def document() -> str:
    return DOC.read_text()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{i}" for i, c in enumerate(CASES)])
def test_document_shows_what_the_user_sees(case, clean, tmp_path, document):
    line, status = outcome(case, clean, tmp_path)
    assert line.count("\n") == 0 and (status == 0 or line.startswith("error: "))
    assert row(case, line, status) in document, (
        f"docs/reliability.md lacks\n{row(case, line, status)}\nrun `python -m tests.reliability_doc`")
    assert not (tmp_path / "run").exists(), "a run that never trained left its folder behind"


def test_a_failed_run_keeps_an_earlier_runs_files(clean, tmp_path):
    """A failed run removes only what it created: files that were in the folder stay as they were."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "train.log").write_text("an earlier attempt\n")
    line, status = outcome(CASES[1], clean, tmp_path)
    assert status == 2 and "cannot decode mask" in line
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "train.log"]
    assert (run / "train.log").read_text().startswith("an earlier attempt\n")


@pytest.mark.parametrize("checkpoint", ["latest.pth", "best.pth"])
def test_a_folder_holding_a_checkpoint_is_never_cleaned(tmp_path, checkpoint):
    """A run that saved a checkpoint (or resumed one) trained: its files stay when it fails later."""
    from unimatch.run_folder import NewRunFiles

    run = tmp_path / "run"
    files = NewRunFiles(run, is_main=True)
    run.mkdir()
    for name in ("config.yaml", "train.log", "metrics.jsonl", checkpoint):
        (run / name).write_text("x")
    files.remove_if_untrained()
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", "train.log", "metrics.jsonl", checkpoint])


def test_only_the_main_process_cleans(tmp_path):
    from unimatch.run_folder import NewRunFiles

    files = NewRunFiles(tmp_path / "run", is_main=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x")
    files.remove_if_untrained()
    assert (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("task, make, message, output", [
    ("acdc", doc.non_finite_loss, "non-finite loss", "run"),   # the split record goes with the run
    ("natural", doc.predict_truncated_jpeg, "move it out of the input folder", "masks"),
    ("natural", doc.evaluate_small_image_center_crop, "smaller than the 32x32 centre crop", "preds"),
    ("change_detection", doc.cd_evaluate_with_a_bad_last_tile, "cannot read image", "preds"),
], ids=["acdc-run-removes-its-split-record", "natural-predict-truncated-jpeg",
        "natural-center-crop-too-small", "cd-evaluate-bad-last-tile"])
def test_a_bad_input_stops_before_anything_is_written(task, make, message, output, clean, tmp_path):
    line, status = outcome(doc.Case(task, "", make), clean, tmp_path)
    assert status == 2 and message in line
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("make", [doc.predict_into_inputs, doc.acdc_output_is_input, doc.cd_output_is_input])
def test_an_input_is_never_overwritten(make, clean, tmp_path):
    main, argv = make(clean, tmp_path)
    inputs = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line, status = outcome(doc.Case("", "", lambda base, work: (main, argv)), clean, tmp_path)
    assert status == 2 and "would overwrite the input" in line
    assert {p: p.read_bytes() for p in inputs} == inputs


def test_natural_predict_refuses_an_existing_overlay(clean, tmp_path):
    folder = doc.photos(clean, tmp_path, 1)
    (tmp_path / "masks").mkdir()
    overlay = tmp_path / "masks" / f"{next(folder.glob('*.jpg')).stem}_overlay.jpg"
    overlay.write_bytes(b"an earlier overlay")
    line, status = outcome(doc.Case("", "", lambda base, work: doc.natural_predict(
        base, folder, tmp_path / "masks", "--overlay")), clean, tmp_path)
    assert status == 2 and "already exists" in line and overlay.read_bytes() == b"an earlier overlay"


def test_acdc_2d_nifti_gets_a_2d_label_map_on_its_grid(clean, tmp_path):
    import nibabel as nib

    line, status = outcome(doc.Case("", "", doc.acdc_2d), clean, tmp_path)
    assert status == 0
    source = nib.load(tmp_path / "scans" / "scan.nii.gz")
    written = nib.load(tmp_path / "seg" / "scan_seg.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)


def test_16_bit_png_is_predicted_like_its_8_bit_version(clean, tmp_path):
    gray16 = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    for name, array in (("a16", gray16), ("b8", ((gray16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))):
        folder = tmp_path / name
        folder.mkdir()
        Image.fromarray(array).save(folder / "image.png")
        outcome(doc.Case("", "", lambda base, work, folder=folder: doc.natural_predict(
            base, folder, folder / "masks")), clean, tmp_path)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a16/masks/image.png")),
                          np.asarray(Image.open(tmp_path / "b8/masks/image.png")))


def test_cd_predict_keeps_dark_water_under_nodata_0(clean, tmp_path):
    """Pixels with one band at the nodata value are predicted; only the all-zero border is no data."""
    import rasterio

    line, status = outcome(doc.Case("", "", doc.cd_dark_water), clean, tmp_path)
    assert status == 0 and line.startswith("wrote ")
    with rasterio.open(tmp_path / "change.tif") as src:
        classes, dataset_mask = src.read(1), src.dataset_mask()
    expected_nodata = np.zeros(classes.shape, bool)
    expected_nodata[doc.NODATA_BORDER] = True
    assert np.isin(classes[doc.DARK_WATER], [0, 1]).all()
    assert np.array_equal(classes == 255, expected_nodata)
    assert np.array_equal(dataset_mask == 0, expected_nodata)


@pytest.mark.parametrize("make", [doc.evaluate_booby_trapped, doc.predict_booby_trapped, doc.resume_booby_trapped,
                                  doc.pretrained_booby_trapped], ids=["evaluate", "predict", "resume", "pretrained"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_before_the_code_runs(make, clean, tmp_path):
    line, status = outcome(doc.Case("any", "", make), clean, tmp_path)
    assert status == 2 and "refused to load" in line and "builtins.exec" in line
    assert not (tmp_path / doc.MARKER).exists(), "the file's code ran"


def test_the_booby_trapped_checkpoint_does_run_code_when_unpickled_without_weights_only(clean, tmp_path):
    """The payload of the test above is real: loaded the way the package loaded files before, it runs."""
    checkpoint = doc.booby_trapped(clean, tmp_path / doc.MARKER, tmp_path / "downloaded.pth")
    torch.load(checkpoint, weights_only=False)
    assert (tmp_path / doc.MARKER).read_text() == "this code ran on load"


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(clean, tmp_path):
    from unimatch.checkpoint import load_checkpoint

    main, argv = doc.checkpoint_write_fails(clean, tmp_path)
    before = (tmp_path / "full" / "latest.pth").read_bytes()
    line, status = outcome(doc.Case("any", "", lambda base, work: (main, argv)), clean, tmp_path)
    assert status == 2 and "File too large" in line
    assert (tmp_path / "full" / "latest.pth").read_bytes() == before
    assert load_checkpoint(tmp_path / "full" / "latest.pth")["epoch"] == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith(".")) == []
