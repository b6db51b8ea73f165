"""Reading images with their geometry.

Internal axis order: arrays are indexed like SimpleITK's numpy view, (z, y, x) for a 3D
file, i.e. the reverse of the file's index order, with channels first for 4D files.
`spacing` follows the array axes; `origin` and `direction` stay in the file's physical
(ITK, LPS) convention so they can be written back unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.jsonio import atomic_path

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where a 3D voxel grid sits in physical space."""

    spacing: tuple[float, float, float]  # array axis order (z, y, x)
    origin: tuple[float, float, float]  # physical (x, y, z), as stored in the file
    direction: tuple[float, ...]  # 3x3 row-major, physical convention of SimpleITK

    def matches(self, other: "Geometry", spacing_rtol=1e-4, origin_atol=1e-3, direction_atol=1e-4) -> list[str]:
        """Names of the properties that differ beyond tolerance (empty when they agree)."""
        diffs = []
        if not np.allclose(self.spacing, other.spacing, rtol=spacing_rtol, atol=0):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=origin_atol):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_atol):
            diffs.append("direction differs")
        return diffs


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def file_ending(path: str | Path) -> str | None:
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def geometry_from_affine(affine: np.ndarray) -> Geometry:
    """ITK-convention geometry of a NIfTI affine (RAS) for an array in internal (z, y, x) order."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing_ijk = np.sqrt((linear ** 2).sum(axis=0))
    direction_ras = linear / np.where(spacing_ijk > 0, spacing_ijk, 1.0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ direction_ras
    origin = ras_to_lps @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return Geometry(tuple(float(s) for s in spacing_ijk[::-1]), tuple(float(o) for o in origin),
                    tuple(float(d) for d in direction.ravel()))


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    # nibabel, not ITK: ITK's NIfTI reader turns NaN voxels into 0, hiding corrupt data.
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for damaged files
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutosegError(f"{path}: unreadable or truncated file ({detail[:160]})") from None
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector intent: (x, y, z, 1, c)
        data = data[:, :, :, 0, :]
    geometry = geometry_from_affine(image.affine)
    if data.ndim == 2:
        return np.ascontiguousarray(data.T), geometry
    if data.ndim == 3:
        return np.ascontiguousarray(data.transpose(2, 1, 0)), geometry
    if data.ndim == 4:
        return np.ascontiguousarray(data.transpose(3, 2, 1, 0)), geometry
    return data, geometry


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else "unknown reason"
        raise AutosegError(f"{path}: unreadable or truncated file ({detail[:160]})") from None
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels are channels
        array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    dim = image.GetDimension()
    spacing, origin = image.GetSpacing(), image.GetOrigin()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    if dim >= 3:
        geometry = Geometry(tuple(float(s) for s in spacing[:3][::-1]), tuple(float(o) for o in origin[:3]),
                            tuple(float(d) for d in direction[:3, :3].ravel()))
    else:
        full = np.eye(3)
        full[:2, :2] = direction
        geometry = Geometry((1.0, float(spacing[1]), float(spacing[0])), (float(origin[0]), float(origin[1]), 0.0),
                            tuple(float(d) for d in full.ravel()))
    return array, geometry


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a 2D/3D/4D image; returns the array in internal axis order and the 3D geometry.

    A 4D file (or vector pixels) comes back channels-first, (C, z, y, x), with the
    geometry of its first three axes. A 2D file comes back 2D: callers decide whether
    that is acceptable.
    """
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: file not found")
    if file_ending(path) in (".nii", ".nii.gz"):
        return _read_nifti(path)
    return _read_itk(path)


def nifti_header_bytes(path: str | Path) -> bytes | None:
    """The raw NIfTI header of a .nii/.nii.gz file (None for other formats)."""
    if file_ending(path) not in (".nii", ".nii.gz"):
        return None
    return nib.load(str(path)).header.binaryblock


def write_image_like(array: np.ndarray, path: str | Path, spacing, origin, direction,
                     nifti_header: bytes | None = None) -> None:
    """Write a (z, y, x) array with the given geometry, atomically.

    For NIfTI output with the source's header, the header is reused as is (qform, sform,
    their codes, units, pixdim and the rest), so the geometry is bit-identical; only the
    data type, shape and scaling are updated.
    """
    with atomic_path(path) as tmp:
        if nifti_header is not None and file_ending(path) in (".nii", ".nii.gz"):
            header_class = nib.Nifti1Header if len(nifti_header) == 348 else nib.Nifti2Header
            header = header_class(binaryblock=nifti_header)
            header.set_data_dtype(array.dtype)
            header.set_data_shape(array.shape[::-1])
            header.set_slope_inter(1.0, 0.0)
            image_class = nib.Nifti1Image if header_class is nib.Nifti1Header else nib.Nifti2Image
            image = image_class(np.ascontiguousarray(array.transpose(2, 1, 0)), None, header)
            nib.save(image, str(tmp))
        else:
            image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
            image.SetSpacing([float(s) for s in list(spacing)[::-1]])
            image.SetOrigin([float(o) for o in origin])
            image.SetDirection([float(d) for d in direction])
            sitk.WriteImage(image, str(tmp), useCompression=True)
