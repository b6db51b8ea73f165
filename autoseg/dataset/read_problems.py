"""One-line problems of a file being read, shared by the readers of every format."""
from __future__ import annotations

from pathlib import Path

from autoseg.errors import AutosegError


CHUNK = 1 << 20  # bytes read (or decompressed) per step when a payload is only verified


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def unreadable(path: Path, e: BaseException) -> AutosegError:
    return AutosegError(f"{path}: unreadable or truncated file ({first_line(e)})")


def compressed_problem(path: Path, e: BaseException, checksum: str = "gzip CRC32") -> AutosegError:
    """One line for a damaged compressed stream (gzip or zlib), whichever layer noticed it;
    `checksum` names the stream's check (zlib reports a failing CRC32 and Adler-32 alike)."""
    if isinstance(e, EOFError):
        return AutosegError(f"{path}: unreadable or truncated file (the compressed data ends before its "
                            f"end-of-stream marker)")
    detail = first_line(e)
    if "CRC check failed" in detail:
        detail = "gzip CRC32 check failed: the decompressed data is not what was written"
    elif "Incorrect length" in detail or "incorrect length check" in detail:
        detail = "gzip length check failed: the decompressed data is not what was written"
    elif "incorrect data check" in detail:
        detail = f"{checksum} check failed: the decompressed data is not what was written"
    elif "Not a gzipped file" in detail:
        detail = "not gzip data where a gzip member should start: not a gzip file, or junk after its end"
    return AutosegError(f"{path}: corrupt compressed data ({detail})")


def size_problem(path: Path, what: str, expected: int, found: int) -> AutosegError:
    if found < expected:
        return AutosegError(f"{path}: unreadable or truncated file ({what} is {found} bytes, the header "
                            f"says {expected})")
    return AutosegError(f"{path}: {what} is {found} bytes, {found - expected} more than the {expected} the "
                        f"header says (its size or data type does not match the data)")
