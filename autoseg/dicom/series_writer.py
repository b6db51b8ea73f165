"""Write a volume as a DICOM image series (one file per slice) with pydicom: what the tests, benchmarks and
the docs' figures predict from. The geometry is written exactly: slice k sits at origin + k * z-spacing
along the volume's third axis, unless `positions` places each slice itself (a tilted or uneven series).

Grey values are stored as 16-bit integers. Integral volumes that fit are stored as they are; others get a
power-of-two RescaleSlope and an integral RescaleIntercept, so `representable(volume)` — what a reader
gets back — is exact in float32 and the same scan can be given as NIfTI and as DICOM voxel for voxel.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset.geometry import Geometry
from autoseg.dicom import require_dicom_libraries

SOP_CLASS_OF_MODALITY = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                         "PT": "1.2.840.10008.5.1.4.1.1.128"}
UINT16_LEVELS = 65535


@dataclass
class SeriesDescription:
    """The identifying tags of a written series (all made-up by the caller: no real patient data)."""

    modality: str = "MR"
    patient_id: str = "ANON001"
    study_date: str = "20260101"
    series_number: int = 1
    series_description: str = "autoseg test series"
    study_uid: str | None = None  # None: a new one
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    transfer_syntax: str = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian; RLE Lossless is 1.2.840.10008.1.2.5
    reversed_instance_numbers: bool = False  # InstanceNumber running against the slice order (a reader trap)


def _rescale(volume: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) for uint16 storage: slope 1 where the values are integers that fit."""
    low, high = float(volume.min()), float(volume.max())
    intercept = math.floor(low)
    if np.all(volume == np.round(volume)) and high - intercept <= UINT16_LEVELS:
        return 1.0, float(intercept)
    slope = 2.0 ** math.ceil(math.log2(max(high - intercept, 1e-12) / UINT16_LEVELS))
    return slope, float(intercept)


def representable(volume: np.ndarray) -> np.ndarray:
    """The float32 values a reader of the written series gets back."""
    slope, intercept = _rescale(volume)
    stored = np.clip(np.round((volume.astype(np.float64) - intercept) / slope), 0, UINT16_LEVELS)
    return (stored * slope + intercept).astype(np.float32)


def write_series(volume: np.ndarray, geometry: Geometry, folder: str | Path,
                 description: SeriesDescription | None = None, *, positions: np.ndarray | None = None) -> list[Path]:
    """Write (z, y, x) `volume` on `geometry` into `folder`, one file per z slice, named by a hash of its
    SOPInstanceUID (file names say nothing of the order). Returns the files in slice order."""
    require_dicom_libraries()
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    d = description or SeriesDescription()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    spacing_z, spacing_y, spacing_x = geometry.spacing
    if positions is None:
        positions = np.asarray(geometry.origin) + np.outer(np.arange(volume.shape[0]) * spacing_z, direction[:, 2])
    slope, intercept = _rescale(volume)
    stored = np.clip(np.round((volume.astype(np.float64) - intercept) / slope), 0, UINT16_LEVELS).astype(np.uint16)
    study_uid = d.study_uid or generate_uid()
    series_uid = d.series_uid or generate_uid()
    frame_uid = d.frame_of_reference_uid or generate_uid()
    sop_class = SOP_CLASS_OF_MODALITY[d.modality]
    paths = []
    for k in range(volume.shape[0]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.PatientID, ds.PatientName = d.patient_id, "Test^Synthetic"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = d.study_date, "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = d.modality, d.series_number, d.series_description
        ds.InstanceNumber = volume.shape[0] - k if d.reversed_instance_numbers else k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if d.modality == "CT" else "OTHER"]
        ds.Manufacturer, ds.PatientPosition, ds.PositionReferenceIndicator = "autoseg series_writer", "HFS", ""
        if d.modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "10", "500", "1"
            ds.MagneticFieldStrength = "3"
        if d.modality == "CT":
            ds.KVP, ds.AcquisitionNumber = "120", "1"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing_y:.6f}", f"{spacing_x:.6f}"]  # (between rows, between columns)
        ds.SliceThickness = f"{spacing_z:.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        if d.modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        if d.transfer_syntax != pydicom.uid.ExplicitVRLittleEndian:
            ds.compress(d.transfer_syntax)
        path = folder / f"{hashlib.sha1(sop_uid.encode()).hexdigest()[:12]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
