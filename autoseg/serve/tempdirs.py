"""The server's own temp folder, `<temp dir>/autoseg-serve-<pid>`, one sub-folder per request.

A server killed with SIGKILL cannot clean up; the next one to start under the same temp dir removes
every `autoseg-serve-<pid>` folder of this user whose process is gone.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.jsonio import process_alive

PREFIX = "autoseg-serve-"


def _remove_if_ours(path: Path) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # never follow links, never others' folders
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove leftover `autoseg-serve-<pid>` folders (of this user) whose process is gone; returns them."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        suffix = path.name[len(PREFIX):]
        if not path.name.startswith(PREFIX) or not suffix.isdigit():
            continue
        pid = int(suffix)
        if (pid == os.getpid() or not process_alive(pid)) and _remove_if_ours(path):
            removed.append(path)
    return removed


def make_temp_root(temp_dir: str | os.PathLike | None = None) -> Path:
    """`<temp_dir>/autoseg-serve-<pid>` (mode 700), after removing stale ones."""
    parent = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AutosegError(f"{parent}: cannot create the temp folder ({e.strerror})") from None
    remove_stale(parent)
    root = parent / f"{PREFIX}{os.getpid()}"
    try:
        root.mkdir(mode=0o700)
    except OSError as e:
        raise AutosegError(f"{root}: cannot create the server's temp folder ({e.strerror})") from None
    return root


def remove_temp_root(root: Path) -> None:
    _remove_if_ours(root)
