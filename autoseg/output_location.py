"""Where outputs go: checked before any work starts, and OS errors while writing said in one line.

Why a module of its own: every command that writes has the same ways to fail at the same moment — its
folder is a file, a parent is a file, the disk is read-only or full, a name is too long — and a user
should learn it in one line naming the path before an hour of fingerprinting or prediction, not from a
traceback after it. `check_output_dir` / `check_output_file` run at each door (plan_dataset,
preprocess_dataset, train, predict, evaluate_folder, find_best, export_package, the server's temp dir).
What can still happen while writing (a disk filling up meanwhile) reaches the CLI as an OSError, which
`writing_errors` turns into "PATH: plain words; what to do (ERRNO)".

Checks never write anything that stays: the probe is a temp file created and removed at once, and a
missing output folder is not created here (the door creates it when work starts).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.jsonio import NAME_MAX, TEMP_PREFIX

MIN_FREE_BYTES = 1 << 20  # under this much free space every command is refused up front: the disk is full

# errno -> (plain words, what to do)
LOCATION_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the disk", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EACCES: ("permission denied", "check its permissions or use another folder"),
    errno.EPERM: ("operation not permitted", "check its permissions or use another folder"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable disk"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("is a folder, not a file", "choose a file name"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter name"),
    errno.EEXIST: ("a file is in the way of a folder", "remove it or choose another path"),
}

_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"\d+-(.+)$")


def is_location_error(error: BaseException) -> bool:
    """True for an OSError that says where an output goes is wrong (full, read-only, mis-typed), not the data."""
    return isinstance(error, OSError) and error.errno in LOCATION_ERRNOS


# errors about the whole folder (unlike a name too long or a folder in the way of one file)
FOLDER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def stops_the_run(error: BaseException) -> bool:
    """True when an error writing one output means every later output in that folder fails the same way
    (disk full, quota, read-only, permissions): a run over many cases should stop, not report each."""
    return isinstance(error, OSError) and error.errno in FOLDER_ERRNOS


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def describe_os_error(error: OSError, path_hint: str | os.PathLike | None = None) -> str:
    """One line for an OSError: the file it names (a temp file shown as the output it stands for), else the
    hint; plain words; what to do; the errno name."""
    name = error.filename if error.filename is not None else path_hint
    if name is not None:
        name = Path(os.fsdecode(name))
        match = _TEMP_NAME.match(name.name)
        if match:
            name = name.with_name(match.group(1))
    words, remedy = LOCATION_ERRNOS.get(error.errno, (error.strerror or str(error), ""))
    line = f"{_show(name)}: {words}" if name is not None else words
    return line + (f"; {remedy}" if remedy else "") + f" ({_errno_name(error.errno)})"


@contextlib.contextmanager
def writing_errors(path_hint: str | os.PathLike | None = None):
    """Context manager (and decorator) that turns an OSError of a location kind (LOCATION_ERRNOS) into an
    AutosegError of one line naming the file (from the error, else `path_hint`). Other OSErrors (a failing
    disk, EIO) pass through unchanged: those are not something a different path would fix."""
    try:
        yield
    except OSError as e:
        if not is_location_error(e):
            raise
        raise AutosegError(describe_os_error(e, path_hint)) from None


def _probe(folder: Path) -> int | None:
    """Create and remove a temp file in `folder`; None when that worked, else the errno. os.access alone
    is not enough: it says yes to root on a read-only mount of some file systems and knows nothing of
    quotas or a full inode table."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-probe-", dir=folder)
    except OSError as e:
        return e.errno if e.errno is not None else errno.EACCES
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    if not os.access(folder, os.W_OK | os.X_OK):
        return errno.EACCES
    return None


def diagnose_write_failure(folder: str | os.PathLike) -> int | None:
    """The likely errno behind a write that failed without saying why (ITK and torch.save turn the OS error
    into a RuntimeError): ENOSPC when the disk is (nearly) full, else the probe's errno; None when the
    folder looks fine, so the original error should stand."""
    folder = Path(folder)
    try:
        if shutil.disk_usage(folder).free < 64 * 1024:
            return errno.ENOSPC
    except OSError:
        return None
    return _probe(folder)


def _fail(path: Path, what: str, words: str, code: int, remedy: str) -> AutosegError:
    return AutosegError(f"{path}: {words}; {remedy} ({_errno_name(code)})")


def _show(path: Path) -> str:
    """The path for a message; a path made long by an absurd name is cut in the middle."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:100]}...{text[-40:]}"


def _check_names(path: Path, what: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise AutosegError(f"{_show(path)}: a name in the path of the {what} is {len(os.fsencode(part))} "
                               f"bytes long, more than the {NAME_MAX} a file name may have; choose a shorter "
                               f"name (ENAMETOOLONG)")
    limit = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    if len(os.fsencode(str(path.absolute()))) >= limit:
        raise AutosegError(f"{_show(path)}: the path of the {what} is longer than the {limit} bytes a path "
                           f"may have; choose a shorter one (ENAMETOOLONG)")


def _nearest_existing(path: Path) -> Path:
    existing = path.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return existing


def check_output_dir(path: str | os.PathLike, *, what: str, expected_bytes: int | None = None,
                     remedy: str | None = None) -> Path:
    """Refuse, in one line naming the path and what to do, an output folder that cannot be written: it is
    a file; a parent is a file; its name is too long; the nearest existing folder is read-only or not
    ours (os.access and a real probe); the disk has less free space than `expected_bytes` (a rough
    estimate of what the command will write; at least MIN_FREE_BYTES). A missing folder is fine when it
    can be created. `remedy` replaces the generic advice (e.g. "pass -o DIR"). Returns the path."""
    path = Path(path)
    _check_names(path, what)
    if path.exists() and not path.is_dir():
        raise _fail(path, what, f"the {what} is a file, not a folder", errno.ENOTDIR,
                    remedy or f"remove it or choose another {what}")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise _fail(path, what, f"cannot create the {what}: {existing} is a file, not a folder", errno.ENOTDIR,
                    remedy or "choose another path")
    _check_writable(path, existing, what, remedy)
    _check_free_space(path, existing, what, expected_bytes, remedy)
    return path


def check_output_file(path: str | os.PathLike, *, what: str, expected_bytes: int | None = None,
                      remedy: str | None = None) -> Path:
    """check_output_dir for the folder of an output file, and the file itself must not be a folder."""
    path = Path(path)
    _check_names(path, what)
    if path.is_dir():
        raise _fail(path, what, f"is a folder; the {what} must be a file name", errno.EISDIR,
                    remedy or "give a file name, e.g. " + str(path / "NAME"))
    existing = _nearest_existing(path.parent)  # the parent itself when it exists, file or folder
    if not existing.is_dir():
        raise _fail(path, what, f"cannot write the {what}: {existing} is a file, not a folder", errno.ENOTDIR,
                    remedy or "choose another path")
    _check_writable(path, existing, what, remedy)
    _check_free_space(path, existing, what, expected_bytes, remedy)
    return path


def _check_writable(path: Path, existing: Path, what: str, remedy: str | None) -> None:
    code = _probe(existing)
    if code is None:
        return
    words = LOCATION_ERRNOS.get(code, (os.strerror(code), ""))[0]
    where = "" if existing == path.absolute() else f" in {existing}"
    raise _fail(path, what, f"cannot write the {what}{where}: {words}", code,
                remedy or LOCATION_ERRNOS.get(code, ("", "choose another folder"))[1])


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free_space(path: str | os.PathLike, *, what: str, expected_bytes: int | None = None) -> None:
    """Only the free-space part of check_output_dir, for a door that learns its output's size after the
    location was checked (e.g. a package's members, once they are packed)."""
    path = Path(path)
    _check_free_space(path, _nearest_existing(path), what, expected_bytes, None)


def _check_free_space(path: Path, existing: Path, what: str, expected_bytes: int | None,
                      remedy: str | None) -> None:
    need = max(MIN_FREE_BYTES, int(expected_bytes or 0))
    free = shutil.disk_usage(existing).free
    if free < need:
        raise _fail(path, what, f"not enough free space for the {what}: {_mb(free)} free, about {_mb(need)} "
                                f"needed", errno.ENOSPC, remedy or "free some space or write elsewhere")
