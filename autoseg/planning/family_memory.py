"""The memory model for the classic families (autoseg.model.families): one sample's feature-map voxels, counted
as for the U-Net (autoseg.planning.memory) as every convolution's output (channels x voxels), plus the
upsampled scores where the family's last step is an interpolation (PSPNet, HRNet). Each count follows its
network's construction step by step; tests/test_families.py checks every count against the built network.
Patches and batches are then sized against the plain U-Net's reference, so every family gets the same memory
target."""
from __future__ import annotations

import math

from autoseg.planning.memory import _stage_sizes


def _voxels(sizes) -> list[int]:
    return [math.prod(size) for size in sizes]


def fcn_voxels(patch_size, strides, features, num_classes: int, convs) -> int:
    voxels = _voxels(_stage_sizes(patch_size, strides))
    return sum((n * f + num_classes) * v for n, f, v in zip(convs, features, voxels))


def segnet_voxels(patch_size, strides, features, num_classes: int, convs) -> int:
    voxels = _voxels(_stage_sizes(patch_size, strides))
    total = sum(n * f * v for n, f, v in zip(convs, features, voxels))  # encoder
    for level, (n, f, v) in enumerate(zip(convs, features, voxels)):  # decoder: the last conv to level-1's width
        total += ((n - 1) * f + features[max(level - 1, 0)]) * v
    return total + num_classes * voxels[0]


def vnet_voxels(patch_size, strides, features, num_classes: int, convs_encoder, convs_decoder) -> int:
    """Counts the input's 1x1 shortcut projection (any input with other than features[0] channels)."""
    voxels = _voxels(_stage_sizes(patch_size, strides))
    total = features[0] * voxels[0]
    for stage, (n, f, v) in enumerate(zip(convs_encoder, features, voxels)):
        total += (n + (stage > 0)) * f * v  # the stage's convolutions, and the strided 'down' one
    for level, n in enumerate(convs_decoder):
        total += (1 + n) * features[level] * voxels[level]  # transposed convolution, then the convolutions
    return total + num_classes * voxels[0]


def unetpp_voxels(patch_size, strides, features, num_classes: int, convs_encoder, convs_decoder) -> int:
    voxels = _voxels(_stage_sizes(patch_size, strides))
    depth = len(features) - 1
    total = sum(n * f * v for n, f, v in zip(convs_encoder, features, voxels))
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):  # node X(i, j): its transposed convolution and its convolutions
            total += (1 + convs_decoder[i]) * features[i] * voxels[i]
    return total + num_classes * voxels[0]


def pspnet_voxels(patch_size, network_strides, features, num_classes: int, convs, bins) -> int:
    voxels = _voxels(_stage_sizes(patch_size, network_strides))
    total = sum(n * f * v for n, f, v in zip(convs, features, voxels))
    reduced = max(1, features[-1] // len(bins))
    total += sum(reduced * math.prod(level) for level in bins)  # the pooled levels' 1x1 convolutions
    total += (features[-1] + num_classes) * voxels[-1]  # fusion and the class scores
    return total + num_classes * voxels[0]  # the scores upsampled to full resolution


def hrnet_voxels(patch_size, strides, features, num_classes: int, blocks, streams: int) -> int:
    """Stream k runs at stage k+1's resolution with features[k]; blocks[t + 1]: residual blocks per stream in HR
    stage t."""
    voxels = _voxels(_stage_sizes(patch_size, strides))
    at = voxels[1:]  # stream k's voxels
    widths = features[:streams]
    total = widths[0] * (voxels[0] + at[0])  # the stem
    for stage in range(streams):
        total += sum(blocks[stage + 1] * 2 * widths[k] * at[k] for k in range(stage + 1))
        if stage:
            for target in range(stage + 1):
                for source in range(stage + 1):
                    if source > target:
                        total += widths[target] * at[source]
                    elif source < target:
                        total += sum((widths[target] if step == target else widths[source]) * at[step]
                                     for step in range(source + 1, target + 1))
        if stage + 1 < streams:
            total += widths[stage + 1] * at[stage + 1]  # the new, coarser stream
    total += (sum(widths) + num_classes) * at[0]  # the HRNetV2 head's mix and scores
    return total + num_classes * voxels[0]
