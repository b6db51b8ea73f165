"""Reading images with their geometry, and verifying what is read.

Internal axis order: arrays are indexed like SimpleITK's numpy view, (z, y, x) for a 3D
file, i.e. the reverse of the file's index order, with channels first for 4D files.
`spacing` follows the array axes; `origin` and `direction` stay in the file's physical
(ITK, LPS) convention so they can be written back unchanged.

Nothing is used that was not verified (docs/reliability.md, "Readers"); each refusal is an
AutosegError of one line naming the file:
- Compressed data is read to its end, so that its checksum is checked: gzip CRC32 and length
  of every member (.nii.gz, gzip NRRD), zlib Adler-32 (MetaImage). Concatenated gzip members
  are one stream and zero padding after the last is allowed, as gzip(1) does; other bytes
  after the end are refused. NIfTI is decompressed once (nibabel reads from our stream, which
  we then drain); for NRRD and MetaImage, ITK stops before the checksum (and its MetaImage
  reader ignores inflate errors), so the payload is decompressed once more, output discarded.
- Sizes: the voxel data must be exactly as long as the header says (shorter: truncated;
  longer: the header's shape or type does not describe the data), except raw data a header
  places at the end of its file (NRRD byte skip -1, MetaImage HeaderSize -1).
- Pixel types: RGB/RGBA, complex, 1-bit, 128-bit float and unknown codes are refused; vector
  pixels of ITK formats are channels.
- Spacing: zero, negative or non-finite spacing is refused, both as the header states it
  (NIfTI pixdim, MetaImage ElementSpacing, NRRD space directions/spacings: nibabel, the NIfTI
  C library and ITK would each silently replace it, differently) and as the reader computes it.
- Direction: the columns must be unit length and orthogonal within DIRECTION_TOLERANCE
  (|cos| <= 1e-3, about 0.06 degrees); sheared or scaled directions are refused, since
  geometry is carried as spacing + a rotation and a shear would be lost. A non-finite origin
  is refused too.
- NIfTI affine: nibabel's rule, sform when sform_code > 0, else qform when qform_code > 0,
  else pixdim alone. A qform that disagrees with a used sform is not an error (the sform is
  the one meant for it); ITK's NIfTI reader may pick the other one, which is why NIfTI is
  read with nibabel only.
NaN/Inf voxels are left to dataset/validation.py (`read_channels`), which counts them.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autoseg.dataset.geometry import Geometry, check_geometry, check_spacing, file_ending, geometry_from_affine
from autoseg.dataset.itk_payload import metaimage_payload, nrrd_payload, verify_payload
from autoseg.dataset.read_problems import CHUNK, compressed_problem, size_problem, unreadable
from autoseg.errors import AutosegError


# ---------------------------------------------------------------------------------------------
# NIfTI (nibabel)

_NIFTI_PIXEL_TYPES_REFUSED = {
    1: "1-bit (binary) pixels are not supported (store them as uint8)",
    32: "complex pixels are not supported (store real values, e.g. the magnitude)",
    128: "RGB pixels are not supported (convert to one channel per file)",
    1536: "128-bit float pixels are not supported (store float32 or float64)",
    1792: "complex pixels are not supported (store real values, e.g. the magnitude)",
    2048: "complex pixels are not supported (store real values, e.g. the magnitude)",
    2304: "RGBA pixels are not supported (convert to one channel per file)",
}


def _open_nifti(path: Path, compressed: bool) -> BinaryIO:
    if compressed:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic != b"\x1f\x8b":
            raise AutosegError(f"{path}: unreadable or truncated file ("
                               + ("empty file)" if not magic else "not gzip-compressed, although named .nii.gz)"))
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


def _nifti_class(path: Path, head: bytes):
    """Nifti1Image or Nifti2Image from the header-size field, in either byte order."""
    if len(head) < 348:
        raise AutosegError(f"{path}: unreadable or truncated file ({len(head)} bytes, too short for a NIfTI "
                           f"header)")
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    raise AutosegError(f"{path}: not a NIfTI file (its header-size field is neither 348 nor 540)")


def _check_nifti_header(path: Path, raw: nib.Nifti1Header) -> None:
    """Checks on the header as stored, before nibabel's fixes (nibabel silently turns a zero or
    negative pixdim into 1 or its absolute value; the NIfTI C library uses 1 for both)."""
    code = int(raw["datatype"])
    if code in _NIFTI_PIXEL_TYPES_REFUSED:
        raise AutosegError(f"{path}: {_NIFTI_PIXEL_TYPES_REFUSED[code]}")
    try:
        dtype = raw.get_data_dtype()
    except Exception:
        raise AutosegError(f"{path}: unknown NIfTI data type code {code}") from None
    if dtype.kind not in "biuf":
        raise AutosegError(f"{path}: pixel type {dtype} (NIfTI code {code}) is not supported")
    n_spatial = min(3, max(1, int(raw["dim"][0])))
    check_spacing(path, raw["pixdim"][1:1 + n_spatial], "voxel spacing (pixdim)")


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    # nibabel, not ITK: ITK's NIfTI reader turns NaN voxels into 0, hiding corrupt data.
    # One pass over the file: nibabel reads the voxels from our stream, then we read the stream
    # to its end, so that gzip checks the CRC32 and length of every member.
    compressed = file_ending(path) == ".nii.gz"
    try:
        with _open_nifti(path, compressed) as stream:
            head = stream.read(540)
            image_class = _nifti_class(path, head)
            header_size = 348 if image_class is nib.Nifti1Image else 540
            _check_nifti_header(path, image_class.header_class(head[:header_size], check=False))
            stream.seek(0)
            image = image_class.from_file_map(image_class.make_file_map({"image": stream}), mmap=False)
            header = image.header
            offset = int(image.dataobj.offset)  # the image's header copy has vox_offset reset to 0
            data_bytes = int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
            if not compressed:
                found = path.stat().st_size - offset
                if found != data_bytes:
                    raise size_problem(path, "the voxel data", data_bytes, found)
            try:
                data = np.asanyarray(image.dataobj)
            except OSError as e:
                if type(e) is not OSError or not compressed:
                    raise
                # nibabel's short read: the stream ended cleanly (trailer checked) before the data did
                raise size_problem(path, "the decompressed voxel data", data_bytes, stream.tell() - offset) from None
            if compressed:
                extra = 0
                while chunk := stream.read(CHUNK):
                    extra += len(chunk)
                if extra:
                    raise size_problem(path, "the decompressed voxel data", data_bytes, data_bytes + extra)
    except AutosegError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise compressed_problem(path, e) from None
    except Exception as e:  # nibabel raises many types for damaged files
        raise unreadable(path, e) from None

    n_spatial = min(3, data.ndim)
    linear = np.asarray(image.affine, dtype=np.float64)[:3, :n_spatial]
    spacing_ijk = np.sqrt((linear ** 2).sum(axis=0))
    check_geometry(path, spacing_ijk, linear / np.where(spacing_ijk > 0, spacing_ijk, 1.0), image.affine[:3, 3])
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


# ---------------------------------------------------------------------------------------------
# NRRD and MetaImage (SimpleITK, with our own checks where ITK does not look)

_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
    sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
    sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorUInt64: 8, sitk.sitkVectorInt64: 8,
    sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8,
}


def _itk_error(path: Path, e: RuntimeError) -> AutosegError:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else "unknown reason"
    return AutosegError(f"{path}: unreadable or truncated file ({detail[:160]})")


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    ending = file_ending(path)
    try:
        payload = (metaimage_payload(path) if ending in (".mha", ".mhd")
                   else nrrd_payload(path) if ending in (".nrrd", ".nhdr") else None)
    except ValueError:
        payload = None  # a header field we cannot parse: ITK's reader decides, with its own message
    except OSError as e:
        raise unreadable(path, e) from None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _itk_error(path, e) from None
    pixel = reader.GetPixelID()
    if pixel in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise AutosegError(f"{path}: complex pixels are not supported (store real values, e.g. the magnitude)")
    if pixel not in _COMPONENT_BYTES:
        raise AutosegError(f"{path}: pixel type {sitk.GetPixelIDValueAsString(pixel)} is not supported")
    if payload is not None:
        voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
        try:
            verify_payload(path, payload, voxels * _COMPONENT_BYTES[pixel])
        except OSError as e:
            raise unreadable(path, e) from None
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise _itk_error(path, e) from None
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels are channels
        array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    dim = image.GetDimension()
    spacing, origin = image.GetSpacing(), image.GetOrigin()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    n_spatial = min(3, dim)
    check_geometry(path, spacing[:n_spatial], direction[:n_spatial, :n_spatial], origin[:n_spatial])
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
    that is acceptable. Everything the module docstring lists is verified first; any
    problem raises AutosegError with one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: file not found")
    if file_ending(path) in (".nii", ".nii.gz"):
        return _read_nifti(path)
    return _read_itk(path)


def nifti_header_bytes(path: str | Path) -> bytes | None:
    """The raw NIfTI header of a .nii/.nii.gz file (None for other formats), as nibabel loads it.

    Only the header is read; callers read the voxels with `read_image` first, which verifies them.
    """
    if file_ending(path) not in (".nii", ".nii.gz"):
        return None
    path = Path(path)
    try:
        with _open_nifti(path, file_ending(path) == ".nii.gz") as stream:
            image_class = _nifti_class(path, stream.read(540))
            stream.seek(0)
            image = image_class.from_file_map(image_class.make_file_map({"image": stream}), mmap=False)
            return image.header.binaryblock
    except AutosegError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise compressed_problem(path, e) from None
    except Exception as e:
        raise unreadable(path, e) from None
