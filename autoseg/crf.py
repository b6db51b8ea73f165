"""Dense CRF refinement of predicted class probabilities (DeepLab v1/v2's postprocessing), in 2D or 3D.

A fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011) with Potts compatibility, solved by mean-field
iterations. Each iteration adds to every class's log-probability what its neighbours believe:
- a smoothness kernel: a Gaussian of width `smooth_sigma_mm` in millimetres (per-axis voxel widths from the
  spacing, so an anisotropic scan is smoothed isotropically in space);
- an appearance (bilateral) kernel: neighbours within `spatial_sigma_mm` whose normalised intensity is within
  `intensity_sigma`, so labels spread along tissue of the same intensity and stop at edges.
Both kernels are normalised (each message is the neighbours' weighted mean probability, in [0, 1]), which
makes the weights log-probability bonuses comparable across spacings and image sizes.

The bilateral filter is computed on a downsampled bilateral grid (Paris & Durand 2006; the idea behind the
permutohedral lattice's speed): probabilities are splatted into a grid over (space / spatial sigma,
intensity / intensity sigma), blurred there with a one-cell Gaussian, and read back by multilinear
interpolation. It uses the first image channel's intensities. Only the box around voxels where some
foreground class has at least MIN_FOREGROUND probability (plus two spatial sigmas) is refined: far from any
structure the network's background is certain and a CRF cannot change it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_FOREGROUND = 0.01
TINY = 1e-6


@dataclass(frozen=True)
class CrfSettings:
    bilateral_weight: float = 3.0
    spatial_sigma_mm: float = 5.0
    intensity_sigma: float = 0.5  # in units of the normalised image (z-scores)
    smooth_weight: float = 1.0
    smooth_sigma_mm: float = 1.0
    iterations: int = 5


def _bilateral_grid(intensity: np.ndarray, spacing, settings: CrfSettings):
    """Each voxel's continuous grid coordinates, its nearest cell, and the grid's shape."""
    axes = [np.arange(n, dtype=np.float32) * (s / settings.spatial_sigma_mm) for n, s in zip(intensity.shape, spacing)]
    coords = list(np.meshgrid(*axes, indexing="ij"))
    low = float(intensity.min())
    coords.append((intensity - low) / settings.intensity_sigma)
    coords = [c + 1.0 for c in coords]  # a one-cell margin so the blur does not wrap or clip
    shape = tuple(int(np.ceil(float(c.max()))) + 3 for c in coords)
    cells = np.ravel_multi_index([np.rint(c).astype(np.int64) for c in coords], shape)
    return np.stack([c.ravel() for c in coords]), cells.ravel(), shape


def _bilateral_mean(values: np.ndarray, coords, cells, shape, norm: np.ndarray) -> np.ndarray:
    grid = np.bincount(cells, weights=values.ravel(), minlength=int(np.prod(shape))).reshape(shape)
    grid = ndimage.gaussian_filter(grid, 1.0, mode="constant")
    sliced = ndimage.map_coordinates(grid, coords, order=1, mode="constant")
    return (sliced / norm).reshape(values.shape).astype(np.float32)


def refine(probabilities: np.ndarray, intensity: np.ndarray, spacing, settings: CrfSettings) -> np.ndarray:
    """(C, *grid) class probabilities (channel 0 background) -> refined probabilities of the same shape.

    intensity: (*grid) the normalised image; spacing: mm per axis of the grid."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    foreground = probabilities[1:].max(axis=0) >= MIN_FOREGROUND if len(probabilities) > 1 else None
    if foreground is None or not foreground.any():
        return probabilities
    margin = [int(np.ceil(2 * settings.spatial_sigma_mm / s)) for s in spacing]
    where = np.nonzero(foreground)
    box = tuple(slice(max(0, int(w.min()) - m), int(w.max()) + m + 1) for w, m in zip(where, margin))
    p = probabilities[(slice(None),) + box]
    unary = np.log(np.clip(p, TINY, 1.0))
    coords, cells, shape = _bilateral_grid(np.asarray(intensity, np.float32)[box], spacing, settings)
    norm = _bilateral_mean(np.ones(p.shape[1:], np.float32), coords, cells, shape, np.ones(1, np.float32))
    norm = np.maximum(norm.ravel(), TINY)
    smooth_sigma = [settings.smooth_sigma_mm / s for s in spacing]
    q = p.copy()
    for _ in range(settings.iterations):
        logits = unary.copy()
        for c in range(len(q)):
            if settings.smooth_weight:
                logits[c] += settings.smooth_weight * ndimage.gaussian_filter(q[c], smooth_sigma, mode="nearest")
            if settings.bilateral_weight:
                logits[c] += settings.bilateral_weight * _bilateral_mean(q[c], coords, cells, shape, norm)
        logits -= logits.max(axis=0, keepdims=True)
        np.exp(logits, out=logits)
        q = logits / logits.sum(axis=0, keepdims=True)
    out = probabilities.copy()
    out[(slice(None),) + box] = q
    return out


# What find-best tries on the cross-validation predictions: the appearance kernel's weight, reach and
# intensity tolerance (the smoothness kernel stays at its default). Eight settings.
CANDIDATES = tuple(CrfSettings(bilateral_weight=w, spatial_sigma_mm=s, intensity_sigma=i)
                   for w in (1.0, 3.0) for s in (3.0, 8.0) for i in (0.5, 1.0))
