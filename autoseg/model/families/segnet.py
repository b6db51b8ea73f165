"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): a symmetric encoder-decoder whose decoder
upsamples by unpooling with the encoder's max-pooling indices, and has no skip concatenation.

Encoder stage i: its convolutions at stage i's resolution, then max pooling by the next stage's planned
stride (per axis), keeping the argmax indices. Decoder, from the deepest level: the convolutions of level j
(the last one brings the channels back to level j-1's), then max-unpooling with pooling j's indices, which
puts each value back where the encoder's maximum was and leaves the rest zero; at full resolution the last
convolutions and a 1x1 classifier. SegNet has no deep supervision: one output.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import OPS, ConvNormAct, conv_stage, initialize
from autoseg.planning.plan_types import Configuration

_POOL = {2: (nn.MaxPool2d, nn.MaxUnpool2d), 3: (nn.MaxPool3d, nn.MaxUnpool3d)}


def _decoder_block(ndim, channels, out_channels, kernel, n_convs) -> nn.Sequential:
    ones = [1] * ndim
    layers = [ConvNormAct(ndim, channels, channels, kernel, ones) for _ in range(n_convs - 1)]
    return nn.Sequential(*layers, ConvNormAct(ndim, channels, out_channels, kernel, ones))


class SegNet(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim = config.ndim
        pool, unpool = _POOL[ndim]
        ones = [1] * ndim
        features, kernels, convs = config.features_per_stage, config.conv_kernels, config.convs_per_stage_encoder
        self.deep_supervision = deep_supervision
        self.encoder, self.pools, self.unpools, self.decoder = (nn.ModuleList() for _ in range(4))
        channels = in_channels
        for stage, (f, k, n) in enumerate(zip(features, kernels, convs)):
            if stage:
                stride = config.pool_strides[stage]
                self.pools.append(pool(stride, stride, return_indices=True))
                self.unpools.append(unpool(stride, stride))
            self.encoder.append(conv_stage(ndim, channels, f, k, ones, n))
            channels = f
        for level in range(len(features) - 1, -1, -1):  # deepest first; each ends with the next level's channels
            self.decoder.append(_decoder_block(ndim, features[level], features[max(level - 1, 0)], kernels[level],
                                               convs[level]))
        self.classifier = OPS[ndim][0](features[0], num_classes, 1, bias=True)
        initialize(self)

    def forward(self, x: torch.Tensor):
        indices, sizes = [], []
        for stage, block in enumerate(self.encoder):
            if stage:
                sizes.append(x.shape[2:])
                x, index = self.pools[stage - 1](x)
                indices.append(index)
            x = block(x)
        for level, block in zip(range(len(self.decoder) - 1, -1, -1), self.decoder):
            x = block(x)
            if level:
                x = self.unpools[level - 1](x, indices[level - 1], output_size=sizes[level - 1])
        logits = self.classifier(x)
        return [logits] if self.deep_supervision and self.training else logits
