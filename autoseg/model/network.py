"""One U-Net for 2D and 3D, built entirely from a plan configuration.

conv -> instance norm -> leaky ReLU, convolutions per stage as planned, strided
convolution to go down, transposed convolution to come up, skips by concatenation, and a
1x1 segmentation head at every decoder resolution for deep supervision.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.planning.plan_types import Configuration

OPS = {2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d)}
LEAKY_SLOPE = 0.01


class ConvNormAct(nn.Sequential):
    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel, stride):
        conv, _, norm = OPS[ndim]
        super().__init__(
            conv(in_channels, out_channels, kernel, stride=stride, padding=[k // 2 for k in kernel], bias=True),
            norm(out_channels, eps=1e-5, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


def _stage(ndim, in_channels, out_channels, kernel, stride, n_convs) -> nn.Sequential:
    layers = [ConvNormAct(ndim, in_channels, out_channels, kernel, stride)]
    layers += [ConvNormAct(ndim, out_channels, out_channels, kernel, [1] * ndim) for _ in range(n_convs - 1)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(self, ndim: int, in_channels: int, num_classes: int, features: list[int], strides: list[list[int]],
                 kernels: list[list[int]], convs_encoder: list[int], convs_decoder: list[int],
                 deep_supervision: bool = True):
        super().__init__()
        if not (len(features) == len(strides) == len(kernels) == len(convs_encoder) == len(convs_decoder) + 1):
            raise ValueError("features, strides, kernels and convs per stage must describe the same stages")
        _, transposed, _ = OPS[ndim]
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f, s, k, n in zip(features, strides, kernels, convs_encoder):
            self.encoder.append(_stage(ndim, channels, f, k, s, n))
            channels = f
        self.up, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        conv = OPS[ndim][0]
        for level in range(len(features) - 2, -1, -1):  # deepest decoder level first
            stride = strides[level + 1]
            self.up.append(transposed(features[level + 1], features[level], stride, stride=stride, bias=True))
            self.decoder.append(_stage(ndim, 2 * features[level], features[level], kernels[level], [1] * ndim,
                                       convs_decoder[level]))
            self.heads.append(conv(features[level], num_classes, 1, bias=True))
        self.apply(_he_init)

    def forward(self, x: torch.Tensor):
        """Logits at full resolution; with deep supervision (in training), a list from full resolution down."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for up, stage, head in zip(self.up, self.decoder, self.heads):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            if self.deep_supervision and self.training:
                outputs.append(head(x))
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return self.heads[-1](x)


def _he_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_network(config: Configuration, in_channels: int, num_classes: int, deep_supervision: bool = True) -> UNet:
    return UNet(config.ndim, in_channels, num_classes, config.features_per_stage, config.pool_strides,
                config.conv_kernels, config.convs_per_stage_encoder, config.convs_per_stage_decoder, deep_supervision)
