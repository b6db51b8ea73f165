"""Scans to predict: which files make up each case, and reading them as the model expects.

INPUT is a folder of `{case}_{XXXX}{ending}` files (one per channel, like training images), a
folder of single files (3D for one-channel models, 4D for multi-channel ones), or one such file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autoseg.dataset.image_io import file_ending, nifti_header_bytes
from autoseg.dataset.validation import CaseData, read_channels
from autoseg.errors import AutosegError
from autoseg.jsonio import TEMP_PREFIX

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    case_id: str
    files: tuple[Path, ...]  # one per channel in channel order, or one (3D or 4D) file
    single_file: bool

    @property
    def ending(self) -> str:
        return file_ending(self.files[0])


def _stem(path: Path) -> str:
    return path.name[:-len(file_ending(path))]


def image_files(folder: Path) -> list[Path]:
    """The image files at the top of `folder` that prediction reads, sorted (hidden and temp files left out)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and file_ending(p) and not p.name.startswith((".", TEMP_PREFIX)))


def find_input_cases(input_path: str | Path, num_channels: int) -> tuple[list[InputCase], dict[str, str]]:
    """The cases under INPUT, sorted by id, and {case id: one line} for cases ruled out by their
    file names (a missing or extra channel file). Raises when there is nothing to predict at all."""
    input_path = Path(input_path)
    if input_path.is_file():
        if file_ending(input_path) is None:
            raise AutosegError(f"{input_path}: not an image file this tool reads")
        match = CHANNEL_SUFFIX.match(_stem(input_path))
        case_id = match["case"] if match and num_channels == 1 else _stem(input_path)
        return [InputCase(case_id, (input_path,), True)], {}
    if not input_path.is_dir():
        raise AutosegError(f"{input_path}: no such file or folder")
    files = image_files(input_path)
    if not files:
        raise AutosegError(f"{input_path}: no image files to predict")
    by_channel: dict[str, dict[int, Path]] = {}
    singles: list[Path] = []
    for path in files:
        match = CHANNEL_SUFFIX.match(_stem(path))
        if match:
            by_channel.setdefault(match["case"], {})[int(match["channel"])] = path
        else:
            singles.append(path)
    cases, problems = [], {}
    for case_id, channels in by_channel.items():
        wanted = list(range(num_channels))
        missing = [c for c in wanted if c not in channels]
        extra = sorted(set(channels) - set(wanted))
        if missing:
            first = channels[min(channels)]
            names = ", ".join(f"{case_id}_{c:04d}{file_ending(first)}" for c in missing)
            problems[case_id] = (f"{first.parent / names.split(', ')[0]}: missing (case {case_id} needs "
                                 f"{num_channels} channel file(s); missing {names})")
            continue
        if extra:
            problems[case_id] = f"{channels[extra[0]]}: the model has {num_channels} channel(s), no channel {extra[0]}"
            continue
        cases.append(InputCase(case_id, tuple(channels[c] for c in wanted), False))
    for path in singles:
        cases.append(InputCase(_stem(path), (path,), True))
    ids = [c.case_id for c in cases]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise AutosegError(f"{input_path}: case {clashes[0]} is given both as channel files and as a single file")
    return sorted(cases, key=lambda c: c.case_id), problems


def read_any_case(case, channel_names: list[str]) -> tuple[CaseData, bytes | None, list[str]]:
    """An image-file case or a DICOM case (autoseg.dicom.series.DicomCase) read: (C, z, y, x) float32 with
    its geometry, the NIfTI header (None for DICOM), and warnings (a DICOM modality unlike the model's)."""
    if isinstance(case, InputCase):
        return (*read_input_case(case, len(channel_names)), [])
    from autoseg.dicom.cases import read_dicom_case

    image, geometry, warnings = read_dicom_case(case, channel_names)
    return CaseData(case.case_id, image, None, geometry), None, warnings


def read_input_case(case: InputCase, num_channels: int) -> tuple[CaseData, bytes | None]:
    """The case's channels as (C, z, y, x) float32 with the first file's geometry and NIfTI header.

    Raises AutosegError with one line naming the file for unreadable or truncated files, the wrong
    channel count, channels on different grids and NaN/Inf voxels.
    """
    import numpy as np

    problems: list[str] = []
    channels, geometry = read_channels(case.files, num_channels, case.single_file, problems,
                                       expectation="the model expects")
    if problems:
        raise AutosegError(problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    image = np.empty((len(channels), *channels[0].shape), np.float32)  # one float32 copy, not two
    for c, channel in enumerate(channels):
        image[c] = channel
    del channels
    return CaseData(case.case_id, image, None, geometry), nifti_header_bytes(case.files[0])
