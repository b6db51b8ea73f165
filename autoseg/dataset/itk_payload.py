"""NRRD and MetaImage payloads, verified where ITK does not look: the text header is parsed for the
data's place, encoding and size, and compressed data is decompressed to its checksum (output discarded)
before ITK reads the file."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset.geometry import check_direction, check_origin, check_spacing
from autoseg.dataset.read_problems import CHUNK, compressed_problem, size_problem
from autoseg.errors import AutosegError


_MAX_HEADER = 1 << 20  # a text header longer than this is not looked into (ITK still reads it)


@dataclass(frozen=True)
class Payload:
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


def metaimage_payload(path: Path) -> Payload | None:
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    fields, data_start = _header_fields(head, "=", lambda key, _: key == "elementdatafile")
    n_dims = int(float(fields.get("ndims", "3") or 3))
    # ITK stops parsing a number list at 'nan' and fills in zeros: check the values as written
    if "elementspacing" in fields:
        check_spacing(path, _floats(path, fields["elementspacing"], "ElementSpacing"))
    for key in ("offset", "position", "origin"):
        if key in fields:
            check_origin(path, _floats(path, fields[key], "Offset"))
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            matrix = _floats(path, fields[key], "TransformMatrix")
            if matrix.size == n_dims * n_dims:
                check_direction(path, matrix.reshape(n_dims, n_dims).T)  # ITK's direction is its transpose
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
        return Payload(data_path, offset, "raw", at_end=True)
    return Payload(data_path, offset + max(header_size, 0), "zlib" if compressed else "raw")


def nrrd_payload(path: Path) -> Payload | None:
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
            check_spacing(path, lengths, "voxel spacing (length of each space direction)")
            check_direction(path, columns / lengths)
    if "space origin" in fields:
        check_origin(path, _floats(path, fields["space origin"].strip("()"), "space origin"))
    if "spacings" in fields:
        values = [float(v) for v in fields["spacings"].split() if v.lower() != "nan"]
        check_spacing(path, values, "voxel spacing (spacings)")
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
        return Payload(data_path, start, "gzip", skip_after_decompression=max(byte_skip, 0))
    if byte_skip == -1:
        return Payload(data_path, start, "raw", at_end=True)
    return Payload(data_path, start + max(byte_skip, 0), "raw")


def decompressed_size(path: Path, payload: Payload) -> int:
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
        data = f.read(CHUNK)
        while True:
            out = inflater.decompress(data, CHUNK)  # bounded output: zeros compress 1000-fold
            total += len(out)
            if inflater.eof:
                data = inflater.unused_data.lstrip(b"\0")
                while not data:
                    data = f.read(CHUNK)
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
            data = inflater.unconsumed_tail or f.read(CHUNK)
            if not data and not out:
                raise EOFError("compressed data ends early")


def verify_payload(path: Path, payload: Payload, data_bytes: int) -> None:
    name = "the voxel data" if payload.data_path == path else f"data file {payload.data_path.name}"
    if payload.encoding == "raw":
        found = payload.data_path.stat().st_size - payload.offset
        if found < data_bytes or (found > data_bytes and not payload.at_end):
            raise size_problem(path, name, data_bytes, found)
        return
    try:
        total = decompressed_size(path, payload)
    except (EOFError, zlib.error) as e:
        raise compressed_problem(path, e, "gzip CRC32" if payload.encoding == "gzip" else "zlib Adler-32") from None
    expected = data_bytes + payload.skip_after_decompression
    if total != expected:
        raise size_problem(path, f"{name} (decompressed)", expected, total)
