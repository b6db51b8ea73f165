"""V-Net (Milletari, Navab & Ahmadi, 3DV 2016): residual stages, downsampling by strided convolution,
upsampling by transposed convolution, PReLU activations and skips by concatenation.

Each encoder stage learns a residual: its input (after the stage's strided 'down' convolution, whose kernel is
the stride) plus its convolutions. Each decoder level concatenates the transposed convolution's output with
the encoder's skip, and adds that upsampled input back to its convolutions' output. The planned kernels are
used (V-Net's 5x5x5 would ignore anisotropy); every convolution is followed by instance norm (V-Net had none,
later versions add batch norm) and a per-channel PReLU. V-Net has no deep supervision: one output.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import OPS, initialize, padding_for
from autoseg.planning.plan_types import Configuration


class ConvNormPReLU(nn.Sequential):
    def __init__(self, ndim, in_channels, out_channels, kernel, stride, *, transposed=False, activation=True):
        conv, up, norm = OPS[ndim]
        # a 'down' convolution's kernel is its stride: no padding, each output voxel reads one input block
        padding = [0] * ndim if list(kernel) == list(stride) else padding_for(kernel, [1] * ndim)
        layer = up(in_channels, out_channels, kernel, stride=stride, bias=True) if transposed else \
            conv(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)
        super().__init__(layer, norm(out_channels, eps=1e-5, affine=True),
                         *([nn.PReLU(out_channels)] if activation else []))


class ResidualConvs(nn.Module):
    """n convolutions whose output is added to the (projected where the channels differ) input, then PReLU."""

    def __init__(self, ndim, in_channels, out_channels, kernel, n_convs, shortcut_channels):
        super().__init__()
        ones = [1] * ndim
        layers = [ConvNormPReLU(ndim, in_channels if i == 0 else out_channels, out_channels, kernel, ones,
                                activation=i < n_convs - 1) for i in range(n_convs)]
        self.convs = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if shortcut_channels == out_channels else \
            OPS[ndim][0](shortcut_channels, out_channels, 1, bias=False)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(residual))


class VNet(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim = config.ndim
        features, kernels, strides = config.features_per_stage, config.conv_kernels, config.pool_strides
        self.deep_supervision = deep_supervision
        self.down, self.encoder, self.up, self.decoder = (nn.ModuleList() for _ in range(4))
        channels = in_channels
        for stage, (f, k, n) in enumerate(zip(features, kernels, config.convs_per_stage_encoder)):
            if stage:
                self.down.append(ConvNormPReLU(ndim, channels, f, strides[stage], strides[stage]))
                channels = f
            self.encoder.append(ResidualConvs(ndim, channels, f, k, n, channels))
            channels = f
        for level in range(len(features) - 2, -1, -1):  # deepest decoder level first
            stride = strides[level + 1]
            self.up.append(ConvNormPReLU(ndim, features[level + 1], features[level], stride, stride, transposed=True))
            self.decoder.append(ResidualConvs(ndim, 2 * features[level], features[level], kernels[level],
                                              config.convs_per_stage_decoder[level], features[level]))
        self.classifier = OPS[ndim][0](features[0], num_classes, 1, bias=True)
        initialize(self)

    def forward(self, x: torch.Tensor):
        skips = []
        for stage, block in enumerate(self.encoder):
            if stage:
                x = self.down[stage - 1](x)
            x = block(x, x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder):
            upsampled = up(x)
            x = block(torch.cat([upsampled, skips.pop()], dim=1), upsampled)
        logits = self.classifier(x)
        return [logits] if self.deep_supervision and self.training else logits
