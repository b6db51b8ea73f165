"""DICOM series made into cases: one series per model channel, checked against the model's channels
(docs/dicom.md, "How series become cases" and "Multi-channel models")."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset.geometry import Geometry
from autoseg.dicom.series import DicomSeries, SeriesScan, read_series, safe_id
from autoseg.errors import AutosegError


MODALITY_OF_CHANNEL = (  # a channel name (dataset.json) -> the DICOM Modality it implies
    (re.compile(r"^(ct|cta|ncct|cect)\b", re.I), "CT"),
    (re.compile(r"^(mr|mri|t1|t1w|t1c|t1ce|t1gd|t2|t2w|flair|adc|dwi|pd|swi)", re.I), "MR"),
    (re.compile(r"^(pet|pt)\b", re.I), "PT"),
)


def expected_modality(channel_name: str) -> str | None:
    for pattern, modality in MODALITY_OF_CHANNEL:
        if pattern.match(channel_name.strip()):
            return modality
    return None


@dataclass(frozen=True)
class DicomCase:
    """One case to predict from DICOM: one series per model channel, in channel order."""

    case_id: str
    series: tuple[DicomSeries, ...]
    ending: str = ".nii.gz"  # of the NIfTI label map, when one is written

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for s in self.series for p in s.files)

    @property
    def reference(self) -> DicomSeries:
        """The series whose grid the prediction is on and whose slices the SEG references (channel 0)."""
        return self.series[0]


def dicom_cases(scan: SeriesScan, channel_names: list[str], *, series_uids=None,
                channel_series: str | Path | None = None) -> tuple[list[DicomCase], dict[str, str]]:
    """Cases to predict and {case id: one line} for those refused. One-channel models: each series is a
    case (`series_uids` restricts them). Several channels: `channel_series`, a JSON file
    {"case id": ["SeriesInstanceUID of channel 0", ...], ...}, says which series make up each case."""
    by_uid = {s.series_uid: s for s in scan.series}
    problems: dict[str, str] = {}
    if channel_series is None:
        if len(channel_names) > 1:
            raise AutosegError(f"the model reads {len(channel_names)} channels ({', '.join(channel_names)}): say "
                               f"which series make up each case with --channel-series FILE (docs/dicom.md)")
        chosen = list(scan.series)
        if series_uids:
            unknown = [u for u in series_uids if u not in by_uid]
            if unknown:
                raise AutosegError(f"{scan.folder}: no image series with SeriesInstanceUID {unknown[0]}")
            chosen = [s for s in scan.series if s.series_uid in set(series_uids)]
        groups = [(s.name, (s,)) for s in chosen]
    else:
        groups = []
        for case_id, uids in _read_channel_series(Path(channel_series), len(channel_names)).items():
            if series_uids and not set(uids) & set(series_uids):
                continue
            missing = [(c, u) for c, u in enumerate(uids) if u not in by_uid]
            if missing:
                c, u = missing[0]
                problems[case_id] = (f"case {case_id}: channel {c} ({channel_names[c]}) series {u} is not under "
                                     f"{scan.folder}")
                continue
            groups.append((case_id, tuple(by_uid[u] for u in uids)))
    cases = []
    for case_id, members in groups:
        refused = next((s.problem for s in members if s.problem is not None), None)
        if refused is not None:
            problems[case_id] = refused
            continue
        reference = members[0]
        for s in members[1:]:
            if (s.rows, s.columns, len(s.slices)) != (reference.rows, reference.columns, len(reference.slices)) \
                    or s.geometry.matches(reference.geometry):
                problems[case_id] = (f"case {case_id}: series {s.name} is not on the grid of series "
                                     f"{reference.name} (channels must share one grid; resample first)")
                break
        else:
            cases.append(DicomCase(case_id, members))
    return sorted(cases, key=lambda c: c.case_id), problems


def _read_channel_series(path: Path, num_channels: int) -> dict[str, list[str]]:
    try:
        mapping = json.loads(path.read_text())
    except OSError as e:
        raise AutosegError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosegError(f"{path}: not valid JSON ({e})") from None
    example = '{"case1": ["1.2.3.4 (channel 0)", "1.2.3.5 (channel 1)"]}'
    if not isinstance(mapping, dict) or not mapping:
        raise AutosegError(f"{path}: expected an object of cases like {example}")
    for case_id, uids in mapping.items():
        if safe_id(case_id) != case_id:
            raise AutosegError(f"{path}: case id {case_id!r} must be letters, digits, '.', '+' or '-'")
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise AutosegError(f"{path}: {case_id}: expected a list of SeriesInstanceUIDs like {example}")
        if len(uids) != num_channels:
            raise AutosegError(f"{path}: {case_id}: {len(uids)} series for a model of {num_channels} channel(s)")
    return mapping


def read_dicom_case(case: DicomCase, channel_names: list[str]) -> tuple[np.ndarray, Geometry, list[str]]:
    """(C, z, y, x) float32 on the reference series' grid, its geometry, and warnings (a modality that does
    not fit the model's channel)."""
    warnings = []
    image = np.empty((len(case.series), len(case.reference.slices), case.reference.rows, case.reference.columns),
                     np.float32)
    for c, series in enumerate(case.series):
        image[c] = read_series(series)
        wanted = expected_modality(channel_names[c])
        if wanted is not None and series.modality and series.modality != wanted:
            warnings.append(f"series {series.name}: modality {series.modality}, but the model's channel {c} is "
                            f"{channel_names[c]} ({wanted})")
    return image, case.reference.geometry, warnings
