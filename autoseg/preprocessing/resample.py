"""Separable resampling: one sparse interpolation matrix per axis.

A cubic kernel needs 4 taps per axis, so three 1D passes cost 12 taps per voxel where a
direct 3D cubic interpolation costs 64; each pass is a sparse matrix product over the
moved axis, and axes whose size does not change are left untouched (exact copies).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse

KERNELS = ("nearest", "linear", "cubic")


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5 reproduces quadratics, no spline prefilter needed)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                    np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))


@lru_cache(maxsize=64)
def axis_matrix(n_in: int, n_out: int, kernel: str) -> scipy.sparse.csr_matrix:
    """(n_out x n_in) interpolation weights; voxel centres aligned, edges replicated."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if kernel == "nearest":
        cols = np.clip(np.floor(x + 0.5), 0, n_in - 1).astype(np.int64)[:, None]
        weights = np.ones_like(cols, dtype=np.float64)
    elif kernel == "linear":
        base = np.floor(x)
        offsets = np.arange(0, 2)
        cols = base[:, None] + offsets
        weights = 1 - np.abs(x[:, None] - cols)
    elif kernel == "cubic":
        base = np.floor(x)
        offsets = np.arange(-1, 3)
        cols = base[:, None] + offsets
        weights = _cubic(x[:, None] - cols)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    cols = np.clip(cols, 0, n_in - 1).astype(np.int64)
    rows = np.repeat(np.arange(n_out), cols.shape[1])
    matrix = scipy.sparse.csr_matrix((weights.ravel().astype(np.float32), (rows, cols.ravel())), shape=(n_out, n_in))
    matrix.sum_duplicates()
    return matrix


def resample_axis(array: np.ndarray, axis: int, n_out: int, kernel: str) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    moved = np.moveaxis(array, axis, 0)
    rest = moved.shape[1:]
    flat = np.ascontiguousarray(moved, dtype=np.float32).reshape(n_in, -1)
    out = axis_matrix(n_in, n_out, kernel) @ flat
    return np.moveaxis(out.reshape((n_out,) + rest), 0, axis)


def separate_coarse_axis(old_spacing, new_spacing, threshold: float) -> int | None:
    """The axis to resample with nearest-neighbour when either grid is strongly anisotropic."""
    for spacing in (old_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > threshold:
            return int(np.argmax(spacing))
    return None


def axis_kernels(kernel: str, coarse_axis: int | None, coarse_kernel: str, ndim: int = 3) -> list[str]:
    return [coarse_kernel if a == coarse_axis else kernel for a in range(ndim)]


def resample_volume(volume: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Resample a 3D float volume to new_shape, shrinking axes first to keep the work small."""
    order = sorted(range(volume.ndim), key=lambda a: new_shape[a] / volume.shape[a])
    out = volume
    for axis in order:
        out = resample_axis(out, axis, int(new_shape[axis]), kernels[axis])
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_image(image: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """(C, z, y, x) channels resampled independently."""
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image
    return np.stack([resample_volume(channel, new_shape, kernels) for channel in image])


def resample_label(label: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Label map resampled through its one-hot encoding (linear), then argmax.

    One class at a time keeps memory at two float volumes whatever the number of classes;
    ties go to the lower label value.
    """
    if tuple(label.shape) == tuple(new_shape):
        return label
    best_value = np.full(tuple(new_shape), -np.inf, dtype=np.float32)
    result = np.zeros(tuple(new_shape), dtype=label.dtype)
    for value in np.unique(label):
        score = resample_volume((label == value).astype(np.float32), new_shape, kernels)
        better = score > best_value
        result[better] = value
        best_value = np.maximum(best_value, score)
    return result


def resampled_shape(shape, spacing, new_spacing) -> list[int]:
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]
