"""What preprocessing did to one case, so that restore() can undo it (JSON, never pickle)."""
from __future__ import annotations

from dataclasses import dataclass, field

from autoseg.jsonio import load_versioned, write_json_atomic

PROPERTIES_VERSION = 2


@dataclass
class SourceGeometry:
    """The scan as read: array (z, y, x) shape and ITK-convention geometry, plus the exact NIfTI header."""

    shape: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]
    file_format: str  # ending of the first image file, e.g. ".nii.gz"
    nifti_header_b64: str | None = None  # the 348-byte NIfTI-1 header, base64, to write labels back bit-exactly


@dataclass
class CaseProperties:
    """One preprocessed case: all shapes after the move into the plan's orientation and the plan's transpose."""

    version: int
    case_id: str
    configuration: str
    signature: str  # plan decisions + source files; a rerun redoes the case when it changes
    source: SourceGeometry
    # the move into the plan's orientation (dataset/orientation.py Reorientation), undone when restoring
    reorient_permutation: list[int]
    reorient_flips: list[bool]
    spacing: list[float]  # transposed source spacing
    target_spacing: list[float]
    shape_before_crop: list[int]
    bbox: list[list[int]]
    shape_after_crop: list[int]
    shape_after_resampling: list[int]
    # per foreground label value: sampled voxel coordinates, flattened z, y, x triples
    class_locations: dict[str, list[int]] = field(default_factory=dict)


def save_properties(props: CaseProperties, path) -> None:
    write_json_atomic(path, props, compact=True)


def load_properties(path) -> CaseProperties:
    return load_versioned(CaseProperties, path, PROPERTIES_VERSION, "rerun autoseg preprocess")
