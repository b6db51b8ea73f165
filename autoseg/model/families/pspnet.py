"""PSPNet (Zhao et al., CVPR 2017): a dilated encoder, a pyramid pooling module on its deepest features, and
the class scores upsampled straight to full resolution, with no decoder.

The encoder is the planned convolution stages with DeepLab's atrous layout (autoseg.planning.atrous: the
deepest stages keep their resolution and dilate instead, as PSPNet's dilated ResNet does). The pyramid pooling
module average-pools the deepest features into bins per axis (PSPNet's 1, 2, 3 and 6, each capped by the
feature map's size on that axis: autoseg.planning.pyramid), reduces each level's channels by a 1x1
convolution to a share of the input's, upsamples them back, and concatenates them with the features; a
convolution fuses the concatenation, a 1x1 convolution scores the classes, and linear interpolation brings
the scores to full resolution. With deep supervision, PSPNet's auxiliary classifier on the stage before the
last is the second output, at its own resolution, with the paper's weight 0.4 against 1.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import LEAKY_SLOPE, OPS, ConvNormAct, conv_stage, initialize, upsample_to
from autoseg.planning.plan_types import Configuration

AUXILIARY_WEIGHT = 0.4


class PyramidPooling(nn.Module):
    def __init__(self, ndim: int, channels: int, bins: list[list[int]]):
        super().__init__()
        conv = OPS[ndim][0]
        pool = nn.AdaptiveAvgPool2d if ndim == 2 else nn.AdaptiveAvgPool3d
        self.reduced = max(1, channels // len(bins))
        # no norm: a level pooled to one voxel has no instance statistics
        self.levels = nn.ModuleList(nn.Sequential(pool(tuple(b)), conv(channels, self.reduced, 1, bias=True),
                                                  nn.LeakyReLU(LEAKY_SLOPE, inplace=True)) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [upsample_to(level(x), x.shape[2:]) for level in self.levels], dim=1)


class PSPNet(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim, conv = config.ndim, OPS[config.ndim][0]
        features = config.features_per_stage
        self.deep_supervision = deep_supervision
        dilations = config.dilations or [[1] * ndim for _ in features]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f, s, k, n, d in zip(features, config.network_strides, config.conv_kernels,
                                 config.convs_per_stage_encoder, dilations):
            self.encoder.append(conv_stage(ndim, channels, f, k, s, n, d))
            channels = f
        self.pyramid = PyramidPooling(ndim, features[-1], config.pyramid_bins)
        self.fuse = ConvNormAct(ndim, features[-1] + self.pyramid.reduced * len(config.pyramid_bins), features[-1],
                                config.conv_kernels[-1], [1] * ndim)
        self.classifier = conv(features[-1], num_classes, 1, bias=True)
        self.auxiliary = conv(features[-2], num_classes, 1, bias=True) if len(features) > 1 else None
        initialize(self)

    def forward(self, x: torch.Tensor):
        size = x.shape[2:]
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        logits = upsample_to(self.classifier(self.fuse(self.pyramid(x))), size)
        if not (self.deep_supervision and self.training):
            return logits
        return [logits] + ([self.auxiliary(features[-2])] if self.auxiliary is not None else [])
