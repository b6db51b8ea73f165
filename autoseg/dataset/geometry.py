"""Where a voxel grid sits in space: the Geometry carried with every array, the file endings autoseg
reads, and the checks every reader applies to spacing, direction and origin (docs/reliability.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError


SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where a 3D voxel grid sits in physical space."""

    spacing: tuple[float, float, float]  # array axis order (z, y, x)
    origin: tuple[float, float, float]  # physical (x, y, z), as stored in the file
    direction: tuple[float, ...]  # 3x3 row-major, physical convention of SimpleITK

    def matches(self, other: "Geometry", spacing_rtol=1e-4, origin_atol=1e-3, direction_atol=1e-4) -> list[str]:
        """Names of the properties that differ beyond tolerance (empty when they agree)."""
        diffs = []
        if not np.allclose(self.spacing, other.spacing, rtol=spacing_rtol, atol=0):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=origin_atol):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_atol):
            diffs.append("direction differs")
        return diffs


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def file_ending(path: str | Path) -> str | None:
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def geometry_from_affine(affine: np.ndarray) -> Geometry:
    """ITK-convention geometry of a NIfTI affine (RAS) for an array in internal (z, y, x) order."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing_ijk = np.sqrt((linear ** 2).sum(axis=0))
    direction_ras = linear / np.where(spacing_ijk > 0, spacing_ijk, 1.0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ direction_ras
    origin = ras_to_lps @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return Geometry(tuple(float(s) for s in spacing_ijk[::-1]), tuple(float(o) for o in origin),
                    tuple(float(d) for d in direction.ravel()))


# ---------------------------------------------------------------------------------------------
# Checks every format shares


DIRECTION_TOLERANCE = 1e-3  # |cos| between axes, and | |column| - 1 |, allowed in a direction


def check_spacing(path: Path, spacing, what: str = "voxel spacing") -> None:
    """Zero, negative or non-finite spacing is refused: resampling, patch sizes and every physical
    measure divide by it, and readers disagree on what a negative one means."""
    values = np.asarray(spacing, dtype=np.float64)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values <= 0)):
        raise AutosegError(f"{path}: {what} {_fmt(values)} (file axis order) is zero, negative or not finite; "
                           f"every axis needs a positive spacing")


def check_direction(path: Path, columns: np.ndarray) -> None:
    """Columns (one per file axis) must be orthogonal and unit length within DIRECTION_TOLERANCE:
    the pipeline keeps spacing and direction apart, so a sheared or scaled direction would be lost
    (or resampled wrongly) without a word."""
    columns = np.asarray(columns, dtype=np.float64)
    if not np.all(np.isfinite(columns)):
        raise AutosegError(f"{path}: the direction (axis orientation) has non-finite values")
    lengths = np.sqrt((columns ** 2).sum(axis=0))
    n = columns.shape[1]
    for i in range(n):
        for j in range(i + 1, n):
            if lengths[i] == 0 or lengths[j] == 0:
                continue  # reported below as a length
            cosine = float(columns[:, i] @ columns[:, j]) / float(lengths[i] * lengths[j])
            if abs(cosine) > DIRECTION_TOLERANCE:
                angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
                raise AutosegError(f"{path}: sheared or non-orthogonal grid: file axes {i} and {j} are "
                                   f"{angle:.3g} degrees apart, not 90 (resample it onto an orthogonal grid)")
    for axis, length in enumerate(lengths):
        if abs(length - 1.0) > DIRECTION_TOLERANCE:
            raise AutosegError(f"{path}: direction of file axis {axis} has length {length:g}, not 1 "
                               f"(the direction must be a rotation, with flips allowed)")


def check_origin(path: Path, origin) -> None:
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise AutosegError(f"{path}: origin {_fmt(origin)} is not finite")


def check_geometry(path: Path, spacing_ijk, columns: np.ndarray, origin) -> None:
    """The geometry a reader computed: positive finite spacing, a finite origin, an orthonormal
    direction (`columns`: one unit column per file axis)."""
    check_spacing(path, spacing_ijk)
    check_origin(path, origin)
    check_direction(path, columns)
