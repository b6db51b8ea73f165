"""Reading one case's voxels and checking them: dimensions, grids, label values, finite intensities."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.dataset.image_io import Geometry, read_image
from autoseg.dataset.layout import Case, Dataset
from autoseg.errors import AutosegError
from autoseg.label_scheme import LabelScheme


@dataclass
class CaseData:
    case_id: str
    image: np.ndarray  # (C, z, y, x) float32
    label: np.ndarray  # (z, y, x), smallest integer dtype that holds the labels
    geometry: Geometry


def _read(path, problems: list[str]):
    try:
        return read_image(path)
    except AutosegError as e:
        problems.append(str(e))
        return None, None


def read_channels(files, n_channels: int | None, multi_channel_file: bool, problems: list[str],
                  expectation: str = "dataset.json declares"):
    """Read one scan's channels: one 3D file per channel, or (multi_channel_file) a single 3D/4D file.

    Returns (channels, geometry of channel 0); every problem found is appended to `problems`, one line each
    naming its file: unreadable files, wrong dimensionality or channel count, channels on different grids,
    NaN/Inf voxels. `expectation` says where the channel count comes from, for those messages; None for
    `n_channels` means the count is unknown (dataset.json's is broken, reported elsewhere) and not checked.
    """
    files = list(files)
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    if multi_channel_file:
        path = files[0]
        array, geometry = _read(path, problems)
        if array is not None:
            if array.ndim == 3 and n_channels in (1, None):
                channels = [array]
            elif array.ndim == 4 and n_channels in (array.shape[0], None):
                channels = list(array)
            elif array.ndim == 4:
                problems.append(f"{path}: has {array.shape[0]} channels but {expectation} {n_channels}")
            elif array.ndim == 3:
                problems.append(f"{path}: is 3D (one channel) but {expectation} {n_channels} channels")
            else:
                problems.append(f"{path}: is {array.ndim}D, expected a 3D or 4D image")
    else:
        for path in files:
            array, g = _read(path, problems)
            if array is None:
                continue
            if array.ndim != 3:
                problems.append(f"{path}: is {array.ndim}D, expected a 3D image (one file per channel)")
                continue
            if channels:
                if array.shape != channels[0].shape:
                    problems.append(f"{path}: shape {array.shape} differs from channel 0's {channels[0].shape}")
                    continue
                diffs = g.matches(geometry)
                if diffs:
                    problems.append(f"{path}: geometry differs from channel 0 ({'; '.join(diffs)})")
                    continue
            else:
                geometry = g
            channels.append(array)

    for c, array in enumerate(channels):
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            where = files[0] if multi_channel_file else files[c]
            problems.append(f"{where}: {bad} NaN/Inf voxel(s)" + (f" in channel {c}" if multi_channel_file else ""))
    return channels, geometry


def read_case(dataset: Dataset, case: Case) -> tuple[CaseData | None, list[str]]:
    """Read and validate one case. Returns (data, []) or (None, problems), one line per problem."""
    problems: list[str] = []
    # an empty channel_names only comes from a scan of a broken dataset.json: no count to check against
    n_channels = dataset.num_channels or None
    channels, geometry = read_channels(case.image_files, n_channels, dataset.multi_channel_files, problems)

    label, label_geometry = _read(case.label_file, problems)
    if label is not None:
        if label.ndim != 3:
            problems.append(f"{case.label_file}: is {label.ndim}D, expected a 3D label map")
            label = None
    if label is not None and channels:
        if label.shape != channels[0].shape:
            problems.append(f"{case.label_file}: shape {label.shape} differs from image shape {channels[0].shape}")
        else:
            diffs = label_geometry.matches(geometry)
            if diffs:
                problems.append(f"{case.label_file}: geometry differs from the image ({'; '.join(diffs)})")
    if label is not None:
        label = _check_label_values(case.label_file, label,
                                    LabelScheme.of(dataset).annotated_values if dataset.labels else [], problems)

    if problems or not channels or (n_channels is not None and len(channels) != n_channels) or label is None:
        return None, problems
    image = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    return CaseData(case.case_id, image, label, geometry), []


def _check_label_values(path, label: np.ndarray, declared: list[int], problems: list[str]):
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            problems.append(f"{path}: label map contains NaN/Inf")
            return None
        if not np.array_equal(label, np.round(label)):
            problems.append(f"{path}: label map has non-integer values (labels must be whole numbers)")
            return None
    if not declared:  # a scan of a broken dataset.json: nothing to check the values against
        return label
    values = np.unique(label)
    undeclared = sorted(set(int(v) for v in values) - set(declared))
    if undeclared:
        shown = ", ".join(str(v) for v in undeclared[:10]) + (" ..." if len(undeclared) > 10 else "")
        problems.append(f"{path}: label value(s) {shown} not declared in dataset.json")
        return None
    dtype = np.uint8 if max(declared) < 256 and min(declared) >= 0 else np.int16
    return label.astype(dtype, copy=False)
