"""The cascade's extra input channels: a previous stage's segmentation, one-hot over foreground classes.
Training builds them from saved cross-validation predictions, prediction from the first stage's output."""
from __future__ import annotations

import numpy as np


def one_hot_channels(segmentation: np.ndarray, num_classes: int) -> np.ndarray:
    """(K-1, *shape) float32: one channel per foreground class; anything else (background, OUTSIDE) is 0."""
    return np.stack([(segmentation == c).astype(np.float32) for c in range(1, num_classes)])


def cascade_classes(plan) -> int:
    """K for one_hot_channels of a plan's label maps: one channel per value 1..the highest output value."""
    return max(plan.labels.values()) + 1
