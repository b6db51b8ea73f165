"""DICOM image series under a folder: found, named, checked and read as volumes (docs/dicom.md).

A folder is searched recursively; every file is opened with pydicom for its header only (large values,
the pixel data included, are deferred). Image files are grouped by SeriesInstanceUID; everything else
(DICOMDIR, structured reports, presentation states, secondary captures, segmentations, files that are
not DICOM) is skipped and counted. Slices are ordered by their position along the slice normal
(ImagePositionPatient projected on ImageOrientationPatient's row x column), never by file name or
InstanceNumber, and the geometry is computed from those tags: SimpleITK/GDCM only decodes the pixels.

A series that cannot be predicted exactly is refused with one line naming it, and the other series go
on. Refused: mixed image sizes, orientations or pixel spacings; slices sharing a position; uneven slice
spacing (a missing slice, or several acquisitions in one series: resampling would silently hand back a
segmentation on slices that do not exist); gantry tilt (slices shifted in-plane along the stack, a sheared
grid that no orthogonal volume represents); multi-frame files (mixed with single-frame ones, or alone);
colour images; files without pixel data; pixel data GDCM cannot decode. Series become cases in cases.py.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.dataset.geometry import Geometry
from autoseg.dicom import require_dicom_libraries
from autoseg.errors import AutosegError
from autoseg.jsonio import TEMP_PREFIX

# SOP classes that carry no volume to segment; anything else without a plane geometry is skipped too
NOT_IMAGES = {
    "1.2.840.10008.1.3.10": "DICOMDIR",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
}
NOT_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
}
UNEVEN_SPACING_TOLERANCE = 0.1  # of the median gap; a missing slice doubles one gap
DUPLICATE_POSITION_MM = 1e-3
ORIENTATION_ATOL = 1e-4
PIXEL_SPACING_RTOL = 1e-4
SAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9.+-]+")
TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian", "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian", "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.70": "JPEG Lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000", "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}


@dataclass(frozen=True)
class Slice:
    path: Path
    sop_instance_uid: str
    position: tuple[float, float, float]  # ImagePositionPatient, mm, LPS


@dataclass
class DicomSeries:
    """One image series: its slices in order along the normal and the grid they form (`problem`: why it
    cannot be predicted, one line; then `geometry` is None)."""

    series_uid: str
    name: str  # the readable case id (docs/dicom.md, "Cases"), unique under the searched folder
    folder: Path  # the folder holding its first file, for messages
    modality: str
    slices: list[Slice] = field(default_factory=list)
    rows: int = 0
    columns: int = 0
    geometry: Geometry | None = None
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    series_number: int | None = None
    transfer_syntax: str = ""
    reason: str | None = None  # why it cannot be predicted

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.slices)

    @property
    def problem(self) -> str | None:
        return None if self.reason is None else f"series {self.name} ({self.folder}): {self.reason}"


@dataclass
class SeriesScan:
    """What a folder holds: the image series sorted by name, and how many files were skipped."""

    folder: Path
    series: list[DicomSeries]
    skipped: dict[str, int]  # what kind of file -> count


def is_dicom_file(path: Path) -> bool:
    """The Part 10 signature: 128 bytes of preamble, then DICM."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def holds_dicom(folder: Path, *, limit: int = 2000) -> bool:
    """Whether a DICOM file lies anywhere below `folder` (the first `limit` files are looked at)."""
    for k, path in enumerate(p for p in folder.rglob("*") if p.is_file()):
        if k >= limit:
            return False
        if is_dicom_file(path):
            return True
    return False


def find_series(folder: str | Path) -> SeriesScan:
    """Every image series below `folder`, each checked (see the module docstring); raises AutosegError
    when the folder holds no DICOM image at all."""
    require_dicom_libraries()
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: no such folder")
    skipped: dict[str, int] = {}
    grouped: dict[str, list[tuple[Path, object]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith((".", TEMP_PREFIX)) for part in path.relative_to(folder).parts):
            continue
        try:
            header = pydicom.dcmread(path, defer_size="4 KB")
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
            skipped["not DICOM"] = skipped.get("not DICOM", 0) + 1
            continue
        kind = _not_an_image(header)
        if kind is not None:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        grouped.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if not grouped:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())) or "no files"
        raise AutosegError(f"{folder}: no DICOM image series found ({found})")
    series = [_check_series(uid, files) for uid, files in grouped.items()]
    _name_uniquely(series)
    return SeriesScan(folder, sorted(series, key=lambda s: s.name), skipped)


def _not_an_image(header) -> str | None:
    sop_class = str(getattr(header, "SOPClassUID", "") or getattr(getattr(header, "file_meta", None),
                                                                  "MediaStorageSOPClassUID", ""))
    if sop_class in NOT_IMAGES:
        return NOT_IMAGES[sop_class]
    for prefix, kind in NOT_IMAGE_PREFIXES.items():
        if sop_class.startswith(prefix):
            return kind
    if "SeriesInstanceUID" not in header:
        return "without a series"
    if "ImageOrientationPatient" not in header and "SharedFunctionalGroupsSequence" not in header:
        return "images without a patient geometry (projection, photo or ultrasound)"
    return None


def safe_id(text) -> str:
    return SAFE_ID_CHARACTERS.sub("-", str(text or "").strip()).strip("-.") or "unknown"


def _name_uniquely(series: list[DicomSeries]) -> None:
    """PatientID_StudyDate_SeriesNumber; where that is shared, each sharer gets `-` and 8 hex digits of its
    SeriesInstanceUID's SHA-1, so a series keeps its name whatever else lies in the folder."""
    counts: dict[str, int] = {}
    for s in series:
        counts[s.name] = counts.get(s.name, 0) + 1
    for s in series:
        if counts[s.name] > 1:
            s.name = f"{s.name}-{hashlib.sha1(s.series_uid.encode()).hexdigest()[:8]}"


def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _check_series(uid: str, files: list[tuple[Path, object]]) -> DicomSeries:
    first = files[0][1]
    number = getattr(first, "SeriesNumber", None)
    name = "_".join(safe_id(x) for x in (getattr(first, "PatientID", ""), getattr(first, "StudyDate", ""),
                                       number if number is not None else ""))
    series = DicomSeries(
        series_uid=uid, name=name, folder=files[0][0].parent, modality=str(getattr(first, "Modality", "") or ""),
        study_uid=str(getattr(first, "StudyInstanceUID", "")),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        series_number=int(number) if number not in (None, "") else None,
        transfer_syntax=str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")))
    series.reason = _geometry_problem(series, files)
    if series.reason is not None:
        series.geometry = None
    return series


def _geometry_problem(series: DicomSeries, files: list[tuple[Path, object]]) -> str | None:
    """Fills in the series' slices and geometry; returns why it cannot be predicted, or None."""
    frames = [int(getattr(h, "NumberOfFrames", 1) or 1) for _, h in files]
    if any(f > 1 for f in frames):
        if all(f > 1 for f in frames):
            return (f"multi-frame (enhanced) images are not read yet; convert them to single-frame files "
                    f"(dcm4che's emf2sf) or to NIfTI (dcm2niix)")
        return f"mixes {sum(f > 1 for f in frames)} multi-frame and {sum(f == 1 for f in frames)} single-frame files"
    no_pixels = [p for p, h in files if "PixelData" not in h and "FloatPixelData" not in h]
    if no_pixels:
        return f"{len(no_pixels)} file(s) without pixel data (first: {no_pixels[0].name})"
    if any(int(getattr(h, "SamplesPerPixel", 1) or 1) != 1 for _, h in files):
        return "colour images (SamplesPerPixel > 1); a segmentation model reads grey values"
    sizes = sorted({(int(h.Rows), int(h.Columns)) for _, h in files})
    if len(sizes) > 1:
        return f"mixed image sizes ({', '.join(f'{r}x{c}' for r, c in sizes)} rows x columns)"
    series.rows, series.columns = sizes[0]
    orientations, spacings, positions = [], [], []
    for path, header in files:
        orientation = _floats(getattr(header, "ImageOrientationPatient", None), 6)
        spacing = _floats(getattr(header, "PixelSpacing", None), 2)
        position = _floats(getattr(header, "ImagePositionPatient", None), 3)
        missing = [n for n, v in (("ImageOrientationPatient", orientation), ("PixelSpacing", spacing),
                                  ("ImagePositionPatient", position)) if v is None]
        if missing:
            return f"{path.name}: {missing[0]} missing or unreadable; the slice cannot be placed"
        orientations.append(orientation)
        spacings.append(spacing)
        positions.append(position)
    orientations = np.asarray(orientations)
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_ATOL:
        return "mixed slice orientations (ImageOrientationPatient differs between files: several stacks?)"
    spacings = np.asarray(spacings)
    if not np.allclose(spacings, spacings[0], rtol=PIXEL_SPACING_RTOL, atol=0):
        return "mixed pixel spacings (PixelSpacing differs between files)"
    row, column = orientations[0][:3], orientations[0][3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3
            or abs(row @ column) > 1e-3):
        return "ImageOrientationPatient is not two perpendicular unit vectors"
    if min(spacings[0]) <= 0:
        return f"PixelSpacing {list(spacings[0])} must be positive"
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    series.slices = [Slice(files[k][0], str(getattr(files[k][1], "SOPInstanceUID", "")), tuple(positions[i]))
                     for i, k in enumerate(order)]
    if len(files) < 2:
        return "a single slice; a volume needs at least two"
    gaps = np.diff(along)
    if gaps.min() < DUPLICATE_POSITION_MM:
        same = gaps < DUPLICATE_POSITION_MM
        sharing = np.zeros(len(along), bool)
        sharing[:-1] |= same
        sharing[1:] |= same
        places = int(sharing.sum() - same.sum())
        return (f"{int(sharing.sum())} slices share {places} position(s) (several time points, echoes or "
                f"acquisitions in one series?)")
    step = float(np.median(gaps))
    # gantry tilt: the stack drifts in-plane; over half a pixel anywhere and no orthogonal grid holds it
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    worst = float(np.linalg.norm(drift, axis=1).max())
    if worst > 0.5 * float(min(spacings[0])):
        angle = np.degrees(np.arctan2(worst, along[-1] - along[0]))
        return (f"gantry tilt or sheared slices (the stack drifts {worst:.1f} mm in-plane, {angle:.1f} degrees); "
                f"reconstruct without tilt or resample to an orthogonal grid first (e.g. dcm2niix)")
    uneven = np.abs(gaps - step) > UNEVEN_SPACING_TOLERANCE * step
    if uneven.any():
        k = int(np.argmax(np.abs(gaps - step)))
        missing = round(gaps[k] / step) - 1
        why = (f"{missing} slice(s) missing" if missing >= 1 and abs(gaps[k] - (missing + 1) * step) < 0.1 * step
               else "uneven slice spacing")
        return (f"{why}: a gap of {gaps[k]:.3g} mm between slices {k + 1} and {k + 2} of {len(gaps) + 1}, "
                f"the others {step:.3g} mm; refused rather than predicted on slices that do not exist")
    direction = np.stack([row, column, normal], axis=1)  # columns: the x, y, z axes of the volume
    # PixelSpacing is (between rows, between columns): x runs along a row, so x takes the second value
    series.geometry = Geometry((step, float(spacings[0][0]), float(spacings[0][1])),
                               tuple(float(v) for v in positions[0]), tuple(float(v) for v in direction.ravel()))
    return None


def read_series(series: DicomSeries) -> np.ndarray:
    """The series' voxels as (z, y, x) float32 in slice order, rescale slope and intercept applied."""
    import SimpleITK as sitk

    if series.problem is not None:
        raise AutosegError(series.problem)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        syntax = TRANSFER_SYNTAX_NAMES.get(series.transfer_syntax, series.transfer_syntax or "unknown")
        detail = str(e).strip().splitlines()[-1][:160] if str(e).strip() else ""
        raise AutosegError(f"series {series.name} ({series.folder}): pixel data cannot be decoded (transfer "
                           f"syntax {syntax}{'; ' + detail if detail else ''})") from None
    expected = (series.columns, series.rows, len(series.slices))
    if image.GetSize() != expected or image.GetNumberOfComponentsPerPixel() != 1:
        raise AutosegError(f"series {series.name} ({series.folder}): decoded as {image.GetSize()} with "
                           f"{image.GetNumberOfComponentsPerPixel()} component(s), expected {expected}")
    array = sitk.GetArrayFromImage(image)
    if not np.isfinite(array).all():
        raise AutosegError(f"series {series.name} ({series.folder}): {int((~np.isfinite(array)).sum())} "
                           f"NaN/Inf voxel(s)")
    return array
