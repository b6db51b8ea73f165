"""Separable resampling with nnU-Net's kernels: one sparse interpolation matrix per axis.

nnU-Net (2.8.1) resizes images with scikit-image `resize(order=3, mode="edge", anti_aliasing=False,
clip=True)`, which is `scipy.ndimage.zoom(order=3, mode="nearest", grid_mode=True)` followed by a clamp
to the input's range: a cubic B-spline whose coefficients come from a recursive prefilter. Both the
prefilter and the B-spline are separable, so each axis costs a 1D recursive filter plus 4 taps instead
of 64 taps of a direct 3D evaluation. Each pass is a sparse matrix product over the moved axis, axes
whose size does not change are left untouched (exact copies, as zoom's interpolating spline is at
integer positions), and the output is produced one slab at a time, so no full-size float temporaries.

scipy's prefilter has no exact "nearest" boundary: it pads 12 edge samples on each side and filters the
padded line. The coefficients here are computed the same way, per axis, with scipy's recursion and
initial values. Label maps are not separable in this sense: their ties are decided by exact float
equality, so resample_label sums taps in scipy's own order (see there). One axis's matrix and pass are in
resample_axis.py.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from autoseg.preprocessing.resample_axis import (axis_matrix, axis_pass, kernel_pad, kernel_taps, resample_axis,
                                               sample_positions)

# Extra input rows filtered beyond a block's own rows along the blocked axis. The prefilter's pole is
# sqrt(3) - 2, so a row's influence decays as 0.268**k: 16 rows leave < 1e-9 of the amplitude, below
# float32 rounding, so a block's coefficients equal the whole volume's.
SPLINE_MARGIN = 16


def _lowres_axes(spacing) -> np.ndarray:
    """Axes with the largest spacing, by nnU-Net's exact test (max / spacing == 1)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    return np.where(max(spacing) / spacing == 1)[0]


def separate_coarse_axis(old_spacing, new_spacing, threshold: float) -> int | None:
    """The axis to resample separately (after the in-plane axes, with its own kernel), or None.

    nnU-Net's rule: the source grid is tested first, then the target grid; the anisotropic one names
    the axis of largest spacing. When two or three axes share that spacing (5 x 5 x 1 mm) nothing is
    resampled separately, and the source grid decides even then: the target is not consulted.
    """
    for spacing in (old_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > threshold:
            axes = _lowres_axes(spacing)
            return int(axes[0]) if len(axes) == 1 else None
    return None


def axis_kernels(kernel: str, coarse_axis: int | None, coarse_kernel: str, ndim: int = 3) -> list[str]:
    return [coarse_kernel if a == coarse_axis else kernel for a in range(ndim)]


def _separate_axis(kernels: list[str]) -> int | None:
    """The separately resampled axis a kernel list encodes (axis_kernels): the one axis whose kernel
    differs from the other two, which agree. Equal kernels everywhere mean no separate axis."""
    for a, kernel in enumerate(kernels):
        others = {k for b, k in enumerate(kernels) if b != a}
        if len(others) == 1 and kernel not in others:
            return a
    return None


# Output voxels computed per block; bounds the temporaries whatever the volume size.
BLOCK_VOXELS = 4 * 2 ** 20


class _Geometry:
    """Shapes, kernels and the pass order of one resampling.

    Passes run over the axes other than the separate one first, then the separate one, so that the
    clamp nnU-Net applies to each 2D slice lands between them. Blocks are output slabs along axis 0.
    """

    def __init__(self, shape, new_shape, kernels):
        self.shape = tuple(int(s) for s in shape)
        self.new_shape = tuple(int(s) for s in new_shape)
        self.kernels = list(kernels)
        self.separate = _separate_axis(self.kernels)
        self.order = [a for a in range(3) if a != self.separate] + ([self.separate] if self.separate is not None else [])
        self.axis0 = (axis_matrix(self.shape[0], self.new_shape[0], self.kernels[0])
                      if self.shape[0] != self.new_shape[0] else None)

    def blocks(self):
        """Yield (out_start, out_stop, in_start, in_stop, front, back, rows of the axis-0 matrix or None).

        in_start:in_stop are the input rows the block reads, widened by SPLINE_MARGIN for cubic so the
        prefilter sees the volume as a whole would; front/back say whether they reach the volume's ends
        (padded there as scipy does); the matrix columns are re-indexed to that local, padded slab.
        """
        n_in, n_out = self.shape[0], self.new_shape[0]
        step = max(1, BLOCK_VOXELS // max(1, self.new_shape[1] * self.new_shape[2]))
        pad = kernel_pad(self.kernels[0])
        margin = SPLINE_MARGIN if pad else 0
        for start in range(0, n_out, step):
            stop = min(n_out, start + step)
            if self.axis0 is None:
                yield start, stop, start, stop, False, False, None
                continue
            rows = self.axis0[start:stop]
            lo, hi = int(rows.indices.min()), int(rows.indices.max()) + 1  # padded column range
            a, b = max(0, lo - pad - margin), min(n_in, hi - pad + margin)
            front, back = a == 0, b == n_in
            offset = pad + a - (pad if front else 0)  # padded column -> local padded row
            width = (b - a) + (pad if front else 0) + (pad if back else 0)
            local = rows[:, lo:hi]
            local = scipy.sparse.csr_matrix((local.data, local.indices + lo - offset, local.indptr),
                                            shape=(stop - start, width))
            yield start, stop, a, b, front, back, local


def _ranges(volume: np.ndarray, separate: int | None):
    """nnU-Net clamps each resize to its input's range: the whole volume, or each 2D slice along the
    separate axis when that axis is resampled on its own (the clamp happens before the slices are mixed)."""
    if separate is None:
        return float(volume.min()), float(volume.max())
    moved = np.moveaxis(volume, separate, 0).reshape(volume.shape[separate], -1)
    return moved.min(axis=1).astype(np.float64), moved.max(axis=1).astype(np.float64)


def _clamp(slab: np.ndarray, ranges, separate: int | None, rows: slice) -> None:
    lo, hi = ranges
    if separate is not None:
        shape = [1, 1, 1]
        shape[separate] = -1
        lo, hi = (np.asarray(v[rows] if separate == 0 else v, dtype=slab.dtype).reshape(shape) for v in (lo, hi))
    np.clip(slab, lo, hi, out=slab)


def _resample_slab(slab: np.ndarray, geometry: _Geometry, block, dtype, ranges=None) -> np.ndarray:
    """One block: every axis pass in the geometry's order, the clamp before the separate axis (or last)."""
    start, stop, a, b, front, back, matrix = block
    slab = slab.astype(dtype, copy=False)
    last_joint = len(geometry.order) - (2 if geometry.separate is not None else 1)
    for i, axis in enumerate(geometry.order):
        kernel = geometry.kernels[axis]
        if axis == 0:
            if matrix is not None:
                slab = axis_pass(slab, 0, matrix, kernel, dtype, front=front, back=back)
        else:
            slab = resample_axis(slab, axis, geometry.new_shape[axis], kernel, dtype)
        if ranges is not None and i == last_joint:
            _clamp(slab, ranges, geometry.separate, slice(a, b))
    return slab


def _rows(block) -> slice:
    """The input rows (axis 0) a block reads."""
    return slice(block[2], block[3])


def resample_volume(volume: np.ndarray, new_shape, kernels: list[str], *, clip: bool = True,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Resample a 3D volume to new_shape (float32), one slab of output at a time, into `out` when given
    (a float32 array of new_shape: callers stacking channels write each in place instead of copying).

    With clip (nnU-Net's `resize(clip=True)`), values are clamped to the input's range, per slice along
    the separate axis when there is one; spline overshoot at edges is cut exactly where nnU-Net cuts it.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(volume.shape) == new_shape:
        if out is None:
            return np.asarray(volume, dtype=np.float32)
        out[...] = volume
        return out
    geometry = _Geometry(volume.shape, new_shape, kernels)
    ranges = _ranges(volume, geometry.separate) if clip else None
    if out is None:
        out = np.empty(new_shape, dtype=np.float32)
    for block in geometry.blocks():
        out[block[0]:block[1]] = _resample_slab(volume[_rows(block)], geometry, block, np.float32, ranges)
    return out


def _resampled_slabs(volumes: np.ndarray, new_shape, kernels: list[str]):
    """(block, [slab of each volume]) for every block of output slabs, each volume resampled (clamped as
    resample_volume); no resampled float volume of full size ever exists."""
    geometry = _Geometry(volumes.shape[1:], new_shape, kernels)
    ranges = [_ranges(v, geometry.separate) for v in volumes]
    for block in geometry.blocks():
        yield block, (_resample_slab(volumes[c][_rows(block)], geometry, block, np.float32, ranges[c])
                      for c in range(len(volumes)))


def resample_argmax(volumes: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Index of the largest of C volumes (C, z, y, x) after resampling each to new_shape (clamped as
    resample_volume); ties go to the lower index, like argmax.

    Computed one block of output slabs at a time (_resampled_slabs): restoring a CT's class probabilities
    to its own grid costs a slab, not a volume, per class.
    """
    new_shape = tuple(int(s) for s in new_shape)
    out = np.empty(new_shape, np.uint8 if len(volumes) <= 256 else np.int16)
    for block, slabs in _resampled_slabs(volumes, new_shape, kernels):
        best = index = None
        for c, slab in enumerate(slabs):
            if best is None:
                best, index = np.array(slab, dtype=np.float32), np.zeros(slab.shape, out.dtype)
                continue
            better = slab > best
            index[better] = c
            np.maximum(best, slab, out=best)
        out[block[0]:block[1]] = index
    return out


def resample_regions(logits: np.ndarray, new_shape, kernels: list[str], values, dtype) -> np.ndarray:
    """The region rule on resampled logits, a block of slabs at a time: region after region, in order, its
    value where its logit is above 0 (sigmoid above one half)."""
    new_shape = tuple(int(s) for s in new_shape)
    out = np.zeros(new_shape, dtype)
    for block, slabs in _resampled_slabs(logits, new_shape, kernels):
        target = out[block[0]:block[1]]
        for slab, value in zip(slabs, values):
            target[slab > 0] = value
    return out


def resample_image(image: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """(C, z, y, x) channels resampled independently (each clamped to its own range, as nnU-Net does)."""
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image
    out = np.empty((len(image),) + tuple(int(s) for s in new_shape), dtype=np.float32)
    for channel, target in zip(image, out):
        resample_volume(channel, new_shape, kernels, out=target)
    return out


# Output voxels per block of the label path, which holds a float64 score per tap (8 for trilinear).
LABEL_BLOCK_VOXELS = 2 ** 20


def _label_taps(label: np.ndarray, rows: slice, new_shape, kernels):
    """Per tap of the 1, 2, 4 or 8 around each output voxel, in scipy's order (last axis fastest): the
    label there (edges replicated) and the weight product ((w0 * w1) * w2), as scipy multiplies them."""
    per_axis = []
    for axis, kernel in enumerate(kernels):
        x = sample_positions(label.shape[axis], new_shape[axis])
        if axis == 0:
            x = x[rows]
        cols, weights = kernel_taps(x, kernel)
        per_axis.append((np.clip(cols, 0, label.shape[axis] - 1).astype(np.int64), weights))
    (c0, w0), (c1, w1), (c2, w2) = per_axis
    for d0 in range(c0.shape[1]):
        for d1 in range(c1.shape[1]):
            w01 = w0[:, d0, None, None] * w1[None, :, d1, None]
            for d2 in range(c2.shape[1]):
                yield label[np.ix_(c0[:, d0], c1[:, d1], c2[:, d2])], w01 * w2[None, None, :, d2]


def resample_label(label: np.ndarray, new_shape, kernels: list[str]) -> np.ndarray:
    """Label map resampled through its one-hot encoding (linear), then the label of largest score.

    nnU-Net 2.8.1 (batchgenerators 0.25.5 `resize_segmentation`, seg_tiebreak="nearest"): each label's
    indicator is interpolated in float64 and clamped to [0, 1]; a voxel goes to its nearest-neighbour
    label when that label has the top score (above zero), otherwise to the lowest label with the top
    score. So a 0.5/0.5 boundary goes to the label of the nearer input voxel, not to background.

    Ties are decided by exact equality, so the scores are summed tap by tap in scipy's order rather than
    separably: three labels meeting at 4/9 each can come out 0.4444444444444445 against ...444 there, and
    that last bit picks the label. Nearest along an axis (the separate-z path, where nnU-Net resizes each
    slice in 2D, then takes the nearest slice) multiplies by 1.0, which changes no bit. One block of output
    slabs at a time and one label at a time: memory is the output map plus a few block-sized arrays.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return label
    if any(k not in ("nearest", "linear") for k in kernels):
        raise ValueError(f"label maps are resampled with nearest or linear kernels, not {kernels}")
    values = np.unique(label)
    out = np.empty(new_shape, dtype=label.dtype)
    step = max(1, LABEL_BLOCK_VOXELS // max(1, new_shape[1] * new_shape[2]))
    for start in range(0, new_shape[0], step):
        rows = slice(start, min(new_shape[0], start + step))
        taps = list(_label_taps(label, rows, new_shape, kernels))
        (nn, _), = _label_taps(label, rows, new_shape, ["nearest"] * 3)
        best = win = nn_score = None
        for i, value in enumerate(values):
            score = np.zeros(nn.shape)
            for tap_label, weight in taps:
                np.add(score, weight, out=score, where=tap_label == value)
            np.clip(score, 1.0 if len(values) == 1 else 0.0, 1.0, out=score)  # resize(clip=True) of the indicator
            if best is None:
                best, win, nn_score = score, np.zeros(score.shape, np.int32), np.zeros(score.shape)
            else:
                better = score > best
                win[better] = i
                np.maximum(best, score, out=best)
            is_nn = nn == value
            nn_score[is_nn] = score[is_nn]
        block = values[win]
        use_nn = (nn_score == best) & (nn_score > 0)
        block[use_nn] = nn[use_nn]
        out[rows] = block
    return out
