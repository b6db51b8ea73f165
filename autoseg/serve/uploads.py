"""An upload, from the request body to a case on disk: streamed to the request's own folder with its
size counted, recognised (NIfTI, or a zip of channel files, by content), unzipped safely.

Every problem is a `Problem`: an HTTP status and one line that names the uploaded file, never the
server's temp paths.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autoseg.dataset.image_io import file_ending
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase, find_input_cases

FIELD = "file"
DRAIN_BYTES = 8 * 1024 * 1024  # read (and drop) up to this much of a refused body, so the client sees the answer
DRAIN_S = 3.0  # ... for at most this long
MAX_ZIP_MEMBERS = 4096  # one case: a few channel files, or the slices of one DICOM series
MAX_NAME = 120
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a file, or an empty archive
NIFTI_SIZES = (348, 540)  # sizeof_hdr of NIfTI-1 and NIfTI-2, either byte order
NIFTI_ENDINGS = (".nii.gz", ".nii")


class Problem(Exception):
    """An answer other than 200: status, one line, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Upload:
    path: Path  # where the body's file field was written
    filename: str  # sanitised name the client gave (shown in messages)
    size: int


@dataclass
class UploadedCase:
    case: InputCase
    kind: str  # "nifti", "zip" or "dicom" (a zip of one DICOM series; answered with a DICOM SEG)
    label_name: str  # the label map's file name: {case}{ending}
    ending: str
    shown: dict[str, str] = field(default_factory=dict)  # server path prefix -> what messages show instead

    def show(self, text: str) -> str:
        return _show(text, self.shown)


def safe_name(name: str, default: str = "upload") -> str:
    """A client's file name reduced to one harmless path component: [A-Za-z0-9._-], no leading dot."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base:
        return default
    if len(base) > MAX_NAME:
        ending = file_ending(base) or ""
        base = base[:MAX_NAME - len(ending)] + ending
    return base


# ---------------------------------------------------------------------------------------------- receiving

async def receive(content_type: str | None, stream, folder: Path, limit: int) -> Upload:
    """Parse a multipart/form-data body from `stream` (an async iterator of bytes), writing the field
    named `file` to `folder`; other fields are read and dropped. More than `limit` body bytes: 413."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise Problem(422, f"send the scan as multipart/form-data with a field named '{FIELD}' "
                           f"(curl -F {FIELD}=@scan.nii.gz)")
    state = {"headers": [], "name": b"", "value": b"", "target": None, "found": 0}
    pending: list[bytes] = []
    upload: Upload | None = None
    handle = None

    def on_part_begin():
        state["headers"], state["target"] = [], None

    def on_header_field(data, start, end):
        state["name"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"].append((state["name"].lower(), state["value"]))
        state["name"], state["value"] = b"", b""

    def on_headers_finished():
        nonlocal upload, handle
        disposition = next((v for k, v in state["headers"] if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name", b"").decode("latin-1") != FIELD:
            return
        state["found"] += 1
        if state["found"] > 1:
            raise Problem(400, f"more than one '{FIELD}' field: send one scan (or one zip) per request")
        filename = safe_name(options.get(b"filename", b"").decode("utf-8", "replace"))
        path = folder / filename
        handle = open(path, "wb")
        upload = Upload(path, filename, 0)
        state["target"] = pending

    def on_part_data(data, start, end):
        if state["target"] is not None:
            state["target"].append(data[start:end])

    def on_part_end():
        state["target"] = None

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                 "on_part_end": on_part_end}
    parser = MultipartParser(params[b"boundary"], callbacks)
    received = 0
    iterator = stream.__aiter__()
    try:
        async for chunk in iterator:
            received += len(chunk)
            if received > limit:
                await drain(iterator)
                raise too_large(limit)
            try:
                parser.write(chunk)
            except FormParserError:
                raise Problem(400, "malformed multipart/form-data body") from None
            if pending:
                handle.write(b"".join(pending))
                upload.size += sum(len(p) for p in pending)
                pending.clear()
        try:
            parser.finalize()
        except FormParserError:
            raise Problem(400, "malformed multipart/form-data body (truncated?)") from None
    finally:
        if handle is not None:
            handle.close()
    if upload is None:
        raise Problem(422, f"missing multipart field '{FIELD}' (curl -F {FIELD}=@scan.nii.gz)")
    if upload.size == 0:
        raise Problem(400, f"{upload.filename}: empty upload (0 bytes)")
    return upload


def too_large(limit: int) -> Problem:
    return Problem(413, f"request larger than this server's limit of {limit / (1024 * 1024):.4g} MB (--max-request-mb)")


async def drain(iterator, most: int = DRAIN_BYTES, within_s: float = DRAIN_S) -> None:
    """Read and drop up to `most` more bytes of a body for at most `within_s`, so that a client still
    sending a (small) body reads the early answer instead of a reset connection."""
    import asyncio

    seen = 0
    try:
        async with asyncio.timeout(within_s):
            async for chunk in iterator:
                seen += len(chunk)
                if seen > most:
                    return
    except Exception:  # noqa: BLE001 - a client gone or slow while draining changes nothing
        return


# ---------------------------------------------------------------------------------------------- to a case

def sniff(path: Path) -> str | None:
    """"nii.gz", "nii", "zip" or None, from the first bytes (a file name can say anything)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        return ".nii.gz"
    if head in ZIP_MAGIC:
        return ".zip"
    if len(head) == 4 and (int.from_bytes(head, "little") in NIFTI_SIZES or int.from_bytes(head, "big") in NIFTI_SIZES):
        return ".nii"
    return None


def _with_ending(name: str, ending: str) -> str:
    current = file_ending(name) if not name.lower().endswith(".zip") else ".zip"
    stem = name[:-len(current)] if current else name
    return (stem or "upload") + ending


def open_upload(upload: Upload, work: Path, num_channels: int, max_unpacked: int,
                channel_names: list[str] | None = None) -> UploadedCase:
    """The upload as one case: a NIfTI file as is, a zip unpacked into work/in/ (one case's channel files, or
    the files of one DICOM series when `channel_names` are given and the dicom extra is installed)."""
    kind = sniff(upload.path)
    if kind is None:
        raise Problem(400, f"{upload.filename}: not a NIfTI image (.nii, .nii.gz) or a .zip of channel files")
    inputs = work / "in"
    inputs.mkdir()
    if kind == ".zip":
        shown_zip = upload.filename if upload.filename.lower().endswith(".zip") else _with_ending(upload.filename,
                                                                                                 ".zip")
        unzip(upload.path, inputs, shown_zip, max_unpacked)
        shown = {str(inputs) + "/": f"{shown_zip}/", str(inputs): shown_zip, str(work) + "/": ""}
        try:
            cases, problems = find_input_cases(inputs, num_channels)
        except AutosegError:
            if channel_names is not None and _holds_dicom(inputs):
                return _dicom_upload(inputs, channel_names, shown_zip, shown)
            raise Problem(400, f"{shown_zip}: holds no image files this tool reads (.nii.gz, .nii, ..., or one "
                               f"DICOM series)") from None
        if problems:
            raise Problem(400, _show(next(iter(problems.values())), shown))
        if len(cases) != 1:
            names = ", ".join(c.case_id for c in cases[:4]) + (", ..." if len(cases) > 4 else "")
            raise Problem(400, f"{shown_zip}: holds {len(cases)} cases ({names}); send one case per request")
        case = cases[0]
        for path in case.files:
            check_decoded_size(path, max_unpacked, _show(str(path), shown))
    else:
        name = upload.filename
        if file_ending(name) not in NIFTI_ENDINGS or (file_ending(name) == ".nii.gz") != (kind == ".nii.gz"):
            name = _with_ending(name, kind)
        path = inputs / name
        upload.path.rename(path)
        shown = {str(inputs) + "/": "", str(work) + "/": ""}
        check_decoded_size(path, max_unpacked, name)
        case = find_input_cases(path, num_channels)[0][0]
    ending = case.ending
    return UploadedCase(case, "zip" if kind == ".zip" else "nifti", f"{case.case_id}{ending}", ending, shown)


def _holds_dicom(folder: Path) -> bool:
    from autoseg.dicom.series import holds_dicom

    return holds_dicom(folder)


def _dicom_upload(inputs: Path, channel_names: list[str], shown_zip: str, shown: dict[str, str]) -> UploadedCase:
    from autoseg.dicom.cases import dicom_cases
    from autoseg.dicom.series import find_series

    if len(channel_names) > 1:
        raise Problem(400, f"{shown_zip}: DICOM for a {len(channel_names)}-channel model is not served; use "
                           f"autoseg predict --channel-series")
    try:
        cases, problems = dicom_cases(find_series(inputs), channel_names)
    except AutosegError as e:
        raise Problem(400, _show(str(e), shown)) from None
    if problems:
        raise Problem(400, _show(next(iter(problems.values())), shown))
    if len(cases) != 1:
        raise Problem(400, f"{shown_zip}: holds {len(cases)} DICOM series; send one series per request")
    case = cases[0]
    return UploadedCase(case, "dicom", f"{case.case_id}.seg.dcm", ".seg.dcm", shown)


def _show(text: str, shown: dict[str, str]) -> str:
    for prefix, replacement in shown.items():
        text = text.replace(prefix, replacement)
    return text


def check_decoded_size(path: Path, limit: int, shown: str) -> None:
    """Refuse a NIfTI whose header declares more voxel bytes than `limit` (a gzip bomb, or just too large),
    before anything is decompressed. Unreadable headers are left to the reader, which names the problem."""
    if file_ending(path) not in NIFTI_ENDINGS:
        return
    try:
        import nibabel as nib
        import numpy as np

        header = nib.load(str(path)).header
        shape = header.get_data_shape()
        nbytes = int(np.prod(shape, dtype=np.float64)) * header.get_data_dtype().itemsize
    except Exception:  # noqa: BLE001 - the reader reports damaged files with the right words
        return
    if nbytes > limit:
        raise Problem(413, f"{shown}: its header declares {'x'.join(map(str, shape))} voxels "
                           f"({nbytes / 1024 ** 3:.2f} GiB decoded), over this server's limit of "
                           f"{limit / 1024 ** 3:.2f} GiB")


def unzip(archive: Path, dest: Path, shown: str, max_bytes: int) -> None:
    """Extract a zip's files flat into `dest`, refusing absolute or `..` member names, more than
    MAX_ZIP_MEMBERS files, and more than `max_bytes` decompressed (counted while extracting, not trusted
    from the directory)."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = []
            for info in z.infolist():
                name = info.filename
                pure = PurePosixPath(name.replace("\\", "/"))
                if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
                    raise Problem(400, f"{shown}: member {name!r} would escape its folder; refused")
                if info.is_dir() or "__MACOSX" in pure.parts or pure.name.startswith("."):
                    continue
                members.append(info)
            if len(members) > MAX_ZIP_MEMBERS:
                raise Problem(400, f"{shown}: {len(members)} files; at most {MAX_ZIP_MEMBERS} (one case's channels "
                                   f"or one DICOM series)")
            if sum(i.file_size for i in members) > max_bytes:
                raise Problem(413, f"{shown}: unpacks to more than this server's limit of "
                                   f"{max_bytes / 1024 ** 3:.2f} GiB")
            written: set[str] = set()
            total = 0
            for info in members:
                name = safe_name(PurePosixPath(info.filename.replace("\\", "/")).name)
                if name in written:
                    raise Problem(400, f"{shown}: two members named {name}")
                written.add(name)
                with z.open(info) as src, open(dest / name, "xb") as out:
                    while block := src.read(1 << 20):
                        total += len(block)
                        if total > max_bytes:
                            raise Problem(413, f"{shown}: unpacks to more than this server's limit of "
                                               f"{max_bytes / 1024 ** 3:.2f} GiB")
                        out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError,
            ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Problem(400, f"{shown}: not a readable zip ({detail[:160]})") from None
