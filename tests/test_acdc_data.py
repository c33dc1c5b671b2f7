"""ACDC readers, splits, NIfTI output and the synthetic phantom, on small files written here."""
import gzip
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import add_nan_patch
from tasks.acdc import data as acdc
from tasks.acdc import readers
from tasks.acdc.nifti_io import list_nifti_files, read_nifti_volume, to_nibabel, write_label_nifti
from tasks.acdc.splits import (LITERATURE_LABELED_ORDER, LITERATURE_TEST, LITERATURE_VAL, make_patient_split,
                               read_split_list, split_from_lists)
from tasks.acdc.synthetic import ensure_synthetic_acdc
from unimatch.errors import DataError

TINY = dict(n_patients=8, image_size=32, n_slices=(3, 4), seed=3)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return ensure_synthetic_acdc(tmp_path_factory.mktemp("phantom") / "acdc", **TINY)


@pytest.fixture()
def phantom_copy(phantom, tmp_path) -> Path:
    return Path(shutil.copytree(phantom, tmp_path / "acdc"))


def _affine(spacing_xyz=(1.5, 1.4, 10.0)):
    affine = np.diag(list(spacing_xyz) + [1.0])
    affine[:3, :3] = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]
    affine[:3, 3] = (-90.0, 30.0, 12.5)
    return affine


def _write_nifti(path, array_xyz, affine=None, dtype=np.int16):
    image = nib.Nifti1Image(np.asarray(array_xyz, dtype=dtype), _affine() if affine is None else affine)
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    nib.save(image, str(path))
    return image


def _patient_dir(phantom_root, patient):
    return phantom_root / "training" / patient


# ----------------------------------------------------------------------------- synthetic phantom

def test_synthetic_phantom_is_written_in_the_raw_acdc_layout(phantom):
    patients = sorted(p.name for p in (phantom / "training").iterdir())
    assert patients == [f"patient{i:03d}" for i in range(1, 9)]
    assert not [p for p in phantom.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    for patient in patients:
        info = readers.read_info_cfg(_patient_dir(phantom, patient) / "Info.cfg")
        assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
        assert info["Group"] in {"NOR", "MINF", "DCM", "HCM", "RV"}
        lv_voxels = {}
        for phase in ("ED", "ES"):
            stem = f"{patient}_frame{int(info[phase]):02d}"
            image = nib.load(str(_patient_dir(phantom, patient) / f"{stem}.nii.gz"))
            truth = nib.load(str(_patient_dir(phantom, patient) / f"{stem}_gt.nii.gz"))
            assert image.get_data_dtype() == np.int16 and truth.get_data_dtype() == np.uint8
            assert image.shape == truth.shape and np.allclose(image.affine, truth.affine)
            assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
            assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))  # oblique
            x, y, z = image.header.get_zooms()
            assert 1.3 <= x == y <= 1.75 and 6.0 <= z <= 10.0
            assert image.shape[0] == 32 and 3 <= image.shape[2] <= 4
            labels = np.asarray(truth.dataobj)
            assert set(np.unique(labels)) <= {0, 1, 2, 3}
            lv_voxels[phase] = int((labels == 3).sum())
            if phase == "ED":
                assert {1, 2, 3} <= set(np.unique(labels))
        assert lv_voxels["ES"] < lv_voxels["ED"]


def test_synthetic_background_holds_bright_structures(phantom):
    """A threshold keeping 75% of the LV cavity also keeps much background (vessels, fat)."""
    bright_background = lv_voxels = 0
    for frames in readers.list_raw_cases(phantom).values():
        volume, label, _, _ = readers.load_raw_case(frames[0], with_label=True)
        threshold = np.percentile(volume[label == 3], 25)
        bright_background += np.count_nonzero((label == 0) & (volume >= threshold))
        lv_voxels += np.count_nonzero(label == 3)
    assert bright_background > 0.3 * lv_voxels


def test_synthetic_is_cached_deterministic_and_never_overwritten(phantom, tmp_path):
    image_file = next((phantom / "training" / "patient001").glob("*_frame01.nii.gz"))
    before = image_file.stat().st_mtime_ns
    assert ensure_synthetic_acdc(phantom, **TINY) == phantom
    assert image_file.stat().st_mtime_ns == before
    again = ensure_synthetic_acdc(tmp_path / "again", **TINY)
    for path in sorted((phantom / "training").rglob("*.nii.gz")):
        twin = again / path.relative_to(phantom)
        assert np.array_equal(np.asarray(nib.load(str(path)).dataobj), np.asarray(nib.load(str(twin)).dataobj))
    with pytest.raises(DataError, match="synthetic.json"):
        ensure_synthetic_acdc(phantom, **{**TINY, "seed": 4})


def test_synthetic_default_root_is_under_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIMATCH_DATA_HOME", str(tmp_path / "home"))
    root = ensure_synthetic_acdc(n_patients=3, image_size=16, n_slices=(2, 2))
    assert root.parent == tmp_path / "home" / "acdc" and root.name.startswith("synthetic-v2")
    assert (root / "training" / "patient003" / "Info.cfg").is_file()


# ----------------------------------------------------------------------------- NIfTI readers and writer

def test_nifti_reader_returns_slices_first_with_spacing(tmp_path):
    array_xyz = np.arange(5 * 6 * 3).reshape(5, 6, 3)
    _write_nifti(tmp_path / "v.nii.gz", array_xyz)
    volume = read_nifti_volume(tmp_path / "v.nii.gz")
    assert volume.data.shape == (3, 6, 5) and volume.data.dtype == np.float32
    assert np.array_equal(volume.data, np.transpose(array_xyz, (2, 1, 0)))
    assert volume.spacing == pytest.approx((10.0, 1.4, 1.5))


def test_a_2d_nifti_is_one_slice_with_unit_slice_thickness(tmp_path):
    """A single-slice file (2-D array, two zooms) reads as one slice instead of failing on the missing z zoom."""
    array_xy = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    image = nib.Nifti1Image(array_xy, np.diag([1.5, 1.4, 1.0, 1.0]))
    nib.save(image, tmp_path / "slice.nii.gz")
    volume = read_nifti_volume(tmp_path / "slice.nii.gz")
    assert volume.data.shape == (1, 6, 5)
    assert np.array_equal(volume.data[0], array_xy.T)
    assert volume.spacing == pytest.approx((1.0, 1.4, 1.5))


def test_label_nifti_round_trip_keeps_grid_codes_and_values(tmp_path):
    _write_nifti(tmp_path / "img.nii.gz", np.zeros((5, 6, 3)), dtype=np.float32)
    reference = nib.load(str(tmp_path / "img.nii.gz"))
    label = np.random.default_rng(0).integers(0, 4, size=(3, 6, 5))
    out = write_label_nifti(label, reference, tmp_path / "out" / "pred.nii.gz")
    written = nib.load(str(out))
    assert written.shape == reference.shape and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, reference.affine)
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(written.dataobj), to_nibabel(label))
    assert np.array_equal(read_nifti_volume(out).data, label)
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_label_nifti(np.zeros_like(label), reference, out)
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj), to_nibabel(label))
    write_label_nifti(np.zeros_like(label), reference, out, overwrite=True)
    assert not np.asarray(nib.load(str(out)).dataobj).any()
    with pytest.raises(DataError, match="does not match"):
        write_label_nifti(label[:2], reference, tmp_path / "other.nii.gz")
    assert not (tmp_path / "other.nii.gz").exists()


def test_predict_reader_refuses_4d_without_a_frame(tmp_path):
    _write_nifti(tmp_path / "cine_4d.nii.gz", np.random.default_rng(0).integers(0, 100, size=(4, 5, 3, 6)))
    with pytest.raises(DataError, match="--frame N") as error:
        read_nifti_volume(tmp_path / "cine_4d.nii.gz")
    assert "cine_4d.nii.gz" in str(error.value)
    assert read_nifti_volume(tmp_path / "cine_4d.nii.gz", frame=2).data.shape == (3, 5, 4)
    with pytest.raises(DataError, match="out of range"):
        read_nifti_volume(tmp_path / "cine_4d.nii.gz", frame=6)


def test_truncated_or_foreign_nifti_is_a_data_error_naming_the_file(tmp_path):
    _write_nifti(tmp_path / "full.nii.gz", np.ones((16, 16, 4)))
    raw = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header at all"))
    (tmp_path / "plain.nii.gz").write_bytes(b"not even gzip")
    for name in ("cut.nii.gz", "text.nii.gz", "plain.nii.gz"):
        with pytest.raises(DataError, match=name):
            read_nifti_volume(tmp_path / name)


def test_nifti_folder_listing_skips_ground_truth_and_cine(tmp_path):
    for name in ("b.nii.gz", "a.nii", "a_gt.nii.gz", "x_4d.nii.gz"):
        _write_nifti(tmp_path / name, np.zeros((4, 4, 2)))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_nifti_files(tmp_path)] == ["a.nii", "b.nii.gz"]
    with pytest.raises(DataError, match="notes.txt"):
        list_nifti_files(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        list_nifti_files(tmp_path / "empty")


# ----------------------------------------------------------------------------- raw layout: bad input

def _frames(root, patient):
    info = readers.read_info_cfg(_patient_dir(root, patient) / "Info.cfg")
    return [f"{patient}_frame{int(info[p]):02d}" for p in ("ED", "ES")]


def test_info_cfg_without_es_is_a_data_error(phantom_copy):
    cfg = _patient_dir(phantom_copy, "patient002") / "Info.cfg"
    cfg.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith("ES")))
    with pytest.raises(DataError, match=r"patient002/Info.cfg.*ES"):
        acdc.build_acdc_datasets(phantom_copy, cases=1, slice_size=32)


def test_info_cfg_pointing_to_a_missing_frame_is_a_data_error(phantom_copy):
    cfg = _patient_dir(phantom_copy, "patient002") / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("ED: 1", "ED: 7"))
    with pytest.raises(DataError, match=r"Info.cfg: ED: 7 points to patient002_frame07.nii.gz"):
        readers.list_raw_cases(phantom_copy)


def _first_case(root, patient="patient001"):
    return readers.list_raw_cases(root, [patient])[patient][0]


def test_image_and_ground_truth_of_different_shapes(phantom_copy):
    case = _first_case(phantom_copy)
    truth = nib.load(str(case.label_path))
    cropped = np.asarray(truth.dataobj)[:-2]
    _write_nifti(case.label_path, cropped, affine=truth.affine, dtype=np.uint8)
    with pytest.raises(DataError, match=case.label_path.name + ".*shape"):
        readers.load_raw_case(case, with_label=True)


def test_image_and_ground_truth_on_different_grids(phantom_copy):
    case = _first_case(phantom_copy)
    truth = nib.load(str(case.label_path))
    moved = truth.affine.copy()
    moved[:3, 3] += 5.0
    _write_nifti(case.label_path, np.asarray(truth.dataobj), affine=moved, dtype=np.uint8)
    with pytest.raises(DataError, match=case.label_path.name + ".*affine"):
        readers.load_raw_case(case, with_label=True)


def test_labels_outside_0_to_3(phantom_copy):
    case = _first_case(phantom_copy)
    truth = nib.load(str(case.label_path))
    labels = np.asarray(truth.dataobj).copy()
    labels[0, 0, 0] = 4
    _write_nifti(case.label_path, labels, affine=truth.affine, dtype=np.uint8)
    with pytest.raises(DataError, match=case.label_path.name + r".*\[4\]"):
        readers.load_raw_case(case, with_label=True)


def test_truncated_training_image_names_the_file(phantom_copy):
    case = _first_case(phantom_copy)
    raw = case.image_path.read_bytes()
    case.image_path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match=case.image_path.name):
        readers.load_raw_case(case, with_label=True)


# ----------------------------------------------------------------------------- datasets from the raw layout

def test_raw_datasets_follow_the_data_contract(phantom):
    torch.manual_seed(0)
    sets = acdc.build_acdc_datasets(phantom, cases=2, slice_size=24, seed=1)
    split = sets.split
    assert len(split.labeled) == 2 and sets.layout == "raw"
    n_slices_l = sum(nib.load(str(_patient_dir(phantom, p) / f"{f}.nii.gz")).shape[2]
                     for p in split.labeled for f in _frames(phantom, p))
    assert len(sets.train_l) == n_slices_l  # not repeated here: the engine repeats the labelled set
    image, mask = sets.train_l[0]
    assert image.shape == (1, 24, 24) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.shape == (24, 24) and mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1, 2, 3}
    image_u, ignore = sets.train_u[0]
    assert image_u.shape == (1, 24, 24) and image_u.dtype == torch.float32
    assert ignore.dtype == torch.int64 and ignore.shape == (24, 24) and not ignore.any()
    volume, label, case_id, spacing = sets.val[0]
    assert volume.dtype == torch.float32 and label.dtype == torch.int64 and volume.shape == label.shape
    assert volume.ndim == 3 and volume.shape[1:] == (volume.shape[1], 32)
    assert case_id.split("_frame")[0] in split.val and len(spacing) == 3 and spacing[0] >= 6.0
    assert {item[2] for item in sets.val} == {f for p in split.val for f in _frames(phantom, p)}
    assert len(sets.test) == 2 * len(split.test)
    n_slices_u = sum(nib.load(str(_patient_dir(phantom, p) / f"{f}.nii.gz")).shape[2]
                     for p in split.unlabeled for f in _frames(phantom, p))
    assert len(sets.train_u) == n_slices_u


def test_unlabelled_set_never_opens_ground_truth(phantom_copy):
    split = acdc.build_acdc_datasets(phantom_copy, cases=1, slice_size=16).split
    for patient in split.unlabeled:
        for gt in _patient_dir(phantom_copy, patient).glob("*_gt.nii.gz"):
            gt.unlink()
    sets = acdc.build_acdc_datasets(phantom_copy, cases=1, slice_size=16)
    assert sets.split == split
    assert all(sets.train_u[i][0].shape == (1, 16, 16) for i in range(len(sets.train_u)))
    with pytest.raises(DataError, match="_gt.nii.gz"):  # a labelled use of the same patient needs it
        readers.load_raw_case(readers.list_raw_cases(phantom_copy, [split.unlabeled[0]])[split.unlabeled[0]][0], True)


def _one_slice_dataset(length):
    image = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    return acdc.LabeledSlices([(image, np.zeros((20, 30), dtype=np.int64))] * length, slice_size=16)


def test_augmentation_is_reproducible_after_reseed():
    dataset = _one_slice_dataset(8)
    dataset.reseed(5)
    first = [dataset[i][0] for i in range(8)]
    dataset.reseed(5)
    second = [dataset[i][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({a.numpy().tobytes() for a in first}) > 1
    dataset.reseed(6)
    assert any(not torch.equal(a, dataset[i][0]) for i, a in enumerate(first))


def test_workers_that_were_not_reseeded_do_not_repeat_each_other():
    dataset = _one_slice_dataset(12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    views = [image[0].numpy().tobytes() for image, _ in loader]
    worker0, worker1 = views[0::2], views[1::2]  # the loader alternates between the two workers
    assert worker0 != worker1


def test_weak_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 56), dtype=np.int64)
    mask[5:20, 8:30] = 1
    mask[22:35, 30:50] = 2
    mask[10:14, 40:52] = 3
    image = mask.astype(np.float32) / 3.0  # the image encodes its own label
    seen = set()
    for _ in range(40):
        out_image, out_mask = acdc.weak_augment(image, mask, 32, rng)
        assert out_image.shape == out_mask.shape == (32, 32)
        assert np.array_equal(np.rint(out_image * 3).astype(np.int64), out_mask)
        seen.add(out_mask.tobytes())
    assert len(seen) > 5
    # a rotation by a non-multiple of 90 degrees happened: some corner pixels became fill
    rotated = [acdc.weak_augment(np.ones((32, 32), np.float32), np.ones((32, 32), np.int64), 32, rng)[1]
               for _ in range(40)]
    assert any(m[0, 0] == 0 for m in rotated)


def test_percentile_normalisation_resists_hot_voxels():
    volume = np.random.default_rng(0).normal(100, 10, size=(4, 20, 20))
    volume[0, 0, 0] = 1e5
    minmax = readers.normalize_intensity(volume, "minmax")
    robust = readers.normalize_intensity(volume, "percentile")
    assert minmax.dtype == robust.dtype == np.float32
    assert 0.0 <= robust.min() and robust.max() <= 1.0
    assert np.std(robust.ravel()[1:]) > 10 * np.std(minmax.ravel()[1:])
    with pytest.raises(DataError, match="normalisation"):
        readers.normalize_intensity(volume, "zscore")


# ----------------------------------------------------------------------------- splits

def test_literature_partition_of_real_acdc():
    patients = [f"patient{i:03d}" for i in range(1, 101)]
    val = ["patient002", "patient019", "patient028", "patient030", "patient039", "patient045", "patient078",
           "patient082", "patient085", "patient087"]
    test = ["patient001", "patient007", "patient008", "patient011", "patient013", "patient022", "patient024",
            "patient033", "patient052", "patient059", "patient064", "patient065", "patient066", "patient068",
            "patient075", "patient080", "patient081", "patient083", "patient084", "patient093"]
    assert list(LITERATURE_VAL) == val and list(LITERATURE_TEST) == test
    expected_labeled = {1: ["patient099"], 3: ["patient099", "patient038", "patient050"],
                        7: ["patient099", "patient038", "patient050", "patient021", "patient049", "patient058",
                            "patient100"]}
    for cases, labeled in expected_labeled.items():
        split = make_patient_split(patients, cases, seed=123)
        assert list(split.labeled) == labeled
        assert list(split.val) == val and list(split.test) == test
        assert len(split.unlabeled) == 70 - cases
        everyone = split.labeled + split.unlabeled + split.val + split.test
        assert sorted(everyone) == patients and len(set(everyone)) == 100
    ten = make_patient_split(patients, 10, seed=0).labeled
    assert list(ten[:7]) == list(LITERATURE_LABELED_ORDER)
    with pytest.raises(DataError, match="cases=71"):
        make_patient_split(patients, 71)


def test_seeded_partition_for_other_patient_sets():
    patients = [f"patient{i:03d}" for i in range(1, 21)]
    a = make_patient_split(patients, 3, seed=0)
    assert a == make_patient_split(patients, 3, seed=0)
    assert a != make_patient_split(patients, 3, seed=1)
    assert (len(a.val), len(a.test), len(a.labeled), len(a.unlabeled)) == (2, 4, 3, 11)
    assert sorted(a.labeled + a.unlabeled + a.val + a.test) == patients
    bigger = make_patient_split(patients, 5, seed=0)
    assert set(a.labeled) < set(bigger.labeled) and bigger.val == a.val and bigger.test == a.test
    with pytest.raises(DataError, match="14 training patients"):
        make_patient_split(patients, 15, seed=0)


def test_cases_larger_than_training_set_is_a_data_error(phantom):
    with pytest.raises(DataError, match="cases=99"):
        acdc.build_acdc_datasets(phantom, cases=99, slice_size=16)


def test_official_list_files_are_read_and_must_not_share_patients(tmp_path):
    (tmp_path / "labeled.txt").write_text("data/slices/patient099_frame01_slice_1.h5\n"
                                          "data/slices/patient099_frame02_slice_1.h5\n")
    (tmp_path / "unlabeled.txt").write_text("data/slices/patient020_frame01_slice_3.h5\n")
    (tmp_path / "val.txt").write_text("data/patient028_frame01.h5\ndata/patient028_frame02.h5\n\n")
    listed = split_from_lists(tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", tmp_path / "val.txt")
    assert listed.patients.labeled == ("patient099",) and listed.patients.val == ("patient028",)
    assert listed.val == ("data/patient028_frame01.h5", "data/patient028_frame02.h5")
    (tmp_path / "clash.txt").write_text("data/patient099_frame01.h5\n")
    with pytest.raises(DataError, match=r"labeled.txt and .*clash.txt both list patient099"):
        split_from_lists(tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", tmp_path / "clash.txt")
    (tmp_path / "bad.txt").write_text("data/patient028_frame01.h5\nimages/case 12.png\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2"):
        read_split_list(tmp_path / "bad.txt")


# ----------------------------------------------------------------------------- official h5 layout

def _write_h5(path, image, label=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file.create_dataset("image", data=image)
        if label is not None:
            file.create_dataset("label", data=label)


def _h5_layout(root, patients=(("patient001", 3), ("patient002", 2), ("patient003", 2))):
    rng = np.random.default_rng(0)
    for patient, depth in patients:
        for frame in (1, 2):
            image = rng.random((depth, 20, 24)).astype(np.float32)
            label = rng.integers(0, 4, size=(depth, 20, 24)).astype(np.uint8)
            _write_h5(root / "data" / f"{patient}_frame{frame:02d}.h5", image, label)
            for z in range(depth):
                _write_h5(root / "data" / "slices" / f"{patient}_frame{frame:02d}_slice_{z}.h5", image[z], label[z])
    return root


def test_h5_volume_and_slice_readers(tmp_path):
    root = _h5_layout(tmp_path)
    image, label = readers.read_h5(root / "data" / "patient001_frame01.h5", with_label=True, ndim=3)
    assert image.shape == label.shape == (3, 20, 24) and image.dtype == np.float32 and label.dtype == np.int64
    image, label = readers.read_h5(root / "data" / "slices" / "patient001_frame01_slice_2.h5", with_label=False, ndim=2)
    assert image.shape == (20, 24) and label is None
    _write_h5(root / "data" / "nolabel.h5", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DataError, match="nolabel.h5.*'label'"):
        readers.read_h5(root / "data" / "nolabel.h5", with_label=True, ndim=3)
    _write_h5(root / "data" / "mismatch.h5", np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(DataError, match="mismatch.h5.*differs"):
        readers.read_h5(root / "data" / "mismatch.h5", with_label=True, ndim=3)
    _write_h5(root / "data" / "badlabel.h5", np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), 9, np.uint8))
    with pytest.raises(DataError, match="badlabel.h5"):
        readers.read_h5(root / "data" / "badlabel.h5", with_label=True, ndim=3)
    (root / "data" / "junk.h5").write_bytes(b"\x89HDF truncated")
    with pytest.raises(DataError, match="junk.h5"):
        readers.read_h5(root / "data" / "junk.h5", with_label=True, ndim=3)


def test_h5_layout_with_official_lists(tmp_path):
    root = _h5_layout(tmp_path / "ACDC")
    lists = tmp_path / "splits"
    lists.mkdir()
    (lists / "labeled.txt").write_text("data/slices/patient001_frame01_slice_2.h5\n"
                                       "data/slices/patient001_frame02_slice_0.h5\n")
    (lists / "unlabeled.txt").write_text("\n".join(f"data/slices/patient002_frame0{f}_slice_{z}.h5"
                                                   for f in (1, 2) for z in (0, 1)) + "\n")
    (lists / "val.txt").write_text("data/patient003_frame01.h5\ndata/patient003_frame02.h5\n")
    # labels of the unlabelled patient are gone from its slice files: they are never read
    for path in (root / "data" / "slices").glob("patient002_*.h5"):
        with h5py.File(path, "a") as file:
            del file["label"]
    sets = acdc.build_acdc_datasets(root, slice_size=16, labeled_list=lists / "labeled.txt",
                                    unlabeled_list=lists / "unlabeled.txt", val_list=lists / "val.txt",
                                    h5_spacing=(10.0, 1.5, 1.5))
    assert sets.layout == "h5" and len(sets.train_u) == 4 and len(sets.train_l) == 2
    assert len(sets.val) == 2 and len(sets.test) == 0
    volume, label, case_id, spacing = sets.val[0]
    assert case_id == "patient003_frame01" and volume.shape == (2, 20, 24) and spacing == (10.0, 1.5, 1.5)
    with h5py.File(root / "data" / "patient003_frame01.h5", "r") as file:
        assert np.array_equal(label.numpy(), file["label"][()])
    (lists / "missing.txt").write_text("data/patient003_frame05.h5\n")
    with pytest.raises(DataError, match="missing.txt.*patient003_frame05"):
        acdc.build_acdc_datasets(root, labeled_list=lists / "labeled.txt", unlabeled_list=lists / "unlabeled.txt",
                                 val_list=lists / "missing.txt")


def test_h5_layout_with_a_case_count_uses_patient_splits(tmp_path):
    root = _h5_layout(tmp_path)
    sets = acdc.build_acdc_datasets(root, cases=1, slice_size=16, seed=0)
    split = sets.split
    assert (len(split.labeled), len(split.unlabeled), len(split.val), len(split.test)) == (1, 0, 1, 1)
    assert len(sets.train_u) == 0 and len(sets.train_l) > 0
    assert {item[2].split("_frame")[0] for item in sets.val} == set(split.val)


def test_unknown_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="neither ACDC layout"):
        acdc.build_acdc_datasets(tmp_path, cases=1)


# ----------------------------------------------------------------------------- non-finite intensities

def _with_nan_patch(path):
    add_nan_patch(path)
    assert np.isnan(np.asarray(nib.load(str(path)).dataobj)).sum() == 4


def test_nifti_with_a_nan_patch_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    _write_nifti(path, np.ones((6, 5, 2)), dtype=np.float32)
    assert read_nifti_volume(path).data.shape == (2, 5, 6)
    _with_nan_patch(path)
    with pytest.raises(DataError, match=r"scan\.nii\.gz: 4 NaN/Inf value\(s\)"):
        read_nifti_volume(path)


def test_training_image_with_a_nan_patch_stops_the_data_set_up(phantom_copy):
    case = _first_case(phantom_copy)
    _with_nan_patch(case.image_path)
    with pytest.raises(DataError, match=case.image_path.name + ": 4 NaN/Inf"):
        acdc.load_raw_case(case, with_label=True)


def test_h5_image_with_nan_is_a_data_error_naming_the_file(tmp_path):
    image = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    image[1, 2, 2] = np.inf
    with h5py.File(tmp_path / "patient001_frame01.h5", "w") as f:
        f["image"] = image
        f["label"] = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(DataError, match=r"patient001_frame01\.h5 \(dataset 'image'\): 1 NaN/Inf .*\(1, 2, 2\)"):
        acdc.read_h5(tmp_path / "patient001_frame01.h5", with_label=True, ndim=3)
