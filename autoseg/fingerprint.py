"""Dataset fingerprint: per-case geometry and crop, pooled foreground intensity statistics.

compute_fingerprint() reads every case once (validating it on the way), in worker
processes, keeping about one case per worker in memory.

Foreground intensity statistics weight every case equally, as nnU-Net v2 does
(DatasetFingerprintExtractor.collect_foreground_intensities): every case with foreground
contributes the same number of values, drawn uniformly *with replacement* from its
foreground voxels (label > 0 inside the nonzero crop box), and the statistics are taken over
the concatenation. Without replacement a small structure would contribute only its few voxels
and large cases would dominate the pooled mean, std and clip percentiles.

nnU-Net draws 1e8/N values per case (400 MB of float32 for a dataset); autoseg draws
TOTAL_INTENSITY_SAMPLES/N = 1e7/N, so its statistics are an estimate of the same
equal-weight distribution with sqrt(10) times nnU-Net's own sampling noise. Both are
estimates of one distribution, so they agree within sampling noise; with n = 1e7 samples here
and 1e8 there, three standard errors of the difference are:
  - mean: 3 * sigma * sqrt(1/n + 1/n_nnunet) = 1.0e-3 sigma (sigma: the pooled std), i.e.
    1e-3 units after CT normalization;
  - std: 1.0e-3 sigma * sqrt((kurtosis - 1) / 4) (7e-4 sigma for Gaussian values);
  - percentiles by rank: 3 * sqrt(p (1 - p) (1/n + 1/n_nnunet)) = 7.0e-5 for p = 0.5 % and
    99.5 % (autoseg's bound lies between nnU-Net's 0.493th and 0.507th percentiles) and 5.0e-4
    for the median; in intensity that is the rank error divided by the density there.
min and max are the extremes of the drawn values in both tools, not estimates with a
tolerance; normalization does not use them. Stratified sampling (equal counts per case) only
lowers these variances, so the bounds hold for any dataset.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from autoseg.dataset import Dataset, read_case
from autoseg.dataset.label_codes import LabelCode
from autoseg.label_scheme import Region
from autoseg.dataset.layout import Case, DatasetScan, scan_dataset, sorted_problems
from autoseg.dataset.orientation import (dataset_orientation, orientation_code, reorientation_between,
                                         reoriented_bbox, reoriented_shape)
from autoseg.errors import DatasetInvalid
from autoseg.jsonio import load_versioned, write_json_atomic
from autoseg.parallel import default_workers, map_cases

FINGERPRINT_VERSION = 3  # 3: foreground intensities drawn with equal weight per case
SAMPLING_SEED = 1234
# Foreground intensity samples over the whole dataset, per channel, split equally between the
# cases: enough for 0.5/99.5 percentiles within 7e-5 in rank of nnU-Net's 1e8 (module docstring),
# at 40 MB of float32 per channel instead of nnU-Net's 400 MB.
TOTAL_INTENSITY_SAMPLES = 10_000_000


@dataclass
class CaseFingerprint:
    """Geometry of one training case, in the internal (z, y, x) axis order of the dataset's orientation."""

    case_id: str
    orientation: str  # as stored, e.g. "RAS"; the measurements below are in the dataset's orientation
    spacing: list[float]
    shape_before_crop: list[int]
    shape_after_crop: list[int]
    nonzero_bbox: list[list[int]]  # [start, stop) per axis of the region where any channel is nonzero
    relative_size_after_crop: float
    quality: CaseQuality | None = None  # what the dataset report checks (autoseg.quality); None in old fingerprints


@dataclass
class CaseQuality:
    """Per-case measurements for the dataset report, taken while the case is read anyway."""

    intensity_range: list[list[float]]  # per channel: [0.5th, 99.5th percentile] of the voxels
    label_voxels: dict[str, int]  # foreground label value (as a string) -> voxels
    label_outside_image: int  # foreground voxels where every channel is 0 (a misaligned label, or a cropped scan)
    image_sha1: str  # of the voxel values and the grid, for exact duplicates


@dataclass
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel, every case weighted equally (as nnU-Net).

    The same number of values is drawn from every case with foreground; num_samples counts the values pooled.
    """

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int


@dataclass
class Fingerprint:
    """What planning needs to know about a dataset, measured once."""

    version: int
    dataset_name: str
    dataset_dir: str
    layout: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    orientation: str  # every case's arrays are measured (and later trained) in this orientation
    cases: list[CaseFingerprint]
    foreground_intensity: list[IntensityStats]
    sampling_seed: int = SAMPLING_SEED
    samples_per_case_cap: int = 0  # values drawn (with replacement) from each case with foreground
    label_codes: dict[str, LabelCode] = field(default_factory=dict)  # dataset.json's, for DICOM SEG
    regions: list[Region] = field(default_factory=list)  # region-based targets (autoseg.label_scheme)
    ignore_label: int | None = None  # unannotated voxels' value (sparse labels)

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.float64)

    @property
    def median_relative_size_after_crop(self) -> float:
        return float(np.median([c.relative_size_after_crop for c in self.cases]))


def save_fingerprint(fingerprint: Fingerprint, path) -> None:
    write_json_atomic(path, fingerprint)


def load_fingerprint(path) -> Fingerprint:
    return load_versioned(Fingerprint, path, FINGERPRINT_VERSION, "rerun autoseg plan on the dataset")


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """[start, stop) per axis of the True voxels; the whole array when there are none."""
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return bbox


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """Bounding box of the voxels nonzero in any channel of (C, z, y, x).

    Filling holes in the mask (as the crop for normalization does) cannot change its
    bounding box, so it is skipped here.
    """
    return bbox_of(np.any(image != 0, axis=0))


def foreground_samples(image: np.ndarray, label: np.ndarray, count: int, case_id: str) -> list[np.ndarray]:
    """`count` float32 values per channel of (C, ...) `image`, drawn uniformly with replacement from the
    voxels where `label` > 0; none from a case without foreground (it then carries no weight, as in nnU-Net).

    With replacement so that every case gets the same weight whatever its foreground size. The
    generator is seeded by the case id, so the draw does not depend on the order or the number of workers.
    """
    foreground = label > 0
    size = int(np.count_nonzero(foreground))
    rng = np.random.default_rng([SAMPLING_SEED, zlib.crc32(case_id.encode())])
    out = []
    for channel in image:
        if size == 0:
            out.append(np.zeros(0, np.float32))
            continue
        # One index draw per channel, not one shared: channels are pooled separately, as in nnU-Net.
        values = channel[foreground]
        out.append(values[rng.integers(0, size, count)].astype(np.float32, copy=False))
    return out


def _fingerprint_case(task: tuple[Dataset, Case, int]):
    dataset, case, cap = task
    data, problems = read_case(dataset, case)
    if data is None:
        return None, None, problems
    bbox = nonzero_bbox(data.image)
    crop = tuple(slice(a, b) for a, b in bbox)
    shape_before = list(data.label.shape)
    shape_after = [b - a for a, b in bbox]
    # unannotated voxels are not foreground: their intensities (mostly background) would skew CT statistics
    label = data.label if dataset.ignore_label is None else np.where(data.label == dataset.ignore_label, 0, data.label)
    samples = foreground_samples(data.image[(slice(None),) + crop], label[crop], cap, case.case_id)
    fp = CaseFingerprint(case.case_id, orientation_code(data.geometry.direction), list(data.geometry.spacing),
                         shape_before, shape_after, bbox,
                         float(np.prod(shape_after) / np.prod(shape_before)), case_quality(data.image, label))
    return fp, samples, []


def case_quality(image: np.ndarray, label: np.ndarray) -> CaseQuality:
    """(C, z, y, x) image and (z, y, x) label -> the dataset report's measurements of one case."""
    every = max(1, image[0].size // 1_000_000)  # a strided million voxels bound the percentile's cost
    ranges = [[float(v) for v in np.percentile(channel.ravel()[::every], [0.5, 99.5])] for channel in image]
    counts = np.bincount(label.ravel()) if label.dtype.kind in "ui" and label.min() >= 0 else None
    if counts is None:  # labels are checked to be integers >= 0 before this; a fallback, not a path
        values, found = np.unique(label, return_counts=True)
        counts = np.zeros(int(values.max()) + 1, np.int64)
        counts[values.astype(np.int64)] = found
    label_voxels = {str(v): int(c) for v, c in enumerate(counts) if v != 0 and c > 0}
    outside = 0
    if label_voxels:
        foreground = label > 0
        outside = int(np.count_nonzero(~np.any(image[:, foreground] != 0, axis=0)))
    # exact duplicates: CRC-32 of every byte (fast), with the SHA-1 of a strided sample and the shape
    contiguous = np.ascontiguousarray(image)
    digest = hashlib.sha1(contiguous.ravel()[::every].tobytes())
    digest.update(f"{image.shape} {zlib.crc32(memoryview(contiguous).cast('B')):08x}".encode())
    return CaseQuality(ranges, label_voxels, outside, digest.hexdigest())


def in_orientation(case: CaseFingerprint, target: str) -> CaseFingerprint:
    """The case's measurements with its axes moved into orientation `target`."""
    r = reorientation_between(case.orientation, target)
    return CaseFingerprint(case.case_id, case.orientation, [case.spacing[a] for a in r.permutation],
                           reoriented_shape(case.shape_before_crop, r), reoriented_shape(case.shape_after_crop, r),
                           reoriented_bbox(case.nonzero_bbox, case.shape_before_crop, r),
                           case.relative_size_after_crop, case.quality)


def _pool_stats(samples: list[np.ndarray]) -> IntensityStats:
    values = np.concatenate(samples).astype(np.float64) if samples else np.zeros(0)
    if values.size == 0:
        return IntensityStats(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    p005, p50, p995 = np.percentile(values, [0.5, 50.0, 99.5])
    return IntensityStats(float(values.mean()), float(values.std()), float(p50), float(values.min()),
                          float(values.max()), float(p005), float(p995), int(values.size))


def compute_fingerprint(dataset: Dataset | DatasetScan | str | os.PathLike, workers: int | None = None,
                        progress: bool = True, *, intensity_samples: int = TOTAL_INTENSITY_SAMPLES) -> Fingerprint:
    """Read and validate every case, then pool the measurements; raises DatasetInvalid listing all problems.

    `intensity_samples` foreground values per channel are split equally between the cases (module docstring).

    Given a folder (or a DatasetScan), the voxels of every case found are read even when dataset.json or
    other cases have problems, so the error lists the problems of both stages at once, sorted by file.
    """
    if isinstance(dataset, Dataset):
        scan = DatasetScan(dataset.root, dataset, [])
    else:
        scan = dataset if isinstance(dataset, DatasetScan) else scan_dataset(dataset)
    problems: list[str] = list(scan.problems)
    if scan.dataset is None:
        raise DatasetInvalid(scan.root, sorted_problems(problems))
    dataset = scan.dataset
    workers = default_workers() if workers is None else workers
    cap = max(1, intensity_samples // max(1, len(dataset.cases)))
    cases: list[CaseFingerprint] = []
    samples: list[list[np.ndarray]] = [[] for _ in range(dataset.num_channels)]
    tasks = [(dataset, case, cap) for case in dataset.cases]
    for fp, case_samples, case_problems in map_cases(_fingerprint_case, tasks, workers, progress, "fingerprint"):
        problems.extend(case_problems)
        if fp is None:
            continue
        cases.append(fp)
        for channel_samples, s in zip(samples, case_samples):  # fewer only when the scan has problems anyway
            channel_samples.append(s)
    if problems:
        raise DatasetInvalid(dataset.root, sorted_problems(problems))
    orientation = dataset_orientation(c.orientation for c in cases)
    cases = [in_orientation(c, orientation) for c in cases]
    return Fingerprint(
        version=FINGERPRINT_VERSION, dataset_name=dataset.name, dataset_dir=str(dataset.root.resolve()),
        layout=dataset.layout, channel_names=dataset.channel_names, labels=dataset.labels, label_codes=dict(dataset.label_codes),
        regions=list(dataset.regions), ignore_label=dataset.ignore_label,
        file_ending=dataset.file_ending, orientation=orientation, cases=cases,
        foreground_intensity=[_pool_stats(s) for s in samples], samples_per_case_cap=cap)
