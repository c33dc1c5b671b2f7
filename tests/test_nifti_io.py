"""ACDC NIfTI geometry: label maps keep the source header (version, qform/sform and their codes)."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.acdc.nifti_io import write_label_nifti


def _oblique(spacing_xyz, offset=(-90.0, 30.0, 12.5), angle=0.6):
    affine = np.diag(list(spacing_xyz) + [1.0])
    c, s = np.cos(angle), np.sin(angle)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]
    affine[:3, 3] = offset
    return affine


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
