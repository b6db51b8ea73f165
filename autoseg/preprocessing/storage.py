"""Preprocessed case files: uncompressed .npy, so training can memory-map a random patch
without reading the volume, written atomically (temp file + fsync + rename)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.jsonio import TEMP_PREFIX, atomic_path
from autoseg.preprocessing.properties import CaseProperties, load_properties


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temp_files(folder: Path) -> None:
    """Temp files of a run that was killed; never complete, never read."""
    if folder.is_dir():
        for path in folder.glob(f"{TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)


def load_case(folder: Path, case_id: str, mmap: bool = True):
    """(image, label, properties); arrays memory-mapped read-only unless mmap=False."""
    data_path, seg_path, props_path = case_paths(Path(folder), case_id)
    mode = "r" if mmap else None
    try:
        return np.load(data_path, mmap_mode=mode), np.load(seg_path, mmap_mode=mode), load_properties(props_path)
    except (OSError, ValueError) as e:
        raise AutosegError(f"{data_path.parent}/{case_id}: preprocessed case unreadable ({e})") from None


def is_complete(folder: Path, case_id: str, signature: str) -> bool:
    """True when all three files exist, agree with each other and were made from the same inputs."""
    data_path, seg_path, props_path = case_paths(folder, case_id)
    if not (data_path.is_file() and seg_path.is_file() and props_path.is_file()):
        return False
    try:
        props: CaseProperties = load_properties(props_path)
        data = np.load(data_path, mmap_mode="r")
        seg = np.load(seg_path, mmap_mode="r")
    except (AutosegError, OSError, ValueError):
        return False
    shape = list(props.shape_after_resampling)
    return props.signature == signature and list(data.shape[1:]) == shape and list(seg.shape) == shape
