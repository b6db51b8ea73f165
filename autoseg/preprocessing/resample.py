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


def _apply(matrix: scipy.sparse.csr_matrix, array: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(array, axis, 0)
    rest = moved.shape[1:]
    flat = np.ascontiguousarray(moved, dtype=np.float32).reshape(moved.shape[0], -1)
    out = matrix @ flat
    return np.moveaxis(out.reshape((matrix.shape[0],) + rest), 0, axis)


def resample_axis(array: np.ndarray, axis: int, n_out: int, kernel: str) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    return _apply(axis_matrix(n_in, n_out, kernel), array, axis)


def separate_coarse_axis(old_spacing, new_spacing, threshold: float) -> int | None:
    """The axis to resample with nearest-neighbour when either grid is strongly anisotropic."""
    for spacing in (old_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > threshold:
            return int(np.argmax(spacing))
    return None


def axis_kernels(kernel: str, coarse_axis: int | None, coarse_kernel: str, ndim: int = 3) -> list[str]:
    return [coarse_kernel if a == coarse_axis else kernel for a in range(ndim)]


# Output voxels computed per block; bounds the temporaries whatever the volume size.
BLOCK_VOXELS = 4 * 2 ** 20


def _blocks(shape, new_shape, kernel: str):
    """Output slabs along axis 0, each with the input rows it needs and the rows of the axis-0 matrix.

    Yields (out_start, out_stop, in_start, in_stop, matrix or None). Blocking along the first
    axis keeps every input slab a contiguous view, and the other axes see whole planes.
    """
    step = max(1, BLOCK_VOXELS // max(1, int(new_shape[1]) * int(new_shape[2])))
    full = axis_matrix(shape[0], int(new_shape[0]), kernel) if shape[0] != new_shape[0] else None
    for start in range(0, int(new_shape[0]), step):
        stop = min(int(new_shape[0]), start + step)
        if full is None:
            yield start, stop, start, stop, None
            continue
        rows = full[start:stop]
        lo, hi = int(rows.indices.min()), int(rows.indices.max()) + 1
        yield start, stop, lo, hi, rows[:, lo:hi]


def _resample_slab(slab: np.ndarray, matrix, new_shape, kernels) -> np.ndarray:
    slab = slab.astype(np.float32, copy=False) if matrix is None else _apply(matrix, slab, 0)
    for axis in (1, 2):
        slab = resample_axis(slab, axis, int(new_shape[axis]), kernels[axis])
    return slab


def resample_volume(volume: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Resample a 3D volume to new_shape (float32), one slab of output at a time."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(volume.shape) == new_shape:
        return np.asarray(volume, dtype=np.float32)
    out = np.empty(new_shape, dtype=np.float32)
    for start, stop, lo, hi, matrix in _blocks(volume.shape, new_shape, kernels[0]):
        out[start:stop] = _resample_slab(volume[lo:hi], matrix, new_shape, kernels)
    return out


def resample_argmax(volumes: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Index of the largest of C volumes (C, z, y, x) after resampling each to new_shape; ties go to the
    lower index, like argmax.

    Computed one block of output slabs at a time, so no resampled float volume of full size ever
    exists: restoring a CT's class probabilities to its own grid costs a slab, not a volume, per class.
    """
    new_shape = tuple(int(s) for s in new_shape)
    out = np.empty(new_shape, np.uint8 if len(volumes) <= 256 else np.int16)
    for start, stop, lo, hi, matrix in _blocks(volumes.shape[1:], new_shape, kernels[0]):
        best = index = None
        for c in range(len(volumes)):
            slab = _resample_slab(volumes[c, lo:hi], matrix, new_shape, kernels)
            if best is None:
                best, index = np.array(slab, dtype=np.float32), np.zeros(slab.shape, out.dtype)
                continue
            better = slab > best
            index[better] = c
            np.maximum(best, slab, out=best)
        out[start:stop] = index
    return out


def resample_image(image: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """(C, z, y, x) channels resampled independently."""
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image
    return np.stack([resample_volume(channel, new_shape, kernels) for channel in image])


def resample_label(label: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Label map resampled through its one-hot encoding (linear), then argmax.

    Slab by slab and one class at a time, so memory stays at the output label map plus small
    temporaries whatever the number of classes; ties go to the lower label value.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return label
    values = np.unique(label)
    out = np.empty(new_shape, dtype=label.dtype)
    for start, stop, lo, hi, matrix in _blocks(label.shape, new_shape, kernels[0]):
        slab = label[lo:hi]
        best = None
        for value in values:
            score = _resample_slab((slab == value).astype(np.float32), matrix, new_shape, kernels)
            if best is None:
                best, block = score, np.full(score.shape, value, dtype=label.dtype)
            else:
                better = score > best
                block[better] = value
                np.maximum(best, score, out=best)
        out[start:stop] = block
    return out
