"""Memory model: how many feature-map voxels a plain U-Net keeps for backpropagation.

The count is the sum over every convolution's output (channels x voxels), the
transposed convolutions and the segmentation output, which tracks GPU memory of
training closely enough to size patches; reference values calibrate it to a budget.
"""
from __future__ import annotations

import numpy as np

REFERENCE_VOXELS_3D = 560_000_000  # fits batch 2 in 8 GB
REFERENCE_VOXELS_2D = 85_000_000  # fits batch 12 in 8 GB
REFERENCE_GB = 8.0
REFERENCE_BATCH_3D = 2
REFERENCE_BATCH_2D = 12


def reference_budget(ndim: int, gpu_memory_gb: float) -> tuple[float, int]:
    """(feature-map voxels that fit the budget, batch size they correspond to)."""
    ref = REFERENCE_VOXELS_2D if ndim == 2 else REFERENCE_VOXELS_3D
    bs = REFERENCE_BATCH_2D if ndim == 2 else REFERENCE_BATCH_3D
    return ref * gpu_memory_gb / REFERENCE_GB, bs


def feature_map_voxels(patch_size, pool_strides, features_per_stage, num_classes: int,
                       convs_per_stage: int = 2, deep_supervision: bool = False) -> int:
    """Feature-map voxels of one sample through encoder and decoder (one input patch)."""
    sizes = []
    size = list(patch_size)
    for stride in pool_strides:
        size = [s // k for s, k in zip(size, stride)]
        sizes.append(size)
    total = 0
    for size, features in zip(sizes, features_per_stage):
        total += convs_per_stage * features * int(np.prod(size, dtype=np.int64))
    n = len(sizes)
    for level in range(n - 2, -1, -1):  # decoder, deepest first
        voxels = int(np.prod(sizes[level], dtype=np.int64))
        features = features_per_stage[level]
        total += convs_per_stage * features * voxels  # convs after concatenation
        total += features * voxels  # transposed conv output
        if deep_supervision or level == 0:
            total += num_classes * voxels
    return total
