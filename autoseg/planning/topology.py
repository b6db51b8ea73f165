"""Pooling and convolution layout of the U-Net for a given spacing and patch size."""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_FEATURE_MAP_EDGE = 4
MAX_POOLS_PER_AXIS = 6


@dataclass(frozen=True)
class Topology:
    num_pools_per_axis: list[int]
    pool_strides: list[list[int]]
    conv_kernels: list[list[int]]
    patch_size: list[int]  # input patch padded to a multiple of 2**pools per axis
    divisible_by: list[int]


def pad_to_multiple(shape, multiples) -> list[int]:
    return [int(math.ceil(s / m) * m) for s, m in zip(shape, multiples)]


def pool_and_conv_layout(spacing, patch_size, min_edge: int = MIN_FEATURE_MAP_EDGE,
                         max_pools: int = MAX_POOLS_PER_AXIS) -> Topology:
    """Pool every eligible axis together, one stage at a time.

    An axis is eligible while halving keeps its feature map at least `min_edge` voxels,
    its (pooled) spacing is within 2x of the finest eligible spacing, and it has been
    pooled fewer than `max_pools` times. A lone eligible axis is only pooled while it is
    at least 3*min_edge, so one long axis does not add deep stages on its own. Kernels are
    1 along axes more than 2x coarser than the finest, until pooling brings them close.
    """
    dim = len(spacing)
    spacing = [float(s) for s in spacing]
    size = [float(s) for s in patch_size]
    pools = [0] * dim
    kernel = [1] * dim
    strides = [[1] * dim]
    kernels = []
    while True:
        eligible = [a for a in range(dim) if size[a] >= 2 * min_edge]
        if not eligible:
            break
        finest = min(spacing[a] for a in eligible)
        eligible = [a for a in eligible if spacing[a] / finest < 2 and pools[a] < max_pools]
        if not eligible or (len(eligible) == 1 and size[eligible[0]] < 3 * min_edge):
            break
        overall_finest = min(spacing)
        kernel = [3 if k == 3 or spacing[a] / overall_finest < 2 else 1 for a, k in enumerate(kernel)]
        stride = [1] * dim
        for a in eligible:
            stride[a] = 2
            pools[a] += 1
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # bottleneck always sees a full neighbourhood
    divisible_by = [2 ** p for p in pools]
    return Topology(pools, strides, kernels, pad_to_multiple(patch_size, divisible_by), divisible_by)
