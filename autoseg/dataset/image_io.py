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
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError

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


# ---------------------------------------------------------------------------------------------
# Checks every format shares

_CHUNK = 1 << 20  # bytes read (or decompressed) per step when a payload is only verified
DIRECTION_TOLERANCE = 1e-3  # |cos| between axes, and | |column| - 1 |, allowed in a direction


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _unreadable(path: Path, e: BaseException) -> AutosegError:
    return AutosegError(f"{path}: unreadable or truncated file ({_first_line(e)})")


def _compressed_problem(path: Path, e: BaseException, checksum: str = "gzip CRC32") -> AutosegError:
    """One line for a damaged compressed stream (gzip or zlib), whichever layer noticed it;
    `checksum` names the stream's check (zlib reports a failing CRC32 and Adler-32 alike)."""
    if isinstance(e, EOFError):
        return AutosegError(f"{path}: unreadable or truncated file (the compressed data ends before its "
                            f"end-of-stream marker)")
    detail = _first_line(e)
    if "CRC check failed" in detail:
        detail = "gzip CRC32 check failed: the decompressed data is not what was written"
    elif "Incorrect length" in detail or "incorrect length check" in detail:
        detail = "gzip length check failed: the decompressed data is not what was written"
    elif "incorrect data check" in detail:
        detail = f"{checksum} check failed: the decompressed data is not what was written"
    elif "Not a gzipped file" in detail:
        detail = "not gzip data where a gzip member should start: not a gzip file, or junk after its end"
    return AutosegError(f"{path}: corrupt compressed data ({detail})")


def _check_spacing(path: Path, spacing, what: str = "voxel spacing") -> None:
    """Zero, negative or non-finite spacing is refused: resampling, patch sizes and every physical
    measure divide by it, and readers disagree on what a negative one means."""
    values = np.asarray(spacing, dtype=np.float64)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values <= 0)):
        raise AutosegError(f"{path}: {what} {_fmt(values)} (file axis order) is zero, negative or not finite; "
                           f"every axis needs a positive spacing")


def _check_direction(path: Path, columns: np.ndarray) -> None:
    """Columns (one per file axis) must be orthogonal and unit length within DIRECTION_TOLERANCE:
    the pipeline keeps spacing and direction apart, so a sheared or scaled direction would be lost
    (or resampled wrongly) without a word."""
    columns = np.asarray(columns, dtype=np.float64)
    if not np.all(np.isfinite(columns)):
        raise AutosegError(f"{path}: the direction (axis orientation) has non-finite values")
    lengths = np.sqrt((columns ** 2).sum(axis=0))
    n = columns.shape[1]
    for i in range(n):
        for j in range(i + 1, n):
            if lengths[i] == 0 or lengths[j] == 0:
                continue  # reported below as a length
            cosine = float(columns[:, i] @ columns[:, j]) / float(lengths[i] * lengths[j])
            if abs(cosine) > DIRECTION_TOLERANCE:
                angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
                raise AutosegError(f"{path}: sheared or non-orthogonal grid: file axes {i} and {j} are "
                                   f"{angle:.3g} degrees apart, not 90 (resample it onto an orthogonal grid)")
    for axis, length in enumerate(lengths):
        if abs(length - 1.0) > DIRECTION_TOLERANCE:
            raise AutosegError(f"{path}: direction of file axis {axis} has length {length:g}, not 1 "
                               f"(the direction must be a rotation, with flips allowed)")


def _check_origin(path: Path, origin) -> None:
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise AutosegError(f"{path}: origin {_fmt(origin)} is not finite")


def _check_geometry(path: Path, spacing_ijk, columns: np.ndarray, origin) -> None:
    """The geometry a reader computed: positive finite spacing, a finite origin, an orthonormal
    direction (`columns`: one unit column per file axis)."""
    _check_spacing(path, spacing_ijk)
    _check_origin(path, origin)
    _check_direction(path, columns)


def _size_problem(path: Path, what: str, expected: int, found: int) -> AutosegError:
    if found < expected:
        return AutosegError(f"{path}: unreadable or truncated file ({what} is {found} bytes, the header "
                            f"says {expected})")
    return AutosegError(f"{path}: {what} is {found} bytes, {found - expected} more than the {expected} the "
                        f"header says (its size or data type does not match the data)")


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
    _check_spacing(path, raw["pixdim"][1:1 + n_spatial], "voxel spacing (pixdim)")


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
                    raise _size_problem(path, "the voxel data", data_bytes, found)
            try:
                data = np.asanyarray(image.dataobj)
            except OSError as e:
                if type(e) is not OSError or not compressed:
                    raise
                # nibabel's short read: the stream ended cleanly (trailer checked) before the data did
                raise _size_problem(path, "the decompressed voxel data", data_bytes, stream.tell() - offset) from None
            if compressed:
                extra = 0
                while chunk := stream.read(_CHUNK):
                    extra += len(chunk)
                if extra:
                    raise _size_problem(path, "the decompressed voxel data", data_bytes, data_bytes + extra)
    except AutosegError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _compressed_problem(path, e) from None
    except Exception as e:  # nibabel raises many types for damaged files
        raise _unreadable(path, e) from None

    n_spatial = min(3, data.ndim)
    linear = np.asarray(image.affine, dtype=np.float64)[:3, :n_spatial]
    spacing_ijk = np.sqrt((linear ** 2).sum(axis=0))
    _check_geometry(path, spacing_ijk, linear / np.where(spacing_ijk > 0, spacing_ijk, 1.0), image.affine[:3, 3])
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

_MAX_HEADER = 1 << 20  # a text header longer than this is not looked into (ITK still reads it)


@dataclass(frozen=True)
class _Payload:
    """Where an ITK-format file keeps its voxel bytes, as its header says."""

    data_path: Path
    offset: int  # first byte of the (possibly compressed) data in data_path
    encoding: str  # "raw", "gzip" (NRRD) or "zlib" (MetaImage; a gzip stream is accepted too)
    at_end: bool = False  # raw data that ends the file (NRRD byte skip -1, MetaImage HeaderSize -1)
    skip_after_decompression: int = 0  # NRRD byte skip with gzip


def _header_fields(head: bytes, separator: str, stop) -> tuple[dict[str, str], int | None]:
    """{lower-case key: value} of a text header, and the byte after the line where `stop(key, line)`
    holds (None when no such line is in `head`). Comments ('#') and NRRD key/value pairs (':=') are
    skipped; keys seen twice keep their first value."""
    fields: dict[str, str] = {}
    position = 0
    for raw_line in head.splitlines(keepends=True):
        position += len(raw_line)
        if not raw_line.endswith((b"\n", b"\r")):
            break  # cut off by _MAX_HEADER
        line = raw_line.decode("latin-1").rstrip("\r\n")
        key = ""
        pair = ":=" in line and (separator not in line or line.index(":=") < line.index(separator))
        if separator in line and not line.startswith("#") and not pair:
            key, value = (part.strip() for part in line.split(separator, 1))
            key = key.lower()
            fields.setdefault(key, value)
        if stop(key, line):
            return fields, position
    return fields, None


def _floats(path: Path, text: str, what: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise AutosegError(f"{path}: {what} {text!r} is not a list of numbers") from None


def _skip_lines(data_path: Path, start: int, lines: int) -> int:
    """The byte after `lines` newlines from `start` (NRRD line skip)."""
    with open(data_path, "rb") as f:
        f.seek(start)
        for _ in range(lines):
            if not f.readline():
                break
        return f.tell()


def _metaimage_payload(path: Path) -> _Payload | None:
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    fields, data_start = _header_fields(head, "=", lambda key, _: key == "elementdatafile")
    n_dims = int(float(fields.get("ndims", "3") or 3))
    # ITK stops parsing a number list at 'nan' and fills in zeros: check the values as written
    if "elementspacing" in fields:
        _check_spacing(path, _floats(path, fields["elementspacing"], "ElementSpacing"))
    for key in ("offset", "position", "origin"):
        if key in fields:
            _check_origin(path, _floats(path, fields[key], "Offset"))
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            matrix = _floats(path, fields[key], "TransformMatrix")
            if matrix.size == n_dims * n_dims:
                _check_direction(path, matrix.reshape(n_dims, n_dims).T)  # ITK's direction is its transpose
            break
    name = fields.get("elementdatafile", "")
    if data_start is None or not name or name.upper() == "LIST" or "%" in name or len(name.split()) > 1:
        return None  # no data-file line, or data split over several files: ITK alone decides
    compressed = fields.get("compresseddata", "false").lower() == "true"
    header_size = int(float(fields.get("headersize", "0") or 0))
    if name.upper() == "LOCAL":
        data_path, offset = path, data_start
    else:
        data_path, offset = path.parent / name, 0
    if not data_path.is_file():
        raise AutosegError(f"{path}: its data file {data_path.name} is missing")
    if header_size == -1 and not compressed:
        return _Payload(data_path, offset, "raw", at_end=True)
    return _Payload(data_path, offset + max(header_size, 0), "zlib" if compressed else "raw")


def _nrrd_payload(path: Path) -> _Payload | None:
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    if not head.startswith(b"NRRD000"):
        raise AutosegError(f"{path}: not a NRRD file (it does not start with NRRD000x)")
    fields, data_start = _header_fields(head, ": ", lambda key, line: line == "")
    for old, new in (("datafile", "data file"), ("lineskip", "line skip"), ("byteskip", "byte skip")):
        if old in fields:
            fields.setdefault(new, fields[old])
    if "space directions" in fields:
        vectors = [v for v in re.findall(r"\(([^)]*)\)|none", fields["space directions"]) if v]
        columns = np.array([_floats(path, v, "space directions") for v in vectors]).T
        if columns.size:
            lengths = np.sqrt((columns ** 2).sum(axis=0))
            _check_spacing(path, lengths, "voxel spacing (length of each space direction)")
            _check_direction(path, columns / lengths)
    if "space origin" in fields:
        _check_origin(path, _floats(path, fields["space origin"].strip("()"), "space origin"))
    if "spacings" in fields:
        values = [float(v) for v in fields["spacings"].split() if v.lower() != "nan"]
        _check_spacing(path, values, "voxel spacing (spacings)")
    encoding = fields.get("encoding", "").lower()
    name = fields.get("data file", "")
    if encoding in ("gz", "gzip"):
        encoding = "gzip"
    elif encoding != "raw":
        return None  # text, hex, bzip2: ITK parses or refuses them itself
    if not name:
        if data_start is None:
            return None
        data_path, start = path, data_start
    elif name.upper().startswith("LIST") or len(name.split()) > 1:
        return None  # data split over several files
    else:
        data_path, start = path.parent / name, 0
        if not data_path.is_file():
            raise AutosegError(f"{path}: its data file {data_path.name} is missing")
    start = _skip_lines(data_path, start, int(fields.get("line skip", "0") or 0))
    byte_skip = int(fields.get("byte skip", "0") or 0)
    if encoding == "gzip":
        return _Payload(data_path, start, "gzip", skip_after_decompression=max(byte_skip, 0))
    if byte_skip == -1:
        return _Payload(data_path, start, "raw", at_end=True)
    return _Payload(data_path, start + max(byte_skip, 0), "raw")


def _decompressed_size(path: Path, payload: _Payload) -> int:
    """Decompress the payload to its end, output discarded, so that its checksum is verified.

    ITK does not look: its NRRD reader stops at the last voxel, before the gzip CRC32, and its
    MetaImage reader inflates without checking the Adler-32; both return damaged voxels silently.
    gzip: every member's CRC32 and length are checked and members are concatenated; zero bytes
    after the end are padding (as gzip(1) has it); anything else after the end is refused.
    """
    gzip_stream = payload.encoding == "gzip"
    wbits = zlib.MAX_WBITS | (16 if gzip_stream else 32)  # gzip only; or zlib/gzip by header. Trailer checked.
    total = 0
    with open(payload.data_path, "rb") as f:
        f.seek(payload.offset)
        inflater = zlib.decompressobj(wbits)
        data = f.read(_CHUNK)
        while True:
            out = inflater.decompress(data, _CHUNK)  # bounded output: zeros compress 1000-fold
            total += len(out)
            if inflater.eof:
                data = inflater.unused_data.lstrip(b"\0")
                while not data:
                    data = f.read(_CHUNK)
                    if not data:
                        return total
                    data = data.lstrip(b"\0")
                if len(data) < 2:
                    data += f.read(1)
                if not (gzip_stream and data.startswith(b"\x1f\x8b")):
                    raise AutosegError(f"{path}: corrupt compressed data (junk after the end of the compressed "
                                       f"stream, where only another gzip member or zero padding may follow)")
                inflater = zlib.decompressobj(wbits)  # the next gzip member
                continue
            data = inflater.unconsumed_tail or f.read(_CHUNK)
            if not data and not out:
                raise EOFError("compressed data ends early")


def _verify_payload(path: Path, payload: _Payload, data_bytes: int) -> None:
    name = "the voxel data" if payload.data_path == path else f"data file {payload.data_path.name}"
    if payload.encoding == "raw":
        found = payload.data_path.stat().st_size - payload.offset
        if found < data_bytes or (found > data_bytes and not payload.at_end):
            raise _size_problem(path, name, data_bytes, found)
        return
    try:
        total = _decompressed_size(path, payload)
    except (EOFError, zlib.error) as e:
        raise _compressed_problem(path, e, "gzip CRC32" if payload.encoding == "gzip" else "zlib Adler-32") from None
    expected = data_bytes + payload.skip_after_decompression
    if total != expected:
        raise _size_problem(path, f"{name} (decompressed)", expected, total)


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
        payload = (_metaimage_payload(path) if ending in (".mha", ".mhd")
                   else _nrrd_payload(path) if ending in (".nrrd", ".nhdr") else None)
    except ValueError:
        payload = None  # a header field we cannot parse: ITK's reader decides, with its own message
    except OSError as e:
        raise _unreadable(path, e) from None
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
            _verify_payload(path, payload, voxels * _COMPONENT_BYTES[pixel])
        except OSError as e:
            raise _unreadable(path, e) from None
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
    _check_geometry(path, spacing[:n_spatial], direction[:n_spatial, :n_spatial], origin[:n_spatial])
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
        raise _compressed_problem(path, e) from None
    except Exception as e:
        raise _unreadable(path, e) from None
