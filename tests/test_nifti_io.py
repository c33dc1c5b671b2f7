"""ACDC NIfTI geometry: label maps keep the source header (version, qform/sform and their codes),
and a volume stored slices-first is read, predicted and written along its real through-plane axis."""
import dataclasses
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tasks.acdc import predict
from tasks.acdc.common import AcdcConfig
from tasks.acdc.nifti_io import read_nifti_volume, slice_axis_of, write_label_nifti
from tasks.acdc.readers import list_raw_cases, load_raw_case
from tasks.acdc.synthetic import ensure_synthetic_acdc
from unimatch.config import load_config
from unimatch.models import build_model
from unimatch.paths import config_path

TINY_ACDC = ["crop_size=32", "feature_channels=[4,8,16,32,64]"]
# voxel axis order of the slices-first copy: its axis 0 is the standard file's axis 2 (through-plane)
SLICES_FIRST = (2, 0, 1)


def _oblique(spacing_xyz, offset=(-90.0, 30.0, 12.5), angle=0.6):
    affine = np.diag(list(spacing_xyz) + [1.0])
    c, s = np.cos(angle), np.sin(angle)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]
    affine[:3, 3] = offset
    return affine


def _slices_first(data_xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the through-plane axis first: array axes and affine columns permuted."""
    permuted = affine.copy()
    permuted[:, :3] = affine[:, list(SLICES_FIRST)]
    return np.transpose(data_xyz, SLICES_FIRST), permuted


def _save(path: Path, data, affine, image_class=nib.Nifti1Image, qform_code=1, sform_code=1, sform=None):
    image = image_class(np.asarray(data), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine if sform is None else sform, code=sform_code)
    nib.save(image, str(path))
    return path


# ----------------------------------------------------------------------------- header round trip

GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                   "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "dim", "xyzt_units")


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image], ids=["nifti1", "nifti2"])
@pytest.mark.parametrize("qform_code, sform_code", [(0, 0), (0, 2), (1, 0), (1, 1), (2, 4), (4, 1)])
def test_label_map_keeps_the_source_header_geometry_and_version(tmp_path, image_class, qform_code, sform_code):
    """qform and sform differ here (a shifted sform), so a writer copying one into the other is caught."""
    qform = _oblique((1.5, 1.4, 10.0))
    sform = _oblique((1.5, 1.4, 10.0), offset=(-80.0, 35.0, 2.5), angle=0.5)
    rng = np.random.default_rng(0)
    source_path = _save(tmp_path / "scan.nii.gz", rng.normal(size=(6, 5, 3)).astype(np.float32) * 100, qform,
                        image_class, qform_code, sform_code, sform)
    source = nib.load(str(source_path))
    labels = rng.integers(0, 4, size=(3, 5, 6))
    written = nib.load(str(write_label_nifti(labels, source, tmp_path / "scan_seg.nii.gz")))

    assert type(written) is type(source) is image_class
    for coded in ("get_qform", "get_sform"):
        (written_matrix, written_code), (source_matrix, source_code) = (
            getattr(image.header, coded)(coded=True) for image in (written, source))
        assert int(written_code) == int(source_code)
        assert (written_matrix is None) == (source_matrix is None)
        if source_matrix is not None:
            np.testing.assert_array_equal(written_matrix, source_matrix)
    for field in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(written.header[field], source.header[field], err_msg=field)
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), np.transpose(labels, (2, 1, 0)))


# ----------------------------------------------------------------------------- slice axis

@pytest.mark.parametrize("spacing, axis", [
    ((1.5, 1.4, 10.0), 2), ((10.0, 1.5, 1.4), 0), ((1.5, 6.5, 1.5), 1),
    ((1.0, 1.0, 1.0), 2), ((1.4, 1.0, 1.0), 2), ((5.0, 5.0, 1.0), 2), ((2.0, 1.0, 1.5), 2),
], ids=["standard", "slices-first", "axis-1", "isotropic", "not-clearly-thicker", "two-thick", "mild"])
def test_slice_axis_is_the_clearly_thickest_voxel_axis_else_axis_2(tmp_path, spacing, axis):
    path = _save(tmp_path / "v.nii.gz", np.zeros((4, 5, 6), np.int16), np.diag(list(spacing) + [1.0]))
    assert slice_axis_of(nib.load(str(path))) == axis


def test_unset_pixdim_keeps_the_standard_slice_axis():
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    image.header.set_zooms((0.0, 0.0, 0.0))
    assert slice_axis_of(image) == 2


def test_slices_first_nifti_reads_as_the_same_slices_as_its_standard_twin(tmp_path):
    data_xyz = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)
    affine = _oblique((1.5, 1.4, 10.0))
    standard = read_nifti_volume(_save(tmp_path / "standard.nii.gz", data_xyz, affine))
    first = read_nifti_volume(_save(tmp_path / "first.nii.gz", *_slices_first(data_xyz, affine)))
    assert first.slice_axis == 0 and standard.slice_axis == 2
    assert first.data.shape == standard.data.shape == (3, 5, 6)
    assert np.array_equal(first.data, standard.data)
    assert first.spacing == pytest.approx(standard.spacing)
    assert first.spacing == pytest.approx((10.0, 1.4, 1.5))


def test_label_map_of_a_slices_first_source_is_written_in_its_voxel_order(tmp_path):
    data_xyz = np.zeros((6, 5, 3), np.int16)
    affine = _oblique((1.5, 1.4, 10.0))
    standard = read_nifti_volume(_save(tmp_path / "standard.nii.gz", data_xyz, affine))
    first = read_nifti_volume(_save(tmp_path / "first.nii.gz", *_slices_first(data_xyz, affine)))
    labels = np.random.default_rng(1).integers(0, 4, size=(3, 5, 6))
    written = {}
    for name, volume in (("standard", standard), ("first", first)):
        out = write_label_nifti(labels, volume.image, tmp_path / f"{name}_seg.nii.gz", slice_axis=volume.slice_axis)
        written[name] = nib.load(str(out))
        assert written[name].shape == volume.image.shape
        np.testing.assert_allclose(written[name].affine, volume.image.affine)
    assert np.array_equal(np.asanyarray(written["first"].dataobj),
                          np.transpose(np.asanyarray(written["standard"].dataobj), SLICES_FIRST))


def test_training_reader_reads_a_slices_first_patient_like_its_standard_twin(tmp_path):
    phantom = ensure_synthetic_acdc(tmp_path / "acdc", n_patients=3, image_size=16, n_slices=(3, 3), seed=2)
    twin = tmp_path / "twin"
    shutil.copytree(phantom, twin)
    for path in (twin / "training").rglob("*.nii.gz"):
        image = nib.load(str(path))
        _save(path, *_slices_first(np.asanyarray(image.dataobj), image.affine))
    for standard, first in zip(list_raw_cases(phantom)["patient001"], list_raw_cases(twin)["patient001"]):
        volume, label, spacing, _ = load_raw_case(standard, True)
        first_volume, first_label, first_spacing, _ = load_raw_case(first, True)
        assert first_volume.shape == volume.shape and volume.shape[0] == 3
        assert np.array_equal(first_volume, volume) and np.array_equal(first_label, label)
        assert first_spacing == pytest.approx(spacing)


# ----------------------------------------------------------------------------- predict entry point

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny ACDC model whose output layer is redrawn at unit scale, so its labels vary over
    the image (a freshly initialised one predicts background everywhere and would compare trivially)."""
    cfg = load_config(config_path("acdc", "synthetic.yaml"), TINY_ACDC, schema=AcdcConfig)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, pretrained=None))
    with torch.no_grad():
        for parameter in model.decoder.out_conv.parameters():
            parameter.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("model") / "acdc.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_predict_on_a_slices_first_scan_equals_its_standard_twin_transposed(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(3)
    data_xyz = (rng.normal(size=(24, 20, 3)) * 100 + 400).astype(np.float32)
    affine = _oblique((1.5, 1.5, 10.0))
    scans = tmp_path / "scans"
    scans.mkdir()
    _save(scans / "standard.nii.gz", data_xyz, affine, nib.Nifti2Image, qform_code=0, sform_code=2)
    _save(scans / "first.nii.gz", *_slices_first(data_xyz, affine), qform_code=0, sform_code=2)
    predict.main(["--checkpoint", str(checkpoint), "--input", str(scans), "--output", str(tmp_path / "seg"),
                  "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "first.nii.gz: 3 slices" in printed and "standard.nii.gz: 3 slices" in printed
    labels = {}
    for name in ("standard", "first"):
        source = nib.load(str(scans / f"{name}.nii.gz"))
        written = nib.load(str(tmp_path / "seg" / f"{name}_seg.nii.gz"))
        assert type(written) is type(source) and written.shape == source.shape
        assert int(written.header["qform_code"]) == 0 and int(written.header["sform_code"]) == 2
        np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
        labels[name] = np.asanyarray(written.dataobj)
    assert len(np.unique(labels["standard"])) > 1
    assert np.array_equal(labels["first"], np.transpose(labels["standard"], SLICES_FIRST))
