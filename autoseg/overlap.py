"""Dice overlap per label or region: the score end-of-training validation and evaluation both report, from
one place below both (autoseg/evaluation/metrics.py has the full set of metrics)."""
from __future__ import annotations

import numpy as np

from autoseg.label_scheme import Target, target_mask


def dice_per_target(prediction: np.ndarray, reference: np.ndarray, targets: list[Target],
                    ignore_label: int | None = None) -> dict[str, float]:
    """Dice per target (keyed by Target.key), voxels the reference marks as ignored left out of both; NaN
    where the target is absent from both (nothing to find, nothing found)."""
    valid = None if ignore_label is None else reference != ignore_label
    out = {}
    for target in targets:
        p, r = target_mask(prediction, target), target_mask(reference, target)
        if valid is not None:
            p = p & valid
        denominator = int(p.sum()) + int(r.sum())
        out[target.key] = float("nan") if denominator == 0 else 2.0 * int((p & r).sum()) / denominator
    return out

