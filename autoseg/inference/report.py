"""Per-case prediction report: what went in, which model produced it, and what came out.

A label map alone does not say which model made it or whether it is plausible; the report
keeps the input hashes and model identity beside per-label volumes, component counts and
the input intensities inside each label, so a surprising result can be traced and a
batch can be screened from one CSV without opening the images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError
from autoseg.jsonio import load_versioned, write_json_atomic, write_text_atomic

REPORT_VERSION = 1
HASH_CHUNK_BYTES = 1 << 20
PERCENTILES = (5.0, 50.0, 95.0)
CSV_JOIN = " | "


@dataclass
class ChannelStats:
    """Intensity of one input channel inside one label (all None when the label has no voxels)."""

    channel: str
    mean: float | None
    std: float | None  # population standard deviation (ddof=0)
    p05: float | None
    p50: float | None
    p95: float | None


@dataclass
class LabelStats:
    """Size, fragmentation and input intensities of one foreground label."""

    name: str
    value: int
    voxels: int
    volume_mm3: float
    volume_ml: float
    components: int  # 26-connected
    channels: list[ChannelStats]


@dataclass
class InstanceRecord:
    """One lesion instance (a connected component of one label; autoseg.instances) of the prediction."""

    id: int  # its value in the instance map
    label: str
    value: int
    voxels: int
    volume_mm3: float
    centroid_mm: list[float]  # physical (x, y, z) in the image header's convention (ITK: LPS), as its origin
    centroid_voxel: list[float]  # file index order (i, j, k)
    box_start: list[int]  # file index order (i, j, k), inclusive
    box_stop: list[int]  # exclusive


@dataclass
class InputFile:
    """One input image and the SHA-256 of its bytes."""

    path: str
    sha256: str


@dataclass
class ModelInfo:
    """Which trained model produced the prediction, and how it was run."""

    source: str  # the model package file or the models folder
    package_sha256: str | None  # None when predicting from a folder rather than a package file
    configurations: list[str]
    folds: list[str]
    mirroring: bool
    step: float
    device: str
    precision: str


@dataclass(kw_only=True)
class CaseReport:
    """Per-case prediction report: inputs, model, output geometry and per-label statistics."""

    version: int = REPORT_VERSION
    case_id: str
    inputs: list[InputFile]
    model: ModelInfo
    shape: list[int]  # (z, y, x) of the label map
    spacing: list[float]  # mm, same axis order as shape
    labels: list[LabelStats]  # foreground labels only, sorted by value
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    output: str = ""  # the label map written, "" when none was
    dicom_seg: str = ""  # the DICOM SEG written, "" when none was
    source_series: list[str] = field(default_factory=list)  # SeriesInstanceUIDs read (DICOM input), per channel
    instances: list[InstanceRecord] = field(default_factory=list)  # autoseg predict --instances
    instance_map: str = ""  # the instance map written, "" when none was


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so large scans never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _integer_labels(segmentation: np.ndarray) -> np.ndarray:
    # find_objects needs integers; a float label map (e.g. read from a float NIfTI) is cast once.
    if segmentation.dtype == bool or not np.issubdtype(segmentation.dtype, np.integer):
        return segmentation.astype(np.int64)
    return segmentation


def _channel_stats(name: str, values: np.ndarray | None) -> ChannelStats:
    if values is None or values.size == 0:
        return ChannelStats(name, None, None, None, None, None)
    values = values.astype(np.float64, copy=False)  # float16/32 sums lose digits over many voxels
    p05, p50, p95 = np.percentile(values, PERCENTILES)
    return ChannelStats(name, float(values.mean()), float(values.std()), float(p05), float(p50), float(p95))


def label_statistics(segmentation: np.ndarray, image: np.ndarray, spacing, labels: dict[str, int],
                     channel_names: list[str]) -> list[LabelStats]:
    """Statistics of every foreground label in `labels` (value 0 is background and skipped), sorted by value.

    `segmentation` is (z, y, x), `image` (C, z, y, x) on the same grid (a 3D image counts as one
    channel), `spacing` in mm in array axis order. One find_objects pass gives each label's
    bounding box; masks, components and intensities are then computed inside that box only, so
    a small structure in a large CT costs little. A label absent from the map gets 0 voxels,
    0 components and None intensities.
    """
    seg = _integer_labels(np.asarray(segmentation))
    img = np.asarray(image)
    if img.ndim == seg.ndim:
        img = img[None]
    if img.shape[1:] != seg.shape:
        raise AutosegError(f"image shape {img.shape[1:]} does not match segmentation shape {seg.shape}")
    if len(channel_names) != img.shape[0]:
        raise AutosegError(f"{len(channel_names)} channel name(s) for {img.shape[0]} image channel(s)")
    if len(spacing) != seg.ndim:
        raise AutosegError(f"spacing {tuple(spacing)} has {len(spacing)} axes, segmentation has {seg.ndim}")
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    foreground = sorted((int(value), name) for name, value in labels.items() if int(value) != 0)
    max_value = max((v for v, _ in foreground if v > 0), default=0)
    boxes = ndimage.find_objects(seg, max_label=max_value) if max_value > 0 else []
    structure = np.ones((3,) * seg.ndim, dtype=bool)
    out = []
    for value, name in foreground:
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            voxels, components, per_channel = 0, 0, [None] * img.shape[0]
        else:
            mask = seg[box] == value
            voxels = int(np.count_nonzero(mask))
            components = int(ndimage.label(mask, structure=structure)[1])
            per_channel = [img[(c, *box)][mask] for c in range(img.shape[0])]
        volume_mm3 = voxels * voxel_mm3
        out.append(LabelStats(name=name, value=value, voxels=voxels, volume_mm3=volume_mm3,
                              volume_ml=volume_mm3 / 1000.0, components=components,
                              channels=[_channel_stats(n, v) for n, v in zip(channel_names, per_channel)]))
    return out


def instance_records(instances, geometry, labels: dict[str, int]) -> list[InstanceRecord]:
    """The report's view of autoseg.instances.Instance list: file index order and physical coordinates (the
    geometry's origin plus its direction applied to index x spacing)."""
    names = {int(v): name for name, v in labels.items()}
    ndim = len(geometry.spacing)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(ndim, ndim)
    spacing_ijk = np.asarray(geometry.spacing[::-1], dtype=np.float64)
    records = []
    for instance in instances:
        centroid_ijk = np.asarray(instance.centroid[::-1], dtype=np.float64)
        physical = np.asarray(geometry.origin, dtype=np.float64) + direction @ (centroid_ijk * spacing_ijk)
        records.append(InstanceRecord(instance.id, names.get(instance.label, str(instance.label)), instance.label,
                                      instance.voxels, instance.volume_mm3, [float(v) for v in physical],
                                      [float(v) for v in centroid_ijk], instance.box_start[::-1],
                                      instance.box_stop[::-1]))
    return records


def write_case_report(report: CaseReport, path: str | os.PathLike) -> None:
    write_json_atomic(path, report)


def load_case_report(path: str | os.PathLike) -> CaseReport:
    return load_versioned(CaseReport, path, REPORT_VERSION)


def _total_time(report: CaseReport) -> float | None:
    # A recorded "total" includes time no single stage owns (reading, writing); the sum is a fallback.
    if "total" in report.timings_s:
        return report.timings_s["total"]
    return sum(report.timings_s.values()) if report.timings_s else None


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return str(value)


def _inputs_cell(report: CaseReport) -> str:
    # a DICOM series is hundreds of files: the CSV names the series, the JSON report keeps every file
    if report.source_series:
        return f"{CSV_JOIN.join(f'series {uid}' for uid in report.source_series)} ({len(report.inputs)} files)"
    return CSV_JOIN.join(f.path for f in report.inputs)


def write_predictions_csv(reports: list[CaseReport], path: str | os.PathLike) -> None:
    """One row per case, atomically. Label columns are the union over all reports, ordered by label
    value (then name) rather than by which case happened to come first, so the same labels always
    give the same header; a case without a label leaves its cells empty."""
    label_order: dict[str, int] = {}
    for report in reports:
        for stats in report.labels:
            label_order[stats.name] = min(stats.value, label_order.get(stats.name, stats.value))
    names = sorted(label_order, key=lambda n: (label_order[n], n))
    columns = ["case_id", "output"]
    for name in names:
        columns += [f"{name}_voxels", f"{name}_volume_ml", f"{name}_components"]
    columns += ["warnings", "inputs", "model_sha256", "total_time_s"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for report in reports:
        by_name = {s.name: s for s in report.labels}
        row = [report.case_id, report.output]
        for name in names:
            s = by_name.get(name)
            row += [_cell(s.voxels), _cell(s.volume_ml), _cell(s.components)] if s else ["", "", ""]
        row += [CSV_JOIN.join(report.warnings), _inputs_cell(report),
                report.model.package_sha256 or "", _cell(_total_time(report))]
        writer.writerow(row)
    write_text_atomic(Path(path), buffer.getvalue())
