"""FCN (Long, Shelhamer & Darrell, CVPR 2015): an encoder whose class scores are read at several depths and
fused by upsampling and summing, with no decoder convolutions.

FCN-8s scores the last three depths of VGG (strides 32, 16, 8), sums them from the deepest up and upsamples
the sum 8x. A planned 3D patch is a few times smaller per axis than FCN's images, so a structure like the
hippocampus is a few voxels wide at stride 8: here a 1x1 score layer reads every stage, the stride-1 stage
included, and the fused score is upsampled one stage at a time (fixed linear interpolation: FCN found
learning the upsampling gave little). FCN has no deep supervision: one output.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import OPS, conv_stage, initialize, upsample_to
from autoseg.planning.plan_types import Configuration


class FCN(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim, conv = config.ndim, OPS[config.ndim][0]
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f, s, k, n in zip(config.features_per_stage, config.pool_strides, config.conv_kernels,
                              config.convs_per_stage_encoder):
            self.encoder.append(conv_stage(ndim, channels, f, k, s, n))
            channels = f
        self.scores = nn.ModuleList(conv(f, num_classes, 1, bias=True) for f in config.features_per_stage)
        initialize(self)

    def forward(self, x: torch.Tensor):
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        fused = self.scores[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            fused = upsample_to(fused, features[level].shape[2:]) + self.scores[level](features[level])
        return [fused] if self.deep_supervision and self.training else fused
