"""Bad inputs and what a user sees: the cases behind docs/reliability.md.

Each case writes a real bad file (truncated, zero-byte, wrong values, wrong size, ...) into a
copy of a tiny synthetic dataset, runs a real entry point through
:func:`unimatch.cli.exit_on_user_error` and records the ``error:`` line and the exit status,
with temporary paths replaced by ``<tmp>``. ``tests/test_reliability.py`` checks that the
document holds every row; ``python -m tests.reliability_doc`` rewrites the document.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import nibabel as nib
import numpy as np
import rasterio
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
TASKS = {"natural": "Natural images", "change_detection": "Change detection", "acdc": "Cardiac MRI (ACDC)",
         "any": "Every task: downloaded checkpoints, the run folder, full disks and signals (shown with natural images)"}
# random weights and no supervised-only warm-up (the change-detection demo config has both), so one
# epoch reads every set the way the UniMatch step does
TINY_2D = ["backbone=tiny", "width=8", "decoder_channels=16", "reduce_channels=8", "crop_size=32",
           "replace_stride_with_dilation=[false,false,true]", "dilations=[1,2,3]", "log_every=0",
           "pretrained=null", "sup_warmup_epochs=0"]
TINY_ACDC = ["crop_size=32", "feature_channels=[4,8,16,32,64]"]


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(base, work)`` builds it in ``work`` from the clean data under ``base``
    and returns ``(entry point main, argv)``."""

    task: str
    title: str
    run: Callable[[Path, Path], tuple[Callable, list[str]]]
    shows: str = ""   # for a command that succeeds: the row shows its last printed line holding this text


# ----------------------------------------------------------------------------- clean data

def build_clean_data(base: Path) -> None:
    """Tiny clean datasets and one untrained checkpoint (with its config) per task under ``base``."""
    import dataclasses

    from tasks.acdc.common import AcdcConfig
    from tasks.acdc.synthetic import ensure_synthetic_acdc
    from tasks.change_detection.common import CDConfig
    from tasks.change_detection.synthetic import ensure_synthetic_cd
    from tasks.natural.common import NaturalConfig
    from tasks.natural.synthetic import ensure_synthetic_voc
    from unimatch.config import load_config
    from unimatch.models import build_model
    from unimatch.paths import config_path

    with contextlib.redirect_stderr(io.StringIO()):
        ensure_synthetic_voc(base / "voc", n_images=12, size=40, seed=3, labeled_fraction=0.34)
        ensure_synthetic_cd(base / "cd", n_train=8, n_val=2, n_test=2, tile=48, seed=3)
        ensure_synthetic_acdc(base / "acdc", n_patients=6, image_size=48, n_slices=(3, 4), seed=5)
    for task, schema, extra in (("natural", NaturalConfig, TINY_2D), ("change_detection", CDConfig, TINY_2D),
                                ("acdc", AcdcConfig, TINY_ACDC)):
        cfg = load_config(config_path(task, "synthetic.yaml"), extra, schema=schema)
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(cfg, pretrained=None))
        torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, base / f"{task}.pth")


def copy(base: Path, name: str, work: Path) -> Path:
    shutil.copytree(base / name, work / name)
    return work / name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def first_line(path: Path) -> str:
    return next(line.split()[0] for line in path.read_text().splitlines() if line.strip())


# ----------------------------------------------------------------------------- natural images

def natural_train(root: Path, work: Path, *extra: str, workers: int = 0) -> tuple[Callable, list[str]]:
    from tasks.natural import train

    return train.main, ["--data-root", str(root), "--labeled-split", str(root / "splits/labeled.txt"),
                        "--unlabeled-split", str(root / "splits/unlabeled.txt"), "--val-split",
                        str(root / "splits/val.txt"), "--save-dir", str(work / "run"), "--epochs", "1",
                        "--batch-size", "2", "--num-workers", str(workers), "--no-progress", "--device", "cpu",
                        *TINY_2D, *extra]


def natural_labelled_id(root: Path) -> str:
    return Path(first_line(root / "splits/labeled.txt")).stem


def natural_bad_file(change: Callable[[Path, str], None], workers: int = 0):
    def run(base: Path, work: Path):
        root = copy(base, "voc", work)
        change(root, natural_labelled_id(root))
        return natural_train(root, work, workers=workers)
    return run


def mask_of_value(value: int):
    def change(root: Path, sample: str) -> None:
        height, width = np.asarray(Image.open(root / f"JPEGImages/{sample}.jpg")).shape[:2]
        Image.fromarray(np.full((height, width), value, np.uint8)).save(root / f"SegmentationClass/{sample}.png")
    return change


def cityscapes_root(work: Path, mask_suffix: str) -> Path:
    """A one-city Cityscapes layout whose masks hold label ids (26 = car) instead of train ids."""
    root = work / "cityscapes"
    rng = np.random.default_rng(0)
    lines = []
    for index in range(4):
        name = f"aachen_{index:06d}_000019"
        image = root / "leftImg8bit/train/aachen" / f"{name}_leftImg8bit.png"
        mask = root / "gtFine/train/aachen" / f"{name}{mask_suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
        label_ids = np.full((40, 40), 7, np.uint8)
        label_ids[10:30, 10:30] = 26
        Image.fromarray(label_ids).save(mask)
        lines.append(f"{image.relative_to(root)} {mask.relative_to(root)}\n")
    (root / "labeled.txt").write_text("".join(lines[:3]))
    (root / "val.txt").write_text(lines[3])
    return root


def cityscapes_train(mask_suffix: str):
    def run(base: Path, work: Path):
        from tasks.natural import train

        root = cityscapes_root(work, mask_suffix)
        return train.main, ["--data-root", str(root), "--labeled-split", str(root / "labeled.txt"),
                            "--val-split", str(root / "val.txt"),
                            "--save-dir", str(work / "run"), "--method", "supervised", "--epochs", "1",
                            "--batch-size", "2", "--num-workers", "0", "--no-progress", "--device", "cpu",
                            "dataset=cityscapes", "nclass=19", *TINY_2D]
    return run


def natural_predict(base: Path, input_: Path, output: Path, *extra: str) -> tuple[Callable, list[str]]:
    from tasks.natural import predict

    return predict.main, ["--checkpoint", str(base / "natural.pth"), "--input", str(input_), "--output", str(output),
                          "--device", "cpu", *extra]


def photos(base: Path, work: Path, count: int = 3) -> Path:
    folder = work / "photos"
    folder.mkdir()
    for path in sorted((base / "voc/JPEGImages").glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def predict_truncated_jpeg(base: Path, work: Path):
    folder = photos(base, work)
    truncate(sorted(folder.glob("*.jpg"))[-1])
    return natural_predict(base, folder, work / "masks")


def predict_into_inputs(base: Path, work: Path):
    folder = work / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.png")
    return natural_predict(base, folder, folder, "--overwrite")


def predict_existing_output(base: Path, work: Path):
    folder = photos(base, work, 1)
    (work / "masks").mkdir()
    (work / "masks" / f"{sorted(folder.glob('*.jpg'))[0].stem}.png").write_bytes(b"an earlier mask")
    return natural_predict(base, folder, work / "masks")


def predict_16_bit_png(base: Path, work: Path):
    folder = work / "photos"
    folder.mkdir()
    Image.fromarray(np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)).save(folder / "gray16.png")
    return natural_predict(base, folder, work / "masks")


def evaluate_small_image_center_crop(base: Path, work: Path):
    from tasks.natural import evaluate

    root = copy(base, "voc", work)
    last = [line for line in (root / "splits/val.txt").read_text().splitlines() if line.strip()][-1]
    sample = Path(last.split()[0]).stem
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / f"JPEGImages/{sample}.jpg")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / f"SegmentationClass/{sample}.png")
    return evaluate.main, ["--checkpoint", str(base / "natural.pth"), "--data-root", str(root), "--split",
                           str(root / "splits/val.txt"), "--mode", "center_crop", "--save-predictions",
                           str(work / "preds"), "--device", "cpu"]


def save_dir_under_a_file(base: Path, work: Path):
    (work / "file").write_text("not a folder")
    main, argv = natural_train(base / "voc", work)
    return main, [*argv[:argv.index("--save-dir") + 1], str(work / "file" / "run"), *argv[argv.index("--save-dir") + 2:]]


def pascal_config_without_pretrained_file(base: Path, work: Path):
    from tasks.natural import train

    return train.main, ["--config", str(REPO / "configs/natural/pascal.yaml"), "--data-root", str(base / "voc"),
                        "--save-dir", str(work / "run"), "--no-progress", "--device", "cpu",
                        f"pretrained={work / 'pretrained/resnet101.pth'}"]


def labelled_set_smaller_than_batch(base: Path, work: Path):
    root = copy(base, "voc", work)
    main, argv = natural_train(root, work, "--method", "supervised")
    at = argv.index("--unlabeled-split")
    del argv[at:at + 2]   # no unlabelled list: the root holds no unlabeled.txt
    argv[argv.index("--batch-size") + 1] = "16"
    return main, argv


def config_file(text: str):
    """Training with ``--config`` a file holding ``text``."""
    def run(base: Path, work: Path):
        (work / "config.yaml").write_text(text)
        return natural_train(base / "voc", work, "--config", str(work / "config.yaml"))
    return run


def natural_train_with(*extra: str):
    """Training on the clean set with ``extra`` flags or ``KEY=VALUE`` overrides appended."""
    def run(base: Path, work: Path):
        return natural_train(base / "voc", work, *extra)
    return run


def without_cuda(make: Callable[[Path, Path], tuple[Callable, list[str]]]):
    """``make``'s command run as on a machine without a GPU, whichever machine writes the document."""
    def run(base: Path, work: Path):
        main, argv = make(base, work)

        def main_without_cuda(args):
            with mock.patch("torch.cuda.is_available", return_value=False):
                return main(args)
        return main_without_cuda, argv
    return run


def natural_evaluate_on(device: str):
    def run(base: Path, work: Path):
        from tasks.natural import evaluate

        return evaluate.main, ["--checkpoint", str(base / "natural.pth"), "--data-root", str(base / "voc"),
                               "--device", device]
    return run


def natural_splits_changed(change: Callable[[Path], None], *extra: str, save_dir: str = "run"):
    """Training with the split lists of ``splits/`` after ``change(splits folder)``."""
    def run(base: Path, work: Path):
        root = copy(base, "voc", work)
        change(root / "splits")
        main, argv = natural_train(root, work, *extra)
        argv[argv.index("--save-dir") + 1] = str(work / save_dir)
        return main, argv
    return run


FOLDER_PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def own_images_train(bad_mask: np.ndarray):
    """Training on a folder of your own images (README, "Your own images": images/ + masks/, 3 classes)
    whose first labelled mask is ``bad_mask``: (H, W) class ids, or (H, W, 3) colours of ``FOLDER_PALETTE``."""
    def run(base: Path, work: Path):
        from tasks.natural import train
        from tasks.natural.make_splits import make_splits

        root = work / "my_images"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        colours = bad_mask.ndim == 3
        for index in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"images/p{index}.jpg")
            if index < 6:
                ids = np.zeros((40, 40), np.uint8)
                ids[10:30, 5:20], ids[5:15, 25:35] = 1, 2
                Image.fromarray(np.asarray(FOLDER_PALETTE, np.uint8)[ids] if colours else ids).save(
                    root / f"masks/p{index}.png")
        make_splits("folder", root, 2, 0, root, val=2)
        labelled = first_line(root / "labeled.txt")
        Image.fromarray(bad_mask).save(root / f"masks/{Path(labelled).stem}.png")
        palette = ["palette=" + str(FOLDER_PALETTE).replace(" ", "")] if colours else []
        return train.main, ["--config", str(REPO / "configs/natural/folder.yaml"), "--data-root", str(root),
                            "--save-dir", str(work / "run"), "--epochs", "1", "--batch-size", "2",
                            "--num-workers", "0", "--no-progress", "--device", "cpu", *TINY_2D, *palette]
    return run


def mask_drawn_in(colour: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[10:30, 5:20] = FOLDER_PALETTE[1]
    mask[2:4, 2:4] = colour
    return mask


def append_line(target: str, source: str):
    def change(splits: Path) -> None:
        with open(splits / target, "a") as handle:
            handle.write((splits / source).read_text().splitlines()[0] + "\n")
    return change


def natural_evaluate_bom_split(base: Path, work: Path):
    from tasks.natural import evaluate

    listing = work / "val.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + (base / "voc/splits/val.txt").read_bytes().replace(b"\n", b"\r\n"))
    return evaluate.main, ["--checkpoint", str(base / "natural.pth"), "--data-root", str(base / "voc"),
                           "--split", str(listing), "--device", "cpu"]


def natural_predict_on(device: str):
    def run(base: Path, work: Path):
        return natural_predict(base, photos(base, work, 1), work / "masks", "--device", device)
    return run


# ----------------------------------------------------------------------------- change detection

def cd_train(root: Path, work: Path, workers: int = 0) -> tuple[Callable, list[str]]:
    from tasks.change_detection import train

    return train.main, ["--data-root", str(root), "--labeled-split", "splits/20%/labeled.txt",
                        "--unlabeled-split", "splits/20%/unlabeled.txt", "--save-dir", str(work / "run"),
                        "--epochs", "1", "--batch-size", "2", "--num-workers", str(workers), "--no-progress",
                        "--device", "cpu", *TINY_2D]


def cd_bad_file(change: Callable[[Path, str], None], workers: int = 0):
    def run(base: Path, work: Path):
        root = copy(base, "cd", work)
        change(root, first_line(root / "splits/20%/labeled.txt"))
        return cd_train(root, work, workers)
    return run


def cd_evaluate_with_a_bad_last_tile(base: Path, work: Path):
    from tasks.change_detection import evaluate

    root = copy(base, "cd", work)
    names = [line.strip() for line in (root / "splits/val.txt").read_text().splitlines() if line.strip()]
    truncate(root / "B" / names[-1])
    return evaluate.main, ["--checkpoint", str(base / "change_detection.pth"), "--data-root", str(root),
                           "--save-predictions", str(work / "preds"), "--device", "cpu"]


def write_tif(path: Path, data: np.ndarray, **profile) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, **profile) as dst:
        dst.write(data)
    return path


def cd_truncated_geotiff_tile(base: Path, work: Path):
    """A GeoTIFF tile set (A/, B/, label/ of .tif) whose first labelled A tile lost its last fifth."""
    root = work / "tifs"
    rng = np.random.default_rng(0)
    names = [f"t{i}.tif" for i in range(6)]
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True)
    for name in names:
        write_tif(root / "A" / name, rng.integers(0, 256, (3, 96, 48), dtype=np.uint8))
        write_tif(root / "B" / name, rng.integers(0, 256, (3, 96, 48), dtype=np.uint8))
        write_tif(root / "label" / name, (rng.random((1, 96, 48)) < 0.1).astype(np.uint8) * 255)
    (root / "splits").mkdir()
    for kind, chosen in (("labeled", names[:2]), ("unlabeled", names[2:5]), ("val", names[5:])):
        (root / "splits" / f"{kind}.txt").write_text("".join(f"{name}\n" for name in chosen))
    data = (root / "A" / names[0]).read_bytes()
    (root / "A" / names[0]).write_bytes(data[: int(len(data) * 0.8)])
    main, argv = cd_train(root, work)
    argv[argv.index("--labeled-split") + 1] = "splits/labeled.txt"
    argv[argv.index("--unlabeled-split") + 1] = "splits/unlabeled.txt"
    return main, argv


def cd_split_folders(work: Path) -> Path:
    """The split-folders layout (``ROOT/{train,val}/{A,B,label}``, 0/255 labels): 6 train and 2 val pairs."""
    rng = np.random.default_rng(0)
    root = work / "pairs"
    for split, count in (("train", 6), ("val", 2)):
        for folder in ("A", "B", "label"):
            (root / split / folder).mkdir(parents=True)
        for i in range(count):
            for folder in ("A", "B"):
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / split / folder / f"{i}.png")
            Image.fromarray(((rng.random((48, 48)) < 0.1) * 255).astype(np.uint8)).save(root / split / "label" / f"{i}.png")
    return root


def cd_split_folders_label_7(base: Path, work: Path):
    """Training on the split-folders layout after make_splits, a labelled label holding 7."""
    from tasks.change_detection import make_splits

    root = cd_split_folders(work)
    with contextlib.redirect_stdout(io.StringIO()):
        make_splits.write_splits(root, 0.5, seed=0)
    entry = first_line(root / "splits/50%/labeled.txt")
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(root / "train/label" / entry.split("/", 1)[1])
    from unimatch.paths import config_path

    main, argv = cd_train(root, work)   # with the config the README names for this layout (no val list)
    return main, ["--config", str(config_path("change_detection", "levir.yaml")),
                  *[arg.replace("20%", "50%") for arg in argv]]


def cd_make_splits(argv: list[str]) -> None:
    """``python -m tasks.change_detection.make_splits``: its ``__main__`` exits with what ``main`` returns."""
    from tasks.change_detection import make_splits

    status = make_splits.main(argv)
    if status:
        sys.exit(status)


def cd_split_folders_a_without_b(base: Path, work: Path):
    root = cd_split_folders(work)
    (root / "train/B/3.png").unlink()
    return cd_make_splits, ["--data-root", str(root), "--fraction", "0.5"]


def cd_predict(base: Path, before: Path, after: Path, out: Path, *extra: str):
    from tasks.change_detection import predict

    return predict.main, ["--checkpoint", str(base / "change_detection.pth"), "--before", str(before), "--after",
                          str(after), "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def cd_scenes(work: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    return (write_tif(work / "2012.tif", rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)),
            write_tif(work / "2016.tif", rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)))


def cd_truncated_geotiff(base: Path, work: Path):
    before, after = cd_scenes(work)
    truncate(after)
    return cd_predict(base, before, after, work / "change.tif")


def cd_output_is_input(base: Path, work: Path):
    before, after = cd_scenes(work)
    return cd_predict(base, before, after, before, "--overwrite")


def cd_existing_output(base: Path, work: Path):
    before, after = cd_scenes(work)
    (work / "change.tif").write_bytes(b"an earlier result")
    return cd_predict(base, before, after, work / "change.tif")


def cd_scene_label_on_another_grid(base: Path, work: Path):
    """Training from scenes (``scenes``) whose label raster was rasterised at another size."""
    from tasks.change_detection import train

    before, after = cd_scenes(work)
    label = write_tif(work / "label.tif", np.zeros((1, 48, 48), np.uint8))
    return train.main, ["--save-dir", str(work / "run"), "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                        "--no-progress", "--device", "cpu", "scene_windows_per_epoch=4",
                        f"scenes=[{{before: {before}, after: {after}, label: {label}}}]", *TINY_2D]


# dark water in a scene with nodata=0: one band at 0, the others not, so the pixels are data
DARK_WATER = (slice(20, 28), slice(20, 28))
NODATA_BORDER = (slice(0, 4), slice(None))


def cd_dark_water(base: Path, work: Path):
    rng = np.random.default_rng(0)
    scenes = []
    for name in ("2012.tif", "2016.tif"):
        data = rng.integers(1, 256, (3, 64, 64), dtype=np.uint8)
        data[(slice(None), *DARK_WATER)] = np.array([0, 3, 4], np.uint8)[:, None, None]
        data[(slice(None), *NODATA_BORDER)] = 0
        scenes.append(write_tif(work / name, data, nodata=0))
    return cd_predict(base, *scenes, work / "change.tif")


def cd_two_products(base: Path, work: Path):
    rng = np.random.default_rng(0)
    before = write_tif(work / "2012.tif", rng.integers(0, 256, (3, 64, 64)).astype(np.uint8))
    after = write_tif(work / "2016.tif", rng.integers(0, 4000, (3, 64, 64)).astype(np.uint16))
    return cd_predict(base, before, after, work / "change.tif")


# ----------------------------------------------------------------------------- ACDC

def acdc_predict(base: Path, input_: Path, output: Path, *extra: str):
    from tasks.acdc import predict

    return predict.main, ["--checkpoint", str(base / "acdc.pth"), "--input", str(input_), "--output", str(output),
                          "--device", "cpu", *extra]


def acdc_image(base: Path) -> Path:
    return sorted(p for p in (base / "acdc").rglob("*_frame??.nii.gz"))[0]


def acdc_scan(work: Path, data: np.ndarray, name: str = "scan.nii.gz", spacing=(1.5, 1.5, 10.0),
              image_class=nib.Nifti1Image) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    nib.save(image_class(data, np.diag([*spacing, 1.0])), work / name)
    return work / name


def acdc_nan(base: Path, work: Path):
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)
    data[3, 4, 0] = np.nan
    return acdc_predict(base, acdc_scan(work / "scans", data), work / "seg")


def acdc_2d(base: Path, work: Path):
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)[:, :, 0]
    return acdc_predict(base, acdc_scan(work / "scans", data), work / "seg")


def acdc_nifti2_unset_qform(base: Path, work: Path):
    """A new nibabel image leaves its qform unset (code 0) and its sform "aligned" (code 2)."""
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)
    return acdc_predict(base, acdc_scan(work / "scans", data, image_class=nib.Nifti2Image), work / "seg")


def acdc_slices_first(base: Path, work: Path):
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)
    return acdc_predict(base, acdc_scan(work / "scans", np.moveaxis(data, 2, 0), spacing=(10.0, 1.5, 1.5)),
                        work / "seg")


def acdc_truncated(base: Path, work: Path):
    (work / "scans").mkdir()
    scan = shutil.copy(acdc_image(base), work / "scans" / "scan.nii.gz")
    truncate(Path(scan))
    return acdc_predict(base, work / "scans", work / "seg")


def acdc_zero_byte(base: Path, work: Path):
    (work / "scans").mkdir()
    (work / "scans" / "scan.nii.gz").write_bytes(b"")
    return acdc_predict(base, work / "scans", work / "seg")


def acdc_output_is_input(base: Path, work: Path):
    """A folder holding ``a.nii.gz`` and ``a_seg.nii.gz``: predicting into it would replace the second."""
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)
    acdc_scan(work / "scans", data, "a.nii.gz")
    acdc_scan(work / "scans", data, "a_seg.nii.gz")
    return acdc_predict(base, work / "scans", work / "scans", "--overwrite")


def acdc_existing_output(base: Path, work: Path):
    data = np.asarray(nib.load(acdc_image(base)).dataobj).astype(np.float32)
    scan = acdc_scan(work / "scans", data)
    (work / "seg").mkdir()
    (work / "seg" / "scan_seg.nii.gz").write_bytes(b"an earlier result")
    return acdc_predict(base, scan, work / "seg")


def acdc_train_with(pattern: str, change: Callable[[Path], None]):
    """Training on a copy of the phantom in which ``change`` spoilt every file matching ``pattern``."""
    def run(base: Path, work: Path):
        from tasks.acdc import train

        root = copy(base, "acdc", work)
        for path in root.rglob(pattern):
            change(path)
        return train.main, ["--data-root", str(root), "--cases", "1", "--save-dir", str(work / "run"), "--epochs", "1",
                            "--batch-size", "4", "--num-workers", "0", "--seed", "0", "--no-progress", "--device",
                            "cpu", *TINY_ACDC]
    return run


def msd_unnamed_label(base: Path, work: Path):
    """An MSD-layout copy of the phantom's frames whose dataset.json names 3 of the 4 label values."""
    from tasks.acdc import train

    root, training = work / "msd", []
    for image in sorted((base / "acdc").rglob("*_frame??.nii.gz")):
        for folder, source in (("imagesTr", image), ("labelsTr", image.with_name(image.name.replace(".nii", "_gt.nii")))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / folder / image.name)
        training.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{image.name}"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "training": training,
                                                   "labels": {"0": "background", "1": "RV", "2": "Myo"}}))
    return train.main, ["--data-root", str(root), "--cases", "1", "--save-dir", str(work / "run"), "--epochs", "1",
                        "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu", *TINY_ACDC]


def unknown_nested_key(base: Path, work: Path):
    from tasks.acdc import train

    return train.main, ["--data-root", str(base / "acdc"), "--cases", "1", "--save-dir", str(work / "run"),
                        "--no-progress", "--device", "cpu", "criterion.nme=OHEM", *TINY_ACDC]


def non_finite_loss(base: Path, work: Path):
    from tasks.acdc import train

    return train.main, ["--data-root", str(base / "acdc"), "--cases", "1", "--save-dir", str(work / "run"),
                        "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--seed", "0", "--no-progress",
                        "--device", "cpu", "lr=1e30", *TINY_ACDC]


# ----------------------------------------------------------------------------- every task

MARKER = "the-pickle-ran.txt"


class RunsCodeOnLoad:
    """A pickle payload that writes a file when it is unpickled: what a booby-trapped download does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('this code ran on load')",)


def booby_trapped(clean: Path, marker: Path, destination: Path, backbone_only: bool = False) -> Path:
    """Our natural checkpoint (or its backbone's weights, a ``pretrained:`` file), plus a payload
    that writes ``marker`` when the file is unpickled without ``weights_only``."""
    from unimatch.checkpoint import load_checkpoint

    state = load_checkpoint(clean / "natural.pth")
    if backbone_only:
        state = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    state["payload"] = RunsCodeOnLoad(marker)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, destination)
    return destination


def evaluate_booby_trapped(base: Path, work: Path):
    from tasks.natural import evaluate

    checkpoint = booby_trapped(base, work / MARKER, work / "downloaded.pth")
    return evaluate.main, ["--checkpoint", str(checkpoint), "--data-root", str(base / "voc"), "--device", "cpu"]


def predict_booby_trapped(base: Path, work: Path):
    checkpoint = booby_trapped(base, work / MARKER, work / "downloaded.pth")
    main, argv = natural_predict(base, photos(base, work, 1), work / "masks")
    argv[argv.index("--checkpoint") + 1] = str(checkpoint)
    return main, argv


def resume_booby_trapped(base: Path, work: Path):
    main, argv = natural_train(base / "voc", work)
    argv[argv.index("--save-dir") + 1] = str(work / "shared-run")
    booby_trapped(base, work / MARKER, work / "shared-run" / "latest.pth")
    return main, argv


def pretrained_booby_trapped(base: Path, work: Path):
    weights = booby_trapped(base, work / MARKER, work / "resnet.pth", backbone_only=True)
    main, argv = natural_train(base / "voc", work)
    return main, [*argv, f"pretrained={weights}"]


def busy_run_folder(base: Path, work: Path):
    """Another training holds the folder (here: this process holds its lock)."""
    from unimatch.run_folder import RunLock

    main, argv = natural_train(base / "voc", work)
    folder = work / "busy"
    argv[argv.index("--save-dir") + 1] = str(folder)
    folder.mkdir()
    lock = RunLock.acquire(folder)

    def second_training(arguments):
        try:
            return main(arguments)
        finally:
            lock.release()
    return second_training, argv


def checkpoint_write_fails(base: Path, work: Path):
    """Epoch 2 of a run whose next latest.pth does not fit (a file-size limit stands in for a full disk)."""
    import resource

    main, argv = natural_train(base / "voc", work)
    folder = work / "full"
    argv[argv.index("--save-dir") + 1] = str(folder)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(argv)
    limit = (folder / "latest.pth").stat().st_size - 1
    argv[argv.index("--epochs") + 1] = "2"

    def limited(arguments):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            return main(arguments)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    return limited, [*argv, "--resume-with-changes"]


@contextlib.contextmanager
def patched(owner, name: str, replacement: Callable[[Callable], Callable]):
    """``owner.name`` replaced by ``replacement(original)`` for the duration of the block."""
    original = getattr(owner, name)
    setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def signal_in_training(signum: int):
    """The signal arrives in epoch 2 after 1 iteration, once epoch 1's checkpoint is saved."""
    def run(base: Path, work: Path):
        from unimatch.engine import Trainer

        main, argv = natural_train(base / "voc", work)
        argv[argv.index("--save-dir") + 1] = str(work / "signalled")
        argv[argv.index("--epochs") + 1] = "3"

        def signalling(original):
            def step(self, *args, **kwargs):
                if self.position[:2] == (1, 1):
                    signal.raise_signal(signum)
                return original(self, *args, **kwargs)
            return step

        def signalled(arguments):
            with patched(Trainer, "train_iteration", signalling):
                return main(arguments)
        return signalled, argv
    return run


def signal_in_predict(base: Path, work: Path):
    """Ctrl-C while the second of three masks is written."""
    main, argv = natural_predict(base, photos(base, work, 3), work / "masks")
    saves = []

    def signalling(original):
        def save(self, *args, **kwargs):
            saves.append(args)
            if len(saves) == 2:
                signal.raise_signal(signal.SIGINT)
            return original(self, *args, **kwargs)
        return save

    def interrupted(arguments):
        with patched(Image.Image, "save", signalling):
            return main(arguments)
    return interrupted, argv


CASES = [
    Case("natural", "truncated JPEG image (training, in a DataLoader worker)",
         natural_bad_file(lambda root, sample: truncate(root / f"JPEGImages/{sample}.jpg"), workers=1)),
    Case("natural", "truncated PNG mask", natural_bad_file(lambda root, sample: truncate(
        root / f"SegmentationClass/{sample}.png"))),
    Case("natural", "zero-byte mask", natural_bad_file(lambda root, sample: (
        root / f"SegmentationClass/{sample}.png").write_bytes(b""))),
    Case("natural", "Pascal mask holding the value 200", natural_bad_file(mask_of_value(200))),
    Case("natural", "own images (`dataset: folder`, `palette`): an RGB mask drawing a colour that is no class's",
         own_images_train(mask_drawn_in((255, 255, 255)))),
    Case("natural", "own images (`dataset: folder`): a mask holding the value 3 with `nclass: 3`",
         own_images_train(np.full((40, 40), 3, np.uint8))),
    Case("natural", "mask of another size than its image", natural_bad_file(
        lambda root, sample: Image.fromarray(np.zeros((7, 9), np.uint8)).save(root / f"SegmentationClass/{sample}.png"))),
    Case("natural", "Cityscapes `*_gtFine_labelIds.png` named in the split file", cityscapes_train("_gtFine_labelIds.png")),
    Case("natural", "Cityscapes label ids saved as `*_gtFine_labelTrainIds.png`",
         cityscapes_train("_gtFine_labelTrainIds.png")),
    Case("natural", "labelled set smaller than one batch (`--method supervised`)", labelled_set_smaller_than_batch),
    Case("natural", "`--save-dir` under a regular file", save_dir_under_a_file),
    Case("natural", "`configs/natural/pascal.yaml` without its `pretrained/resnet101.pth` file",
         pascal_config_without_pretrained_file),
    Case("natural", "`predict` over a folder whose last JPEG is truncated (nothing is written)", predict_truncated_jpeg),
    Case("natural", "`predict --output` = the input folder holding `a.png`, with `--overwrite`", predict_into_inputs),
    Case("natural", "`predict` onto an existing mask without `--overwrite`", predict_existing_output),
    Case("natural", "16-bit grayscale PNG (accepted: scaled by 1/257)", predict_16_bit_png),
    Case("natural", "`evaluate --mode center_crop` with one image smaller than the crop (nothing is written)",
         evaluate_small_image_center_crop),
    Case("natural", "`--config` file with a YAML syntax error",
         config_file("nclass: 6\ncrop_size: 32\nlr: 0.04: 0.02\n")),
    Case("natural", "YAML error in an override (`dilations=[1,2`)", natural_train_with("dilations=[1,2")),
    Case("natural", "`--config` file holding only comments", config_file("# lr: 0.04\n# epochs: 30\n")),
    Case("natural", "negative learning rate (`lr=-1`)", natural_train_with("lr=-1")),
    Case("natural", "negative momentum (`momentum=-1`)", natural_train_with("momentum=-1")),
    Case("natural", "negative loader processes (`num_workers=-1`)", natural_train_with("num_workers=-1")),
    Case("natural", "`train --device cuda` on a machine without a GPU",
         without_cuda(natural_train_with("--device", "cuda"))),
    Case("natural", "`evaluate --device cuda` on a machine without a GPU", without_cuda(natural_evaluate_on("cuda"))),
    Case("natural", "`predict --device cuda` on a machine without a GPU", without_cuda(natural_predict_on("cuda"))),
    Case("natural", "unknown device (`train --device gpu`)", natural_train_with("--device", "gpu")),
    Case("natural", "split list saved with a UTF-8 BOM and CRLF line ends (`evaluate --split`; accepted)",
         natural_evaluate_bom_split),
    Case("natural", "a line listed twice in the labelled split", natural_splits_changed(
        append_line("labeled.txt", "labeled.txt"))),
    Case("natural", "a validation image also listed in the labelled split", natural_splits_changed(
        append_line("labeled.txt", "val.txt"))),
    Case("natural", "a labelled image also listed in the unlabelled split (allowed, with a warning line, only "
         "with `allow_labeled_in_unlabeled: true`)", natural_splits_changed(append_line("unlabeled.txt", "labeled.txt"))),
    Case("natural", "the same with `allow_labeled_in_unlabeled=true` (accepted: the warning line)",
         natural_splits_changed(append_line("unlabeled.txt", "labeled.txt"), "allow_labeled_in_unlabeled=true",
                                save_dir="allowed"), shows="also in"),
    Case("change_detection", "truncated PNG tile in `A/` (training, in a DataLoader worker)",
         cd_bad_file(lambda root, name: truncate(root / "A" / name), workers=1)),
    Case("change_detection", "zero-byte tile in `B/`", cd_bad_file(lambda root, name: (root / "B" / name).write_bytes(b""))),
    Case("change_detection", "label holding the value 7", cd_bad_file(
        lambda root, name: Image.fromarray(np.full((48, 48), 7, np.uint8)).save(root / "label" / name))),
    Case("change_detection", "A and B of different sizes", cd_bad_file(
        lambda root, name: Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(root / "B" / name))),
    Case("change_detection", "label of another size than its pair", cd_bad_file(
        lambda root, name: Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "label" / name))),
    Case("change_detection", "grayscale A", cd_bad_file(
        lambda root, name: Image.open(root / "A" / name).convert("L").save(root / "A" / name))),
    Case("change_detection", "truncated GeoTIFF tile (training)", cd_truncated_geotiff_tile),
    Case("change_detection", "split-folders layout (`train/`, `val/`): a label holding the value 7 (training)",
         cd_split_folders_label_7),
    Case("change_detection", "split-folders layout: a `train/A/` tile without its `train/B/` tile (`make_splits`)",
         cd_split_folders_a_without_b),
    Case("change_detection", "`evaluate --save-predictions` with the last tile truncated (nothing is written)",
         cd_evaluate_with_a_bad_last_tile),
    Case("change_detection", "`predict` with a truncated GeoTIFF (nothing is written)", cd_truncated_geotiff),
    Case("change_detection", "`predict --out` = `--before`, with `--overwrite`", cd_output_is_input),
    Case("change_detection", "`predict` onto an existing file without `--overwrite`", cd_existing_output),
    Case("change_detection", "`predict` on scenes with nodata 0 holding dark water `[0, 3, 4]` (accepted: only "
         "pixels with every band 0 are no data)", cd_dark_water),
    Case("change_detection", "`predict` with an 8-bit `--before` and a 16-bit `--after` under one `--stretch`",
         cd_two_products),
    Case("change_detection", "training from scenes (`scenes: [{before, after, label}]`) with a label raster on "
         "another grid than the images", cd_scene_label_on_another_grid),
    Case("acdc", "NIfTI holding NaN", acdc_nan),
    Case("acdc", "2-D NIfTI (one slice; accepted, 1 mm slice thickness)", acdc_2d),
    Case("acdc", "truncated `.nii.gz`", acdc_truncated),
    Case("acdc", "zero-byte `.nii.gz`", acdc_zero_byte),
    Case("acdc", "`predict --output` = the input folder holding `a.nii.gz` and `a_seg.nii.gz`, with `--overwrite`",
         acdc_output_is_input),
    Case("acdc", "`predict` onto an existing label map without `--overwrite`", acdc_existing_output),
    Case("acdc", "truncated `.nii.gz` images in the training data", acdc_train_with("*_frame??.nii.gz", truncate)),
    Case("acdc", "zero-byte ground truth `*_gt.nii.gz` in the training data", acdc_train_with(
        "*_gt.nii.gz", lambda label: label.write_bytes(b""))),
    Case("acdc", "unknown nested config key `criterion.nme=OHEM`", unknown_nested_key),
    Case("acdc", "loss becoming NaN/Inf (`lr=1e30`)", non_finite_loss),
    Case("acdc", "NIfTI-2 input with qform_code 0 (written back as NIfTI-2 with its codes kept)",
         acdc_nifti2_unset_qform),
    Case("acdc", "NIfTI stored slices-first (axis 0 through-plane)", acdc_slices_first),
    Case("acdc", "MSD / nnU-Net layout: a label value that `dataset.json` does not name", msd_unnamed_label),
    Case("any", "`evaluate` with a downloaded checkpoint whose pickle runs code when loaded (the code never runs)",
         evaluate_booby_trapped),
    Case("any", "`predict` with that checkpoint", predict_booby_trapped),
    Case("any", "resuming a run folder whose `latest.pth` is such a file", resume_booby_trapped),
    Case("any", "a `pretrained:` weights file that is such a file", pretrained_booby_trapped),
    Case("any", "a second training into a run folder another training is writing", busy_run_folder),
    Case("any", "a checkpoint that does not fit on the disk (here a file-size limit; the previous one stays)",
         checkpoint_write_fails),
    Case("any", "SIGTERM (a scheduler's pre-emption) during training", signal_in_training(signal.SIGTERM)),
    Case("any", "Ctrl-C (SIGINT) during training", signal_in_training(signal.SIGINT)),
    Case("any", "Ctrl-C (SIGINT) during `predict` (the masks written so far are whole)", signal_in_predict),
]


# ----------------------------------------------------------------------------- running and rendering

def outcome(case: Case, base: Path, work: Path) -> tuple[str, int]:
    """(what the user reads, exit status) of ``case``: the ``error:`` line, or the last line printed
    when the command succeeds; temporary paths read ``<tmp>``, files of the repository their path in it."""
    from unimatch.cli import exit_on_user_error

    main, argv = case.run(base, work)
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["unimatch", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exit_on_user_error(main)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    finally:
        sys.argv = saved
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
    printed = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in out.getvalue().splitlines()
               if line.strip() and case.shows in line]
    line = errors[-1] if errors else (printed[-1] if printed else "")
    for folder in sorted({str(base), str(base.resolve()), str(work), str(work.resolve())}, key=len, reverse=True):
        line = line.replace(folder, "<tmp>")
    return normalise(line.replace(f"{REPO}/", "")), status   # the repository's files by their path in it


def normalise(line: str) -> str:
    """What differs between machines and runs: this process and host, a start time, free disk space."""
    import os
    import socket

    line = line.replace(f"process {os.getpid()} on host {socket.gethostname()}", "process <pid> on host <host>")
    line = re.sub(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "started <time>", line)
    return re.sub(r"[\d.]+ MB free there", "<n> MB free there", line)


def row(case: Case, line: str, status: int) -> str:
    return f"| {case.title} | `{line.replace('|', '&#124;')}` | {status} |"


HEADER = """# What a user sees when an input is bad

Every row was produced by running the real entry point (`python -m tasks.<task>.train`, `evaluate`
or `predict`) on a real bad file written by `tests/reliability_doc.py`; temporary folders read
`<tmp>`, the repository's files their path in it. `tests/test_reliability.py` fails when a
message changes and this file does not. Regenerate it with

```bash
python -m tests.reliability_doc
```

A user error is one `error:` line and exit status 2; training that fails before its first
checkpoint leaves no run files behind (`config.yaml`, `train.log`, `metrics.jsonl`,
`tensorboard/`, `split.json`; the folder too when the run created it); `predict` and
`evaluate --save-predictions` check every input before they write their first output; an output
that is one of the inputs is refused even with `--overwrite`. Checkpoints are read with
`weights_only=True`; every file a later command reads is written atomically (a temporary file in
the same folder, fsynced and renamed), so a killed run leaves no half-written file, and the next
run in its folder takes over its lock and removes the temporary files it left
(`tests/test_interruptions.py`).
"""


def render(results: list[tuple[Case, str, int]]) -> str:
    parts = [HEADER]
    for task, title in TASKS.items():
        parts.append(f"\n## {title}\n\n| bad input | what the user sees | exit status |\n|---|---|---|\n")
        parts.extend(row(case, line, status) + "\n" for case, line, status in results if case.task == task)
    return "".join(parts)


def main() -> None:
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNIMATCH_DATA_HOME"] = str(Path(tmp) / "cache")
        base = Path(tmp) / "clean"
        build_clean_data(base)
        results = []
        for index, case in enumerate(CASES):
            work = Path(tmp) / f"case{index}"
            work.mkdir()
            results.append((case, *outcome(case, base, work)))
    DOC.write_text(render(results))
    print(f"wrote {DOC} ({len(results)} cases)")


if __name__ == "__main__":
    main()
