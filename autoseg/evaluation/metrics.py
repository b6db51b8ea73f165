"""Metrics between a predicted and a reference label map, per class, in physical units.

Conventions (docs/evaluation.md):
- Dice = 2|P∩R| / (|P| + |R|), IoU = |P∩R| / |P∪R|; NaN when the class is absent from both
  (nothing to find, nothing found): such cases do not enter means.
- Surfaces are the mask voxels with a face neighbour outside the mask (the image border counts
  as outside). Distances are Euclidean between voxel centres in mm, from each surface voxel to
  the nearest surface voxel of the other mask.
- HD95 = the larger of the two directed 95th percentiles. Both masks empty: NaN. One empty:
  the diagonal of the image in mm (the largest distance the image allows), so a missed or
  hallucinated structure scores worst instead of vanishing from the mean.
- NSD (normalized surface Dice at tolerance τ mm) = (surface voxels of P within τ of R's surface
  + surface voxels of R within τ of P's surface) / (all surface voxels of P and R). Both empty:
  NaN; one empty: 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("dice", "iou", "hd95", "nsd", "tp", "fp", "fn", "pred_volume_mm3", "ref_volume_mm3")


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


def class_metrics(prediction: np.ndarray, reference: np.ndarray, spacing, tolerance_mm: float = 1.0) -> ClassMetrics:
    """All metrics of one class from boolean masks on the same grid; spacing per array axis, in mm."""
    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
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
        to_ref, to_pred = surface_distances(p, r, spacing)
        hd95 = float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))
        within = int((to_ref <= tolerance_mm).sum()) + int((to_pred <= tolerance_mm).sum())
        nsd = within / (to_ref.size + to_pred.size)
    return ClassMetrics(dice, iou, hd95, nsd, tp, fp, fn, n_p * voxel_mm3, n_r * voxel_mm3)


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing, labels,
                 tolerance_mm: float = 1.0) -> dict[int, ClassMetrics]:
    """class_metrics for every label value (a value of a region's list would be a union: not supported)."""
    return {int(v): class_metrics(prediction == v, reference == v, spacing, tolerance_mm) for v in labels}
