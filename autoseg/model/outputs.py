"""Files a prediction leaves besides the label map: class probabilities and an entropy map."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.jsonio import atomic_path

PROBABILITIES_SUFFIX = "_probabilities.npz"
ENTROPY_SUFFIX = "_entropy"
INSTANCES_SUFFIX = "_instances"  # autoseg predict --instances: each lesion instance numbered (autoseg.instances)


def save_probabilities(path: Path, probabilities: np.ndarray, label_values) -> None:
    """(classes, z, y, x) probabilities on the source grid, with the label value of each class, atomically;
    float16 input stays float16 (half the disk for cross-validation outputs), anything else becomes float32."""
    if probabilities.dtype != np.float16:
        probabilities = probabilities.astype(np.float32, copy=False)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probabilities=probabilities,
                            labels=np.asarray(list(label_values)))


def load_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, label values) written by save_probabilities."""
    try:
        with np.load(path) as saved:
            return saved["probabilities"], saved["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise AutosegError(f"{path}: unreadable probabilities file ({type(e).__name__}: {e})") from None


def normalized_entropy(probabilities: np.ndarray, *, regions: bool = False) -> np.ndarray:
    """Voxel-wise entropy over classes divided by log(classes): 0 = certain, 1 = all classes equally likely.
    regions: each channel is its own yes/no (a sigmoid); the least certain region's entropy over log 2."""
    def plogp(p):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p > 0, p * np.log(p), 0.0)

    if regions:
        binary = -(plogp(probabilities) + plogp(1 - probabilities))
        return (binary.max(0) / math.log(2)).astype(np.float32)
    return (-plogp(probabilities).sum(0) / math.log(len(probabilities))).astype(np.float32)
