"""NIfTI reading and writing for ACDC, with one internal axis order.

nibabel hands out arrays in the file's voxel order. Everything in this package works
slices-first, ``(Z, Y, X)`` = ``(D, H, W)``, the order of the official preprocessed ``.h5``
volumes (made with SimpleITK's ``GetArrayFromImage``), so a 2-D model sees the same in-plane
orientation whichever layout a volume came from. ``to_internal`` and ``to_nibabel`` are the
only two places where the axes are swapped; readers and the writer go through them. Spacings
follow the same order: ``(z, y, x)`` mm.

Which voxel axis is through-plane is read from the header, not assumed
(:func:`slice_axis_of`): the axis whose spacing (pixdim) is at least ``CLEAR_SLICE_RATIO``
(1.5) times each of the other two, as the slice gap of short-axis cine MRI is (ACDC: 5-10 mm
slices, about 1.5 mm pixels). A volume stored slices-first (voxel axis 0 thick) is therefore
read as its real slices and its label map written back in its own voxel order. Where no axis
stands out (isotropic or nearly so, or two equally thick axes), the standard axis 2 is used:
the NIfTI convention and ACDC's layout. Such a volume is not refused: its header cannot say
anything better, and a refusal would leave a correctly stored file (e.g. 1 mm isotropic) with
no way through short of editing its header. The in-plane axes keep their file order: the
lower-numbered one is X (columns), the other Y.

A label map is written with the source's own header: its NIfTI version (1 or 2), qform and
sform (matrices, quaternion fields and codes, 0 = unset included), pixdim and grid, with only
the data type (uint8) and scaling (none) changed.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from unimatch import atomic
from unimatch.errors import DataError
from unimatch.finite import require_finite
from unimatch.paths import refuse_existing

NIFTI_SUFFIXES = (".nii.gz", ".nii")
STANDARD_SLICE_AXIS = 2
# how much thicker than both other axes the through-plane axis must be to be told apart
CLEAR_SLICE_RATIO = 1.5
# Errors nibabel/gzip/zlib raise on a truncated, corrupt or non-NIfTI file.
_DECODE_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class NiftiVolume:
    """One decoded 3-D volume: data in (Z, Y, X) order, its spacing, the source image and which
    of the source's voxel axes is through-plane (``slice_axis``)."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    image: nib.Nifti1Image
    path: Path
    slice_axis: int = STANDARD_SLICE_AXIS


def _internal_order(slice_axis: int) -> tuple[int, int, int]:
    """Source voxel axes in internal (Z, Y, X) order: the slice axis, then the higher-numbered
    in-plane axis as Y and the lower-numbered one as X (``(2, 1, 0)`` for the standard layout)."""
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice axis {slice_axis} is not a voxel axis 0, 1 or 2")
    low, high = (axis for axis in (0, 1, 2) if axis != slice_axis)
    return slice_axis, high, low


def to_internal(array: np.ndarray, slice_axis: int = STANDARD_SLICE_AXIS) -> np.ndarray:
    """Source voxel order (slice axis ``slice_axis``) -> internal (Z, Y, X)."""
    return np.ascontiguousarray(np.transpose(array, _internal_order(slice_axis)))


def to_nibabel(array_zyx: np.ndarray, slice_axis: int = STANDARD_SLICE_AXIS) -> np.ndarray:
    """Internal (Z, Y, X) -> the source's voxel order (slice axis ``slice_axis``)."""
    return np.ascontiguousarray(np.transpose(array_zyx, np.argsort(_internal_order(slice_axis))))


def is_nifti(path: Path | str) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path | str) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: Path | str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Open a NIfTI file and decode its whole array (so truncation is found here, not later).

    Returns the image (header and affine) and its raw array in nibabel's (X, Y, Z[, T]) order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except _DECODE_ERRORS as error:
        raise DataError(
            f"{path}: not a readable NIfTI file ({type(error).__name__}: {error}); "
            "the file may be truncated or of another format - re-copy or re-export it"
        ) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: {type(image).__name__} is not a NIfTI image; convert it to .nii.gz")
    return image, array


def _squeeze_trailing(array: np.ndarray) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def voxel_spacing(image: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size (pixdim) of the first three voxel axes in file order, millimetres.

    A 2-D image (one slice) stores no slice thickness: 1 mm is used, which only matters for
    surface distances across slices and a single slice has none.
    """
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return zooms + (1.0,) * (3 - len(zooms))


def slice_axis_of(image: nib.Nifti1Image) -> int:
    """The through-plane voxel axis: the one at least ``CLEAR_SLICE_RATIO`` times thicker than
    both others, else the standard axis 2 (see the module docstring); also where pixdim is unset
    (0), which says nothing. A 2-D image is one slice."""
    if len(image.shape) < 3:
        return STANDARD_SLICE_AXIS
    spacing = voxel_spacing(image)
    thickest = int(np.argmax(spacing))
    others = [spacing[axis] for axis in (0, 1, 2) if axis != thickest]
    if all(0 < other and spacing[thickest] >= CLEAR_SLICE_RATIO * other for other in others):
        return thickest
    return STANDARD_SLICE_AXIS


def spacing_of(image: nib.Nifti1Image, slice_axis: int = STANDARD_SLICE_AXIS) -> tuple[float, float, float]:
    """Voxel size in internal order (z, y, x), millimetres."""
    spacing = voxel_spacing(image)
    z, y, x = _internal_order(slice_axis)
    return spacing[z], spacing[y], spacing[x]


def read_nifti_volume(path: Path | str, frame: int | None = None, dtype=np.float32,
                      slice_axis: int | None = None) -> NiftiVolume:
    """Read a 3-D NIfTI volume as (Z, Y, X).

    The through-plane axis is decided from the header (:func:`slice_axis_of`) unless
    ``slice_axis`` is given (a ground truth is read along its image's axis). A 4-D (cine) file
    needs ``frame`` (0-based index along its time axis); without it this is a DataError telling
    the user to pick a frame. Anything that is not 2-D/3-D is refused.
    """
    path = Path(path)
    image, array = load_nifti(path)
    array = _squeeze_trailing(array)
    if array.ndim == 4:
        n_frames = array.shape[3]
        if frame is None:
            raise DataError(
                f"{path}: 4-D volume with {n_frames} frames; pick a frame with --frame N (0..{n_frames - 1})"
            )
        if not 0 <= frame < n_frames:
            raise DataError(f"{path}: frame {frame} out of range, the file has frames 0..{n_frames - 1}")
        array = array[..., frame]
    elif array.ndim == 2:
        array = array[..., np.newaxis]
    elif array.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got an array of shape {array.shape}")
    if slice_axis is None:
        slice_axis = slice_axis_of(image)
    data = require_finite(to_internal(np.asarray(array, dtype=dtype), slice_axis), path)
    return NiftiVolume(data=data, spacing=spacing_of(image, slice_axis), image=image, path=path,
                       slice_axis=slice_axis)


def list_nifti_files(path: Path | str) -> list[Path]:
    """A NIfTI file, or the NIfTI files of a folder (sorted, not recursive).

    In a folder, ACDC's ground-truth (``*_gt``) and cine (``*_4d``) files are skipped: a folder
    is a set of images to segment. Pass a ``_4d`` file by name together with a frame.
    """
    path = Path(path)
    if path.is_file():
        if not is_nifti(path):
            raise DataError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(
        p for p in path.iterdir()
        if p.is_file() and is_nifti(p) and not nifti_stem(p).endswith(("_gt", "_4d"))
    )
    if not files:
        raise DataError(f"{path}: folder holds no .nii/.nii.gz images (ground-truth *_gt and *_4d files are skipped)")
    return files


def write_label_nifti(label: np.ndarray, reference_img: nib.Nifti1Image, path: Path | str,
                      overwrite: bool = False, slice_axis: int | None = None) -> Path:
    """Write a (Z, Y, X) label volume as uint8 NIfTI on the grid of ``reference_img``.

    The header is the reference's own, NIfTI version, qform and sform (matrices and codes, unset
    ones staying unset) included; only the data type (uint8) and scaling (none) change. The array
    goes back into the source's voxel order, through-plane axis ``slice_axis`` (decided from the
    reference header when not given), so the output has the source's shape. An existing file is
    never replaced unless ``overwrite``.
    """
    path = Path(path)
    label = np.asarray(label)
    if slice_axis is None:
        slice_axis = slice_axis_of(reference_img)
    grid = tuple(reference_img.shape[:3])
    ref_shape = grid + (1,) * (3 - len(grid))   # a 2-D source is one slice
    expected = tuple(ref_shape[axis] for axis in _internal_order(slice_axis))
    if label.shape != expected:
        raise DataError(f"{path}: label shape {label.shape} does not match the reference volume (Z,Y,X) {expected}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise DataError(f"{path}: label values {label.min()}..{label.max()} do not fit uint8")
    refuse_existing([path], overwrite)

    image_class = nib.Nifti2Image if isinstance(reference_img.header, nib.Nifti2Header) else nib.Nifti1Image
    header = image_class.header_class.from_header(reference_img.header)
    header.set_data_dtype(np.uint8)
    header.set_data_shape(grid)
    header.set_slope_inter(1.0, 0.0)
    # the header's own best affine: nibabel then leaves its qform/sform fields as they are
    out = image_class(to_nibabel(label.astype(np.uint8), slice_axis).reshape(grid), header.get_best_affine(), header)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_output(path) as temporary:   # same suffix, so nibabel compresses alike
        nib.save(out, str(temporary))
    return path


def reference_grid(source: Path | None, shape_zyx: tuple, spacing_zyx) -> tuple[nib.Nifti1Image, int]:
    """The grid a predicted label map is written on and its through-plane axis: the ``source``
    NIfTI's when there is one (raw layout), else an identity orientation scaled by the voxel
    spacing in the standard layout (``.h5`` volumes carry none)."""
    if source is not None and source.is_file():
        image = nib.load(str(source))
        return image, slice_axis_of(image)
    z, y, x = (float(s) for s in spacing_zyx)
    affine = np.diag([x, y, z, 1.0])
    image = nib.Nifti1Image(to_nibabel(np.zeros(shape_zyx, dtype=np.uint8)), affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image, STANDARD_SLICE_AXIS
