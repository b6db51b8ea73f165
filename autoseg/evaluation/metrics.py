"""Metrics between a predicted and a reference label map, per class, in physical units.

Conventions (docs/evaluation.md):
- Dice = 2|P∩R| / (|P| + |R|), IoU = |P∩R| / |P∪R|; NaN when the class is absent from both
  (nothing to find, nothing found): such cases do not enter means.
- Two surface conventions for HD95 and NSD (`surface=`):
  "elements" (default): the surface-element convention of Nikolov et al. 2021 (DeepMind's
  `surface-distance`, used by the Medical Segmentation Decathlon and FLARE evaluations).
  The surface is made of marching-cubes triangles (2D: marching-squares segments) between
  voxel centres, grouped per 2x2x2 (2x2) cell and weighted by their area (length) in mm;
  distances run from each surface cell to the nearest surface cell of the other mask.
  HD95 per direction = the smallest distance at which the cumulative surface area reaches 95%.
  "voxels": MetricsReloaded's convention: surface = mask voxels with a face neighbour outside
  the mask, each weighing 1, distances between voxel centres, HD95 per direction = numpy's
  linearly interpolated 95th percentile.
- HD95 = the larger of the two directed values. Both masks empty: NaN. One empty: the diagonal
  of the image in mm (the largest distance the image allows), so a missed or hallucinated
  structure scores worst instead of vanishing from the mean.
- NSD at tolerance τ mm = (weight of P's surface within τ of R's surface + weight of R's
  surface within τ of P's) / (weight of both surfaces). Both empty: NaN; one empty: 0.
  "Within τ" is d <= τ (1 + 1e-6): NIfTI stores spacing as float32 (0.8 mm is read as
  0.800000011920929), which would otherwise put a neighbour exactly one voxel away outside a
  one-voxel tolerance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from autoseg.label_scheme import as_targets, target_mask

METRIC_NAMES = ("dice", "iou", "hd95", "nsd", "tp", "fp", "fn", "pred_volume_mm3", "ref_volume_mm3")
SURFACE_CONVENTIONS = ("elements", "voxels")
DEFAULT_SURFACE = "elements"
# float32 spacing is off by up to 6e-8 relative; anything this close to τ is "at" τ
TOLERANCE_RTOL = 1e-6

# Surface triangles of every 2x2x2 configuration with at most 4 corners inside; corner (i, j, k)
# is bit 4i + 2j + k of the code, entries are separated by "|" in code order (0..255, empty for
# codes with more than 4 corners). Each triangle is 3 digits: 8x the absolute components of its
# area vector (half the cross product of two edges) in voxel units; only their magnitudes matter
# since a grid spacing scales each component separately. Triangles are Lorensen's marching cubes
# with vertices at edge midpoints, as tabulated by scikit-image (method="lorensen");
# a configuration with more than 4 corners inside has the surface of its complement,
# the complementary symmetry of the original algorithm. surface-distance's table has
# exactly these areas (tests/test_surface_metrics.py regenerates this table and compares both).
_TRIANGLES_3D = (
    '|111|111|220 220|111|202 202|111 111|111 222 400|111|111 111|202 202|111 222 400|220 220|111 222'
    ' 400|111 222 400|400 400|111|022 022|111 111|040 111 222|111 111|004 111 222|111 111 111|111 111'
    ' 222 222|111 111|022 022 111|111 202 202|022 111 202 333|111 220 220|022 111 220 333|111 111 222'
    ' 400||111|111 111|022 022|040 111 222|111 111|111 202 202|022 022 111|022 111 202 333|111 111|11'
    '1 111 111|004 111 222|111 111 222 222|111 220 220|111 111 222 400|022 111 220 333||220 220|040 1'
    '11 222|040 111 222|040 040|111 220 220|111 202 220 333|040 111 111 222||111 220 220|040 111 111 '
    '222|111 202 220 333||220 220 220 220||||111|111 111|111 111|111 220 220|022 022|004 111 222|022 '
    '022 111|022 111 220 333|111 111|111 111 111|111 202 202|111 111 222 400|040 111 222|111 111 222 '
    '222|022 111 202 333||202 202|004 111 222|111 202 202|111 202 220 333|004 111 222|004 004|004 111'
    ' 111 222||111 202 202|004 111 111 222|202 202 202 202||111 202 220 333||||111 111|111 111 111|02'
    '2 022 111|040 111 111 222|022 022 111|004 111 111 222|022 022 022 022||111 111 111|111 111 111 1'
    '11|004 111 111 222||040 111 111 222||||111 222 400|111 111 222 222|022 111 202 333||022 111 220 '
    '333||||111 111 222 400||||||||111|111 111|111 111|111 220 220|111 111|111 202 202|111 111 111|11'
    '1 111 222 400|022 022|022 022 111|004 111 222|022 111 220 333|040 111 222|022 111 202 333|111 11'
    '1 222 222||111 111|022 022 111|111 111 111|040 111 111 222|111 111 111|004 111 111 222|111 111 1'
    '11 111||022 022 111|022 022 022 022|004 111 111 222||040 111 111 222||||202 202|111 202 202|004 '
    '111 222|111 202 220 333|111 202 202|202 202 202 202|004 111 111 222||004 111 222|004 111 111 222'
    '|004 004||111 202 220 333||||111 222 400|022 111 202 333|111 111 222 222||111 111 222 400||||022'
    ' 111 220 333||||||||220 220|111 220 220|111 220 220|220 220 220 220|040 111 222|111 202 220 333|'
    '040 111 111 222||040 111 222|040 111 111 222|111 202 220 333||040 040||||111 222 400|022 111 220'
    ' 333|111 111 222 400||111 111 222 222||||022 111 202 333||||||||111 222 400|111 111 222 400|022 '
    '111 220 333||022 111 202 333||||111 111 222 222||||||||400 400|||||||||||||||'
)


def _triangle_table() -> np.ndarray:
    """(256, 4, 3): absolute area-vector components of each code's triangles in voxel units (0-padded)."""
    entries = "".join(_TRIANGLES_3D).split("|")
    table = np.zeros((256, 4, 3))
    for code in range(1, 255):
        minority = code if bin(code).count("1") <= 4 else 255 - code
        for t, digits in enumerate(entries[minority].split()):
            table[code, t] = [int(c) / 8 for c in digits]
    return table


_TRIANGLE_COMPONENTS = _triangle_table()


def element_sizes(spacing) -> np.ndarray:
    """Surface area (3D, mm²) or contour length (2D, mm) of every 2x2x2 (2x2) neighbourhood code."""
    spacing = [float(s) for s in spacing]
    if len(spacing) == 3:
        s0, s1, s2 = spacing
        # an area vector's component along axis a is a product of the other two axes' lengths
        scaled = _TRIANGLE_COMPONENTS * np.array([s1 * s2, s0 * s2, s0 * s1])
        return np.sqrt((scaled ** 2).sum(axis=-1)).sum(axis=-1)
    if len(spacing) == 2:
        s0, s1 = spacing
        diagonal = 0.5 * math.sqrt(s0 * s0 + s1 * s1)  # midpoint to midpoint across a corner
        sizes = np.zeros(16)
        for code in range(1, 15):
            inside = [(i, j) for i in range(2) for j in range(2) if code >> (2 * i + j) & 1]
            if len(inside) != 2:  # one corner cut off, or all but one
                sizes[code] = diagonal
            elif inside[0][0] == inside[1][0]:  # a row inside: the segment runs along axis 1
                sizes[code] = s1
            elif inside[0][1] == inside[1][1]:
                sizes[code] = s0
            else:  # a saddle: two corners cut off
                sizes[code] = 2 * diagonal
        return sizes
    raise ValueError(f"surface elements need a 2D or 3D grid, got {len(spacing)} axes")


@dataclass
class ClassMetrics:
    dice: float
    iou: float
    hd95: float
    nsd: float
    tp: int
    fp: int
    fn: int
    pred_volume_mm3: float
    ref_volume_mm3: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SurfaceDistances:
    """Each surface element of P and R with its distance to the other surface and its weight.

    Weights are areas in mm² (3D) or lengths in mm (2D) for surface elements, 1 for voxels.
    """

    pred_to_ref: np.ndarray
    pred_weights: np.ndarray
    ref_to_pred: np.ndarray
    ref_weights: np.ndarray


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with at least one face neighbour outside it (or on the image border)."""
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _distances_to(target_surface: np.ndarray, points: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each True voxel of `points` to the nearest True voxel of `target_surface`."""
    # the EDT measures the distance to the nearest zero: zeros on the target's surface
    distance = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    return distance[points]


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(distances of P's surface voxels to R's surface, distances of R's surface voxels to P's), in mm."""
    sp, sr = surface(prediction), surface(reference)
    box = _bounding_box(sp | sr)
    sp, sr = sp[box], sr[box]
    return _distances_to(sr, sp, spacing), _distances_to(sp, sr, spacing)


def voxel_surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing) -> SurfaceDistances:
    """MetricsReloaded's convention: border voxels, each weighing 1."""
    to_ref, to_pred = surface_distances(prediction, reference, spacing)
    return SurfaceDistances(to_ref, np.ones(to_ref.size), to_pred, np.ones(to_pred.size))


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """The code of every 2x2x2 (2x2) cell of the zero-padded mask: bit 4i + 2j + k (2i + j) set when
    corner (i, j, k) is inside. Shape: mask.shape + 1, cell n lying between voxels n-1 and n."""
    padded = np.pad(mask.astype(np.uint8), 1)
    codes = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)
    for corner in np.ndindex(*(2,) * mask.ndim):
        bit = sum(c << (mask.ndim - 1 - axis) for axis, c in enumerate(corner))
        view = padded[tuple(slice(c, c + n + 1) for c, n in zip(corner, mask.shape))]
        codes |= view << np.uint8(bit)
    return codes


def element_surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing) -> SurfaceDistances:
    """Nikolov et al.'s convention: surface cells weighted by their marching-cubes area (2D: length).

    Both masks must be non-empty. Cells form a grid offset by half a voxel with the image's
    spacing, so the distance from a cell of P's surface to R's surface is the EDT of R's
    non-surface cells there.
    """
    box = _bounding_box(prediction | reference, margin=0)
    full = (1 << (1 << prediction.ndim)) - 1
    sizes = element_sizes(spacing)
    result = []
    codes = [neighbourhood_codes(m[box]) for m in (prediction, reference)]
    borders = [(c != 0) & (c != full) for c in codes]
    for own, other in ((0, 1), (1, 0)):
        distance = ndimage.distance_transform_edt(~borders[other], sampling=spacing)
        result += [distance[borders[own]], sizes[codes[own][borders[own]]]]
    return SurfaceDistances(*result)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The smallest box around the mask: distances between surface voxels never need what lies outside it."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(hits[0] - margin, 0), hits[-1] + 1 + margin))
    return tuple(box)


def image_diagonal_mm(shape, spacing) -> float:
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def area_percentile(distances: np.ndarray, weights: np.ndarray, percent: float) -> float:
    """The smallest distance at which the cumulative weight of the elements reaches `percent`.

    Nikolov et al.'s rule: no interpolation, so the result is always a distance that occurs.
    Ties in distance are ordered by weight, as surface-distance sorts them, which fixes
    the rounding of the cumulative sum.
    """
    order = np.lexsort((weights, distances))
    cumulative = np.cumsum(weights[order]) / np.sum(weights)
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), distances.size - 1)
    return float(distances[order][index])


def hd95_of(distances: SurfaceDistances, surface_convention: str) -> float:
    if surface_convention == "voxels":
        return float(max(np.percentile(distances.pred_to_ref, 95), np.percentile(distances.ref_to_pred, 95)))
    return max(area_percentile(distances.pred_to_ref, distances.pred_weights, 95),
               area_percentile(distances.ref_to_pred, distances.ref_weights, 95))


def nsd_of(distances: SurfaceDistances, tolerance_mm: float) -> float:
    limit = tolerance_mm * (1.0 + TOLERANCE_RTOL)
    within = (distances.pred_weights[distances.pred_to_ref <= limit].sum()
              + distances.ref_weights[distances.ref_to_pred <= limit].sum())
    return float(within / (distances.pred_weights.sum() + distances.ref_weights.sum()))


def class_metrics(prediction: np.ndarray, reference: np.ndarray, spacing, tolerance_mm: float = 1.0, *,
                  surface_convention: str = DEFAULT_SURFACE) -> ClassMetrics:
    """All metrics of one class from boolean masks on the same grid; spacing per array axis, in mm."""
    if surface_convention not in SURFACE_CONVENTIONS:
        raise ValueError(f"surface convention must be one of {SURFACE_CONVENTIONS}, got {surface_convention!r}")
    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != p.ndim:
        raise ValueError(f"{len(spacing)} spacings for a {p.ndim}D mask")
    voxel_mm3 = float(np.prod(spacing))
    tp = int((p & r).sum())
    n_p, n_r = int(p.sum()), int(r.sum())
    fp, fn = n_p - tp, n_r - tp
    if n_p == 0 and n_r == 0:
        dice = iou = hd95 = nsd = float("nan")
    elif n_p == 0 or n_r == 0:
        dice = iou = nsd = 0.0
        hd95 = image_diagonal_mm(p.shape, spacing)
    else:
        dice = 2.0 * tp / (n_p + n_r)
        iou = tp / (n_p + n_r - tp)
        measure = element_surface_distances if surface_convention == "elements" else voxel_surface_distances
        distances = measure(p, r, spacing)
        hd95 = hd95_of(distances, surface_convention)
        nsd = nsd_of(distances, tolerance_mm)
    return ClassMetrics(dice, iou, hd95, nsd, tp, fp, fn, n_p * voxel_mm3, n_r * voxel_mm3)


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing, labels, tolerance_mm: float = 1.0, *,
                 ignore_label: int | None = None, surface_convention: str = DEFAULT_SURFACE) -> dict[str, ClassMetrics]:
    """class_metrics for every label value or region (autoseg.label_scheme.Target), keyed by Target.key;
    voxels the reference marks with ignore_label are left out of both masks."""
    valid = None if ignore_label is None else reference != ignore_label
    out = {}
    for target in as_targets(labels):
        p = target_mask(prediction, target)
        out[target.key] = class_metrics(p if valid is None else p & valid, target_mask(reference, target), spacing,
                                        tolerance_mm, surface_convention=surface_convention)
    return out
