"""One axis of the separable resampling (resample.py): the sparse interpolation matrix of nnU-Net's kernels
and the pass that applies it, with scipy's cubic B-spline prefilter reproduced row by row."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse

KERNELS = ("nearest", "linear", "cubic")

# Edge samples scipy.ndimage pads before its spline prefilter in mode "nearest" (_prepad_for_spline_filter).
SPLINE_PAD = 12


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 cubic B-spline taps at floor(x) - 1 .. floor(x) + 2, t = x - floor(x)."""
    s = 1.0 - t
    return np.stack([s ** 3 / 6, (4 - 6 * t ** 2 + 3 * t ** 3) / 6,
                     (1 + 3 * t + 3 * t ** 2 - 3 * t ** 3) / 6, t ** 3 / 6], axis=1)


def kernel_pad(kernel: str) -> int:
    """Samples padded on each side of an axis before interpolating it (only the spline is prefiltered)."""
    return SPLINE_PAD if kernel == "cubic" else 0


def sample_positions(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinates of the output samples, pixel centres aligned: skimage resize's (zoom grid_mode=True),
    evaluated in the same order of operations so exact halves (ties) fall where scipy's do."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (float(n_in) / n_out) - 0.5


def kernel_taps(x: np.ndarray, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """(first tap + offsets, weights) per position for nearest and linear, in scipy's arithmetic: the
    linear weights are 1 - t and 1 - (1 - t) (get_spline_interpolation_weights), not 1 - t and t, which
    can differ in the last bit and so decide a label tie differently."""
    if kernel == "nearest":
        return np.floor(x + 0.5)[:, None], np.ones((len(x), 1))
    base = np.floor(x)
    first = 1.0 - (x - base)
    return base[:, None] + np.arange(0, 2), np.stack([first, 1.0 - first], axis=1)


@lru_cache(maxsize=64)
def axis_matrix(n_in: int, n_out: int, kernel: str) -> scipy.sparse.csr_matrix:
    """(n_out x (n_in + 2 * pad)) float64 weights over the axis padded by kernel_pad(kernel) samples.

    nearest and linear read the samples themselves with edges replicated (scipy mode "nearest":
    floor(x + 0.5) rounds halves up); cubic reads B-spline coefficients of the edge-padded axis.
    """
    x = sample_positions(n_in, n_out)
    pad = kernel_pad(kernel)
    if kernel == "nearest":
        cols = np.floor(x + 0.5)[:, None]
        weights = np.ones_like(cols)
    elif kernel == "linear":
        cols, weights = kernel_taps(x, kernel)
    elif kernel == "cubic":
        base = np.floor(x)
        cols = base[:, None] + np.arange(-1, 3)
        weights = _bspline3(x - base)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    cols = np.clip(cols + pad, 0, n_in + 2 * pad - 1).astype(np.int64)
    rows = np.repeat(np.arange(n_out), cols.shape[1])
    matrix = scipy.sparse.csr_matrix((weights.ravel(), (rows, cols.ravel())), shape=(n_out, n_in + 2 * pad))
    matrix.sum_duplicates()
    return matrix


# The cubic B-spline's pole and gain. The causal initial value is a sum of z**i terms; beyond 20 of them
# (z**20 < 4e-12) they are below float32 and float64-accumulated rounding of the coefficients here.
_POLE = np.sqrt(3.0) - 2.0
_GAIN = (1.0 - _POLE) * (1.0 - 1.0 / _POLE)
_INIT_TERMS = 20


def _prefilter_rows(c: np.ndarray) -> None:
    """B-spline coefficients of each column of c (n, m), in place and divided by _GAIN (the caller folds
    the gain into its interpolation weights, saving a pass): scipy's spline_filter1d(order=3,
    mode="nearest") recursion, causal pass with its "reflect" initial value, then the anticausal pass.

    Vectorised across columns: each recursion step is one row operation, so the filter runs at memory
    speed instead of scipy's line-by-line buffer copies (about 5x faster here). Equal to scipy's to
    rounding for lines of 3 or more samples; scipy's initial sum reads back its own partial result for
    very short lines (a z**(2n) effect, 1e-3 at n = 3), which never occurs here: every line the
    resampler filters is padded or has margin rows, 24 samples or more.
    """
    n = c.shape[0]
    if n < 2:
        return  # scipy leaves a single sample unfiltered
    z = c.dtype.type(_POLE)
    k = min(n, _INIT_TERMS)
    powers = (_POLE ** np.arange(1, k)).astype(c.dtype)
    z_n = _POLE ** n
    tail = c[0] + powers @ c[1:k]
    if n <= 2 * _INIT_TERMS:  # the reflected terms: z**n times a mirror of the sum, negligible on long lines
        tail += c.dtype.type(z_n) * (c[n - 1] + powers @ c[n - k:n - 1][::-1])
    c[0] += tail * c.dtype.type(_POLE / (1.0 - z_n * z_n))
    step = np.empty_like(c[0])
    for i in range(1, n):
        np.multiply(c[i - 1], z, out=step)
        c[i] += step
    c[n - 1] *= c.dtype.type(_POLE / (_POLE - 1.0))
    for i in range(n - 2, -1, -1):
        np.subtract(c[i + 1], c[i], out=step)
        np.multiply(step, z, out=c[i])


def axis_pass(array: np.ndarray, axis: int, matrix: scipy.sparse.csr_matrix, kernel: str, dtype, *,
               front: bool = True, back: bool = True) -> np.ndarray:
    """One axis resampled by `matrix`, whose columns index the samples the kernel reads: the axis itself,
    or for cubic the B-spline coefficients of the axis edge-padded by SPLINE_PAD at the ends flagged
    front/back (those that are the volume's own ends; a block's inner cut has margin rows instead)."""
    moved = np.moveaxis(array, axis, 0)
    n, rest = moved.shape[0], moved.shape[1:]
    pad_front = SPLINE_PAD if kernel == "cubic" and front else 0
    pad_back = SPLINE_PAD if kernel == "cubic" and back else 0
    samples = np.empty((pad_front + n + pad_back, int(np.prod(rest, dtype=np.int64))), dtype=dtype)
    samples[pad_front:pad_front + n].reshape((n,) + rest)[...] = moved
    samples[:pad_front] = samples[pad_front]
    samples[pad_front + n:] = samples[pad_front + n - 1]
    weights = matrix.astype(dtype, copy=False)
    if kernel == "cubic":
        _prefilter_rows(samples)
        weights = weights * np.dtype(dtype).type(_GAIN)
    out = weights @ samples
    return np.moveaxis(out.reshape((matrix.shape[0],) + rest), 0, axis)


def resample_axis(array: np.ndarray, axis: int, n_out: int, kernel: str, dtype=np.float32) -> np.ndarray:
    """One whole axis resampled (prefiltered first for cubic)."""
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    return axis_pass(array, axis, axis_matrix(n_in, n_out, kernel), kernel, dtype)
