"""Voxel orientation: which way a scan's array axes run in the body, and bringing a scan into one
orientation by permuting and flipping axes only (exact, no resampling), and back.

Converters and DICOM exporters store the same anatomy with the axes in different orders; a network
that saw one order is lost on another (flips alone are harmless: training mirrors). So every scan is
brought into the plan's orientation before anything else and the label map is brought back after.

Codes follow the convention of nibabel and most of the field: three letters for the file's index axes
(i, j, k), each the direction the index increases towards (R/L, A/P, S/I), e.g. "RAS". An oblique
scan gets the code of its closest axes; the oblique part stays in its geometry.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from autoseg.dataset.geometry import Geometry
from autoseg.errors import AutosegError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Reorientation:
    """Array (z, y, x) axis moves: new axis a is old axis `permutation[a]`, then reversed where `flips[a]`."""

    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.permutation == (0, 1, 2) and not any(self.flips)


def _ornt(direction) -> np.ndarray:
    """nibabel's (world axis, +-1) per file index axis, from an ITK (LPS, row-major) direction."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return nib.orientations.io_orientation(affine)


def orientation_code(direction) -> str:
    """e.g. "RAS" for an ITK direction matrix (LPS, row-major 3x3)."""
    return "".join(nib.orientations.ornt2axcodes(_ornt(direction)))


def check_code(code: str) -> str:
    try:
        ornt = nib.orientations.axcodes2ornt(tuple(code))
    except Exception:  # noqa: BLE001 - nibabel raises several types for bad codes
        ornt = None
    if ornt is None or len(code) != 3 or np.isnan(ornt).any() or sorted(ornt[:, 0]) != [0, 1, 2]:
        raise AutosegError(f"{code!r} is not an orientation code (three of R/L, A/P, S/I, e.g. RAS)")
    return code


def reorientation(direction, target: str) -> Reorientation:
    """How to move a scan with this direction into the `target` orientation code."""
    return reorientation_between(orientation_code(direction), target)


def reorientation_between(source_code: str, target: str) -> Reorientation:
    """How to move a scan stored in orientation `source_code` into `target`."""
    source = nib.orientations.axcodes2ornt(tuple(check_code(source_code)))
    goal = nib.orientations.axcodes2ornt(tuple(check_code(target)))
    transform = nib.orientations.ornt_transform(source, goal)  # per source file axis: (target axis, flip)
    permutation = [0, 0, 0]
    flips = [False, False, False]
    for f, (t, sign) in enumerate(transform):
        new_axis, old_axis = 2 - int(t), 2 - f  # array axes run opposite to file axes
        permutation[new_axis] = old_axis
        flips[new_axis] = bool(sign < 0)
    return Reorientation(tuple(permutation), tuple(flips))


def reorient(array: np.ndarray, r: Reorientation) -> np.ndarray:
    """Apply to the last three axes of `array` (a view; channels in front stay)."""
    if r.is_identity:
        return array
    lead = array.ndim - 3
    out = array.transpose(list(range(lead)) + [lead + a for a in r.permutation])
    flip_axes = tuple(lead + a for a, f in enumerate(r.flips) if f)
    return np.flip(out, flip_axes) if flip_axes else out


def undo_reorientation(array: np.ndarray, r: Reorientation) -> np.ndarray:
    """The inverse of reorient(), on the last three axes."""
    if r.is_identity:
        return array
    lead = array.ndim - 3
    flip_axes = tuple(lead + a for a, f in enumerate(r.flips) if f)
    out = np.flip(array, flip_axes) if flip_axes else array
    inverse = np.argsort(r.permutation)
    return out.transpose(list(range(lead)) + [lead + int(a) for a in inverse])


def reoriented_shape(shape, r: Reorientation) -> list[int]:
    return [int(shape[a]) for a in r.permutation]


def reoriented_bbox(bbox, shape, r: Reorientation) -> list[list[int]]:
    """A [start, stop) box per array axis, in the reoriented array's indices."""
    out = []
    for new_axis, old_axis in enumerate(r.permutation):
        start, stop = bbox[old_axis]
        n = int(shape[old_axis])
        out.append([n - stop, n - start] if r.flips[new_axis] else [start, stop])
    return out


def reoriented_geometry(geometry: Geometry, shape, r: Reorientation) -> Geometry:
    """The geometry of reorient(array) for an array of (z, y, x) `shape`: every voxel keeps its world position."""
    if r.is_identity:
        return geometry
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    # the physical step of one voxel along each old array axis (a column of direction, scaled)
    steps = [direction[:, 2 - a] * geometry.spacing[a] for a in range(3)]
    origin = np.asarray(geometry.origin, dtype=np.float64).copy()
    new_direction = np.zeros((3, 3))
    for new_axis, old_axis in enumerate(r.permutation):
        column = direction[:, 2 - old_axis]
        if r.flips[new_axis]:
            origin += steps[old_axis] * (int(shape[old_axis]) - 1)
            column = -column
        new_direction[:, 2 - new_axis] = column
    spacing = tuple(float(geometry.spacing[a]) for a in r.permutation)
    return Geometry(spacing, tuple(float(o) for o in origin), tuple(float(d) for d in new_direction.ravel()))


def dataset_orientation(codes) -> str:
    """The orientation most cases already have (fewest moved; ties to the alphabetically first code), so a
    consistently stored dataset is planned exactly as it is stored."""
    counts = Counter(codes)
    if not counts:
        return "RAS"
    return min(counts, key=lambda c: (-counts[c], c))
