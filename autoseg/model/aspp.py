"""Atrous Spatial Pyramid Pooling (DeepLab v3): the deepest features seen at several scales at once.

Parallel branches on the same input: a 1x1 convolution, one dilated convolution per planned rate (rates and
kernel per axis, autoseg.planning.atrous), and global average pooling followed by a 1x1 convolution and
broadcast back over the map (image-level context). Their outputs are concatenated and projected back to the
input's channels by a 1x1 convolution. Every branch is convolution -> instance norm -> leaky ReLU like the
rest of the network, except global pooling's: instance norm of one voxel is undefined (DeepLab's batch norm
is not used anywhere here).
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import LEAKY_SLOPE, OPS, ConvNormAct


class ASPP(nn.Module):
    def __init__(self, ndim: int, channels: int, rates: list[list[int]], kernel: list[int]):
        super().__init__()
        conv = OPS[ndim][0]
        ones = [1] * ndim
        self.branches = nn.ModuleList([ConvNormAct(ndim, channels, channels, ones, ones)])
        self.branches.extend(ConvNormAct(ndim, channels, channels, kernel, ones, rate) for rate in rates)
        self.image_pool = nn.Sequential((nn.AdaptiveAvgPool2d if ndim == 2 else nn.AdaptiveAvgPool3d)(1),
                                        conv(channels, channels, 1, bias=True),
                                        nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.project = ConvNormAct(ndim, channels * (len(self.branches) + 1), channels, ones, ones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))
