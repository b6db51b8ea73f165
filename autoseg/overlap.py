"""Dice overlap per label: the score end-of-training validation and evaluation both report, from one place
below both (autoseg/evaluation/metrics.py has the full set of metrics)."""
from __future__ import annotations

import numpy as np


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, labels) -> dict[int, float]:
    """Dice per label value; NaN where the label is absent from both (nothing to find, nothing found)."""
    out = {}
    for value in labels:
        p, r = prediction == value, reference == value
        denominator = int(p.sum()) + int(r.sum())
        out[int(value)] = float("nan") if denominator == 0 else 2.0 * int((p & r).sum()) / denominator
    return out
