"""A label map as a DICOM Segmentation (highdicom), and back.

The SEG is BINARY: one segment per foreground label of the model (segment numbers 1..N in label-value
order, named by the label), each with one frame per source slice that holds it; every frame references
its source slice (SOP Instance UID) and carries that slice's position and orientation, because highdicom
derives them from the source images we hand it in slice order. Codes come from the plan's `label_codes`,
else GENERIC_LABEL_CODE. The series and instance UIDs are new; patient and study are the source's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset.label_codes import GENERIC_LABEL_CODE, Code, LabelCode
from autoseg.dicom import require_dicom_libraries
from autoseg.dicom.series import DicomSeries
from autoseg.jsonio import atomic_path, fsync_file
from autoseg.label_scheme import Region

SERIES_NUMBER_OFFSET = 1000  # the SEG series is numbered source + 1000, so a PACS lists it beside its source
MAX_SERIES_NUMBER = 2**31 - 1
# a palette that reads on grey images; segment k takes colour k (cycled)
SEGMENT_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                   (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


@dataclass(frozen=True)
class Algorithm:
    """What produced the segmentation, as the SEG names it."""

    name: str  # the model: its package file name, or the training folder
    version: str  # autoseg's
    package_sha256: str | None
    description: str = ""  # configurations and folds


def _concept(code: Code):
    import highdicom as hd

    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def segment_descriptions(labels: dict[str, int], label_codes: dict[str, LabelCode], algorithm: Algorithm):
    """One highdicom SegmentDescription per foreground label, numbered 1..N in label-value order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    parameters = {"autoseg": algorithm.version}
    if algorithm.package_sha256:
        parameters["package_sha256"] = algorithm.package_sha256
    if algorithm.description:
        parameters["model"] = algorithm.description
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version,
        source="autoseg", parameters=parameters)
    out = []
    for number, (name, _) in enumerate(sorted(((n, v) for n, v in labels.items() if v != 0), key=lambda x: x[1]),
                                       start=1):
        code = label_codes.get(name, GENERIC_LABEL_CODE)
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=_concept(code.category),
            segmented_property_type=_concept(code.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            display_color=hd.color.CIELabColor.from_rgb(*SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)])))
    return out


def write_seg(segmentation: np.ndarray, series: DicomSeries, labels: dict[str, int], path: str | Path, *,
              algorithm: Algorithm, label_codes: dict[str, LabelCode] | None = None,
              regions: list[Region] | None = None) -> Path:
    """Write (z, y, x) `segmentation`, on `series`' grid in its slice order, as a SEG at `path` (atomically).
    regions: a region-based model's; each segment is then its whole region (the voxels holding any of its
    values), so nested segments overlap, as SEG allows."""
    require_dicom_libraries()
    import highdicom as hd
    import pydicom

    foreground = sorted(v for v in labels.values() if v != 0)
    expected = (len(series.slices), series.rows, series.columns)
    if segmentation.shape != expected:
        raise ValueError(f"label map {segmentation.shape} is not on the series' grid {expected}")
    # label value -> segment number; values the model does not know cannot occur (it wrote the map)
    lookup = np.zeros(int(max(foreground, default=0)) + 1, np.uint16)
    lookup[foreground] = np.arange(1, len(foreground) + 1)
    segments = lookup[segmentation]
    if regions:
        by_name = {r.name: r for r in regions}
        names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        segments = np.stack([np.isin(segmentation, by_name[n].values) for n in names], axis=-1).astype(np.uint8)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    number = min(MAX_SERIES_NUMBER, (series.series_number or 0) + SERIES_NUMBER_OFFSET)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segments, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, label_codes or {}, algorithm),
        series_instance_uid=hd.UID(), series_number=number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="autoseg", manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.version,
        device_serial_number=(algorithm.package_sha256 or "none")[:64], content_label="AUTOSEG",
        content_description=f"autoseg segmentation ({algorithm.name})"[:64], omit_empty_frames=True)
    seg.SeriesDescription = f"autoseg {algorithm.name}"[:64]
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
        fsync_file(tmp)
    return path


def read_seg_labels(path: str | Path, series: DicomSeries, labels: dict[str, int]) -> np.ndarray:
    """A SEG written for `series` back as a (z, y, x) label map in the series' slice order: segment numbers
    mapped to label values by segment label (the model's label names)."""
    require_dicom_libraries()
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [s.sop_instance_uid for s in series.slices]
    segments = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    to_value = np.zeros(max(seg.get_segment_numbers()) + 1, np.int32)
    for number in seg.get_segment_numbers():
        to_value[number] = labels[seg.get_segment_description(number).segment_label]
    return to_value[segments].astype(np.uint8 if to_value.max() < 256 else np.int16)
