"""Writing images with their geometry, atomically, in every supported format.

Single-file formats (.nii.gz, .nii, .nrrd, .mha) are written to a temp name beside the target, flushed
to disk and renamed into place. Two-file formats (.mhd + .raw/.zraw, .nhdr + .raw.gz/.raw) need more:
the header names its data file, and a header renamed into place while it still names a `.tmp-…` data
file is destroyed by the next run's cleanup of temp files. So both files are written under temp names,
the header is rewritten to name the data file's *final* name, then the data file is renamed into place
first and the header last. No final file ever names a temp file; a kill at any moment leaves either the
old pair, no header (the case is simply not finished), or the new pair.

A failed write must say so: ITK's RuntimeError is given back as the OSError it hides (so the CLI can
say "disk full" in one line), and NIfTI files, whose ITK writer reports nothing at all, are measured
before they are renamed into place.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autoseg.dataset.image_io import file_ending
from autoseg.errors import AutosegError
from autoseg.jsonio import atomic_path, fsync_dir, fsync_file, temp_path
from autoseg.output_location import diagnose_write_failure

# the header line that names the data file, per two-file format (as ITK writes it)
DATA_FILE_LINE = {".mhd": re.compile(r"^(ElementDataFile\s*=\s*)(.+?)\s*$", re.MULTILINE),
                  ".nhdr": re.compile(r"^(data ?file\s*:\s*)(.+?)\s*$", re.MULTILINE)}
NIFTI1_HEADER_BYTES = 348  # the smallest header a NIfTI file has (NIfTI-2: 540)
DATA_SUFFIXES = (".raw", ".zraw", ".raw.gz")  # what ITK calls the data file beside a .mhd / .nhdr


def write_image_like(array: np.ndarray, path: str | Path, spacing, origin, direction,
                     nifti_header: bytes | None = None) -> None:
    """Write a (z, y, x) array with the given geometry, atomically (both files of a two-file format).

    For NIfTI output with the source's header, the header is reused as is (qform, sform,
    their codes, units, pixdim and the rest), so the geometry is bit-identical; only the
    data type, shape and scaling are updated.
    """
    path = Path(path)
    ending = file_ending(path)
    if ending in DATA_FILE_LINE:
        _write_two_file(_itk_image(array, spacing, origin, direction), path, ending)
        return
    with atomic_path(path) as tmp:
        if nifti_header is not None and ending in (".nii", ".nii.gz"):
            nib.save(_nifti_image(array, nifti_header), str(tmp))
        else:
            _itk_write(_itk_image(array, spacing, origin, direction), tmp, path)
        if ending in (".nii", ".nii.gz"):
            _check_nifti_complete(tmp, path, array.nbytes)
        fsync_file(tmp)
    fsync_dir(path.parent)


def _check_nifti_complete(tmp: Path, target: Path, data_bytes: int) -> None:
    """ITK's NIfTI writer (niftilib) does not report a failed write: on a full disk it leaves an empty or
    short file and returns as if all went well. So a NIfTI file is measured before it is renamed into place:
    its (decompressed) length must hold a header and every voxel, and a gzip stream must end with its
    checksum. Costs one decompression of the label map; the alternative was renaming a broken file over a
    good one."""
    try:
        if tmp.name.endswith(".gz"):
            with gzip.open(tmp, "rb") as f:
                length = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
        else:
            length = tmp.stat().st_size
    except (OSError, EOFError, zlib.error):
        length = -1
    if length >= NIFTI1_HEADER_BYTES + data_bytes:
        return
    code = diagnose_write_failure(target.parent)
    if code is not None:
        raise OSError(code, os.strerror(code), str(target))
    raise AutosegError(f"{target}: the NIfTI writer left an incomplete file ({max(length, 0)} bytes for "
                       f"{data_bytes} bytes of voxels); nothing was written")


def _nifti_image(array: np.ndarray, nifti_header: bytes):
    header_class = nib.Nifti1Header if len(nifti_header) == 348 else nib.Nifti2Header
    header = header_class(binaryblock=nifti_header)
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape[::-1])
    header.set_slope_inter(1.0, 0.0)
    image_class = nib.Nifti1Image if header_class is nib.Nifti1Header else nib.Nifti2Image
    return image_class(np.ascontiguousarray(array.transpose(2, 1, 0)), None, header)


def _itk_image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.SetSpacing([float(s) for s in list(spacing)[::-1]])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def _itk_write(image: sitk.Image, tmp: Path, target: Path) -> None:
    """sitk.WriteImage, with the OS error ITK hides in a RuntimeError given back as an OSError naming the
    target (so the CLI can say "disk full" in one line), or a one-line AutosegError when it says nothing."""
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Reason:")), "")
        code = next((c for c in range(1, 134) if reason and os.strerror(c) == reason), None)
        code = code or diagnose_write_failure(target.parent)
        if code is not None:
            raise OSError(code, os.strerror(code), str(target)) from None
        raise AutosegError(f"{target}: could not be written ({(lines[-1] if lines else 'ITK error')[:160]})") from None


def _write_two_file(image: sitk.Image, path: Path, ending: str) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp_header = temp_path(path)
    tmp_stem, stem = tmp_header.name[:-len(ending)], path.name[:-len(ending)]
    tmp_data = final_data = None
    try:
        _itk_write(image, tmp_header, path)
        text = tmp_header.read_text()
        match = DATA_FILE_LINE[ending].search(text)
        if match is None or "/" in match.group(2) or not match.group(2).startswith(tmp_stem):
            raise AutosegError(f"{path}: ITK wrote an unexpected header (data file line "
                               f"{match.group(2) if match else 'missing'!r}); nothing was written")
        tmp_data = folder / match.group(2)
        final_data = folder / (stem + match.group(2)[len(tmp_stem):])  # e.g. case + .zraw / .raw.gz
        text = text[:match.start(2)] + final_data.name + text[match.end(2):]
        with open(tmp_header, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fsync_file(tmp_data)
        # The old header goes first: from here until the new header lands, no header names the data file
        # being replaced, so nobody reads an old header with new data.
        path.unlink(missing_ok=True)
        os.replace(tmp_data, final_data)
        os.replace(tmp_header, path)
    except OSError as e:
        if e.filename is None or (tmp_data is not None and e.filename == str(tmp_data)):
            e.filename = str(final_data or path)
        elif e.filename == str(tmp_header):
            e.filename = str(path)
        raise
    finally:
        tmp_header.unlink(missing_ok=True)
        # ITK names the data file after the header; remove it even when the header was never read
        for suffix in DATA_SUFFIXES:
            folder.joinpath(tmp_stem + suffix).unlink(missing_ok=True)
    fsync_dir(folder)
