"""Lesion instances: each connected component of a class is one instance, and instances are matched between a
prediction and its reference for lesion-wise metrics (what Mask R-CNN's instances are to a clinician: how
many lesions, which were found, how large each is).

- Connectivity: full (26 neighbours in 3D, 8 in 2D), as the prediction report's component counts: a lesion
  whose voxels touch at a corner is one lesion.
- Minimum size: components under `min_volume_mm3` are not instances (InstanceRule; default 0, keep all), in a
  prediction and in its reference alike.
- Numbering: instances are numbered 1, 2, ... class by class in label order, and within a class in the order
  of their first voxel in the array (scipy.ndimage.label's raster order).
- Matching (`match_instances`): a predicted and a reference instance of the same class match when their
  intersection over union is at least 0.5 (the panoptic-quality rule of Kirillov et al., CVPR 2019, and
  panoptica's default): above 0.5 a match is necessarily one-to-one; at exactly 0.5 ties go to the higher
  IoU, then the lower instance numbers.
- Per class: TP (matched pairs), FP (unmatched predictions), FN (unmatched references); precision, recall,
  F1 (= recognition quality RQ); lesion-wise Dice = the mean Dice of the matched pairs (panoptica's sq_dsc);
  SQ = their mean IoU; PQ = SQ x RQ. With no matched pair, the pair means are NaN, PQ is 0 when anything was
  predicted or expected and NaN when nothing was.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MATCH_IOU = 0.5


@dataclass(frozen=True)
class InstanceRule:
    """What counts as an instance: components of at least this volume."""

    min_volume_mm3: float = 0.0


@dataclass
class Instance:
    """One connected component of one class, in array coordinates."""

    id: int
    label: int
    voxels: int
    volume_mm3: float
    centroid: list[float]  # array index order
    box_start: list[int]  # array index order, inclusive
    box_stop: list[int]  # exclusive


def instance_map(segmentation: np.ndarray, spacing, labels, rule: InstanceRule = InstanceRule()
                 ) -> tuple[np.ndarray, list[Instance]]:
    """(map of instance numbers, 0 outside every instance; the instances) of the classes `labels`."""
    segmentation = np.asarray(segmentation)
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    out = np.zeros(segmentation.shape, dtype=np.int32)
    instances: list[Instance] = []
    for label in sorted(int(v) for v in labels):
        components, sizes = _components(segmentation == label, voxel_mm3, rule)
        for index, box in enumerate(ndimage.find_objects(components)):
            inside = components[box] == index + 1
            number = len(instances) + 1
            out[box][inside] = number
            centroid = [float(c) + s.start for c, s in zip(ndimage.center_of_mass(inside), box)]
            instances.append(Instance(number, label, int(sizes[index]), float(sizes[index]) * voxel_mm3, centroid,
                                      [s.start for s in box], [s.stop for s in box]))
    return out, instances


@dataclass
class InstanceCounts:
    """One class's instances compared: counts and the overlap of each matched pair."""

    tp: int
    fp: int
    fn: int
    matched_dice: list[float]
    matched_iou: list[float]

    def add(self, other: "InstanceCounts") -> "InstanceCounts":
        return InstanceCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                              self.matched_dice + other.matched_dice, self.matched_iou + other.matched_iou)

    def metrics(self) -> dict:
        tp, fp, fn = self.tp, self.fp, self.fn
        nothing = tp + fp + fn == 0

        def ratio(num, den):
            return num / den if den else float("nan")
        f1 = ratio(2 * tp, 2 * tp + fp + fn)
        sq = float(np.mean(self.matched_iou)) if self.matched_iou else float("nan")
        lesion_dice = float(np.mean(self.matched_dice)) if self.matched_dice else float("nan")
        pq = float("nan") if nothing else (0.0 if not tp else sq * f1)
        return {"tp": tp, "fp": fp, "fn": fn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
                "f1": f1, "lesion_dice": lesion_dice, "sq": sq, "pq": pq}


def _components(mask: np.ndarray, voxel_mm3: float, rule: InstanceRule) -> tuple[np.ndarray, np.ndarray]:
    """(the mask's instances numbered 1..n, every other voxel 0; each instance's voxel count)."""
    components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    keep = sizes * voxel_mm3 >= rule.min_volume_mm3
    if keep.all():
        return components, sizes
    renumber = np.zeros(n + 1, dtype=components.dtype)
    renumber[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[components], sizes[keep]


def match_instances(prediction: np.ndarray, reference: np.ndarray, spacing,
                    rule: InstanceRule = InstanceRule()) -> InstanceCounts:
    """Match the instances of a predicted mask (one class or region) to the reference mask's (the module
    docstring's rule)."""
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    predicted, pred_sizes = _components(np.asarray(prediction, dtype=bool), voxel_mm3, rule)
    expected, ref_sizes = _components(np.asarray(reference, dtype=bool), voxel_mm3, rule)
    n_pred, n_ref = len(pred_sizes), len(ref_sizes)
    if not n_pred or not n_ref:
        return InstanceCounts(0, n_pred, n_ref, [], [])
    overlap = np.bincount(predicted.ravel().astype(np.int64) * (n_ref + 1) + expected.ravel(),
                          minlength=(n_pred + 1) * (n_ref + 1)).reshape(n_pred + 1, n_ref + 1)
    intersection = overlap[1:, 1:].astype(np.float64)
    pred_sizes, ref_sizes = pred_sizes.astype(np.float64), ref_sizes.astype(np.float64)
    iou = intersection / (pred_sizes[:, None] + ref_sizes[None, :] - intersection)
    candidates = sorted((-iou[p, r], p, r) for p, r in zip(*np.nonzero(iou >= MATCH_IOU)))
    used_pred, used_ref, dice, ious = set(), set(), [], []
    for negative_iou, p, r in candidates:
        if p in used_pred or r in used_ref:
            continue
        used_pred.add(p)
        used_ref.add(r)
        ious.append(float(-negative_iou))
        dice.append(float(2 * intersection[p, r] / (pred_sizes[p] + ref_sizes[r])))
    tp = len(ious)
    return InstanceCounts(tp, n_pred - tp, n_ref - tp, dice, ious)
