"""Target spacing with the anisotropy rule, and the axis transpose that puts the coarse axis first."""
from __future__ import annotations

import numpy as np

ANISOTROPY_THRESHOLD = 3.0


def target_spacing(spacings: np.ndarray, shapes: np.ndarray, threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Per-axis median spacing, except for a strongly anisotropic axis.

    If the coarsest axis is more than `threshold` x coarser than the others and its median
    size is less than 1/threshold of theirs, resampling it to the median would throw away
    most of the in-plane resolution of the thinner-slice cases; use the 10th percentile of
    its spacings instead, but never finer than the other axes.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    if not others:
        return target
    other_max_spacing = max(target[a] for a in others)
    aniso_spacing = target[coarse] > threshold * other_max_spacing
    aniso_voxels = median_size[coarse] * threshold < min(median_size[a] for a in others)
    if aniso_spacing and aniso_voxels:
        value = np.percentile(spacings[:, coarse], 10)
        if value < other_max_spacing:
            value = max(other_max_spacing, value) + 1e-5
        target[coarse] = value
    return target


def transpose_for(spacing) -> tuple[list[int], list[int]]:
    """Forward transpose putting the coarsest axis first, and its inverse."""
    coarse = int(np.argmax(spacing))
    forward = [coarse] + [a for a in range(len(spacing)) if a != coarse]
    backward = [forward.index(a) for a in range(len(spacing))]
    return forward, backward


def resampled_shape(shape, spacing, new_spacing) -> list[int]:
    """Voxel counts of the same extent at new_spacing (at least one per axis)."""
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]
