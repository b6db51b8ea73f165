"""The DeepLab family's layout on a planned topology: which deepest stages keep their resolution with
dilated (atrous) convolutions, and the Atrous Spatial Pyramid Pooling rates per axis.

DeepLab v2/v3 stop downsampling after an output stride of 8 or 16 and dilate the remaining convolutions by
the stride they gave up, so those stages see as far as before at a finer resolution; ASPP then looks at the
deepest features through parallel convolutions at several dilation rates. Here:
- the deepest ATROUS_STAGES stages keep the resolution of the stage before them, as long as the network still
  strides by MIN_OUTPUT_STRIDE on its most pooled axis (a shallow network gets fewer, down to none: a 3D patch
  is a few times smaller per axis than DeepLab's 513-pixel crops, so output stride 4 here sees about what 16
  sees there); each atrous stage dilates by the product of the strides given up so far, per axis, so every
  convolution covers the same millimetres as in the plain network;
- ASPP's dilated branches reach radii of ASPP_FRACTIONS of the bottleneck's smallest physical extent (DeepLab
  v3's rates 6, 12, 18 on its 33-voxel feature map are 0.18, 0.36 and 0.55 of it). On each axis the rate is
  that radius in voxels of the bottleneck's spacing, at least 1 and at most what keeps the kernel inside the
  feature map; an axis under 3 voxels gets kernel 1. So a coarse or thin axis (an anisotropic scan's slices)
  gets small rates, down to 1, while the fine axes spread out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ATROUS_STAGES = 2
MIN_OUTPUT_STRIDE = 4
ASPP_FRACTIONS = (1 / 6, 1 / 3, 1 / 2)


@dataclass(frozen=True)
class AtrousLayout:
    atrous_stages: int  # the deepest stages that keep their input's resolution
    strides: list[list[int]]  # per stage, what the network really strides (1 in the atrous stages)
    dilations: list[list[int]]  # per stage, per axis
    aspp_rates: list[list[int]]  # per dilated ASPP branch, per axis
    aspp_kernel: list[int]  # the dilated branches' kernel per axis (3, or 1 on an axis under 3 voxels)
    bottleneck_size: list[int]


def atrous_layout(spacing, patch_size, pool_strides) -> AtrousLayout:
    n_stages = len(pool_strides)
    atrous = 0
    while atrous < min(ATROUS_STAGES, n_stages - 1) and \
            max(math.prod(axis) for axis in zip(*pool_strides[:n_stages - atrous - 1])) >= MIN_OUTPUT_STRIDE:
        atrous += 1
    size, bottleneck_spacing = [float(p) for p in patch_size], [float(s) for s in spacing]
    dilation = [1] * len(spacing)
    strides, dilations = [], []
    for stage, stride in enumerate(pool_strides):
        if stage >= n_stages - atrous:
            dilation = [d * k for d, k in zip(dilation, stride)]
            strides.append([1] * len(stride))
        else:
            size = [math.ceil(s / k) for s, k in zip(size, stride)]
            bottleneck_spacing = [s * k for s, k in zip(bottleneck_spacing, stride)]
            strides.append(list(stride))
        dilations.append(list(dilation))
    size = [int(s) for s in size]
    kernel = [3 if s >= 3 else 1 for s in size]
    extents = [s * sp for s, sp, k in zip(size, bottleneck_spacing, kernel) if k == 3]
    rates: list[list[int]] = []
    if extents:
        for fraction in ASPP_FRACTIONS:
            radius = fraction * min(extents)
            rate = [max(1, min(round(radius / sp), (s - 1) // 2)) if k == 3 else 1
                    for s, sp, k in zip(size, bottleneck_spacing, kernel)]
            if rate not in rates:
                rates.append(rate)
    return AtrousLayout(atrous, strides, dilations, rates, kernel, size)
