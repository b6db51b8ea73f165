"""Memory model: how many feature-map voxels a network (plain U-Net, residual encoder, DeepLab) keeps for
backpropagation.

The count is the sum over every convolution's output (channels x voxels), the
transposed convolutions and the segmentation output, which tracks GPU memory of
training closely enough to size patches; each preset's reference value calibrates it to a budget
(autoseg.planning.presets).
"""
from __future__ import annotations

import numpy as np

from autoseg.planning.presets import Preset

REFERENCE_BATCH_3D = 2
REFERENCE_BATCH_2D = 12


def reference_budget(ndim: int, gpu_memory_gb: float, preset: Preset) -> tuple[float, int]:
    """(feature-map voxels that fit the budget, batch size they correspond to)."""
    bs = REFERENCE_BATCH_2D if ndim == 2 else REFERENCE_BATCH_3D
    return preset.reference_voxels[ndim] * gpu_memory_gb / preset.reference_gb, bs


def _stage_sizes(patch_size, pool_strides) -> list[list[int]]:
    sizes, size = [], list(patch_size)
    for stride in pool_strides:
        size = [s // k for s, k in zip(size, stride)]
        sizes.append(size)
    return sizes


def _decoder_voxels(sizes, features_per_stage, num_classes: int, convs_decoder, deep_supervision: bool) -> int:
    total = 0
    for level in range(len(sizes) - 2, -1, -1):  # deepest first
        voxels = int(np.prod(sizes[level], dtype=np.int64))
        features = features_per_stage[level]
        total += convs_decoder[level] * features * voxels  # convs after concatenation
        total += features * voxels  # transposed conv output
        if deep_supervision or level == 0:
            total += num_classes * voxels
    return total


def residual_feature_map_voxels(patch_size, pool_strides, features_per_stage, num_classes: int,
                                blocks_per_stage, convs_decoder, deep_supervision: bool = False) -> int:
    """The same count for a residual-encoder U-Net: a stem convolution, two convolutions per residual
    block, and a projection of the shortcut where a block changes resolution or channels."""
    sizes = _stage_sizes(patch_size, pool_strides)
    total = features_per_stage[0] * int(np.prod(patch_size, dtype=np.int64))  # the stem
    channels = features_per_stage[0]
    for size, stride, features, blocks in zip(sizes, pool_strides, features_per_stage, blocks_per_stage):
        voxels = int(np.prod(size, dtype=np.int64))
        total += 2 * features * voxels * blocks
        if channels != features or any(k != 1 for k in stride):
            total += features * voxels
        channels = features
    return total + _decoder_voxels(sizes, features_per_stage, num_classes, convs_decoder, deep_supervision)


def feature_map_voxels(patch_size, pool_strides, features_per_stage, num_classes: int,
                       convs_per_stage: int = 2, deep_supervision: bool = False) -> int:
    """Feature-map voxels of one sample through a plain U-Net's encoder and decoder (one input patch)."""
    sizes = _stage_sizes(patch_size, pool_strides)
    total = sum(convs_per_stage * features * int(np.prod(size, dtype=np.int64))
                for size, features in zip(sizes, features_per_stage))
    return total + _decoder_voxels(sizes, features_per_stage, num_classes, [convs_per_stage] * len(sizes),
                                   deep_supervision)


def deeplab_feature_map_voxels(patch_size, strides, features_per_stage, num_classes: int, blocks_per_stage,
                               convs_decoder, aspp_branches: int, deep_supervision: bool = False) -> int:
    """The residual-encoder count with the network's real strides (autoseg.planning.atrous: the atrous stages
    stay at a finer resolution), plus ASPP at the bottleneck: one output per branch (a 1x1 convolution, the
    dilated ones, global pooling's is one voxel) and the projection of their concatenation."""
    total = residual_feature_map_voxels(patch_size, strides, features_per_stage, num_classes, blocks_per_stage,
                                        convs_decoder, deep_supervision)
    bottleneck = int(np.prod(_stage_sizes(patch_size, strides)[-1], dtype=np.int64))
    return total + (1 + aspp_branches + 1) * features_per_stage[-1] * bottleneck
