"""One U-Net for 2D and 3D, built entirely from a plan configuration.

conv -> instance norm -> leaky ReLU, convolutions per stage as planned, strided
convolution to go down, transposed convolution to come up, skips by concatenation, and a
1x1 segmentation head at every decoder resolution for deep supervision.

The encoder is one of three families (the configuration's `architecture`):
- plain: each stage is its convolutions, the first one strided (nnU-Net's PlainConvUNet);
- resenc: a stem convolution, then each stage is residual blocks (ResNet-D "basic" blocks: two
  convolutions, the first strided, the second without activation; the shortcut average-pools when the
  block strides and projects with a 1x1 convolution when the channels change; activation after the sum;
  the second normalisation starts at zero so each block starts as its shortcut), as nnU-Net's
  ResidualEncoderUNet;
- deeplab: the resenc encoder whose deepest stages keep their resolution with dilated convolutions, and
  Atrous Spatial Pyramid Pooling on its output (autoseg.model.aspp; the layout is planned in
  autoseg.planning.atrous). A level where the encoder did not stride comes up by a 1x1 transposed
  convolution: the U-Net decoder is DeepLab v3+'s refinement, with every skip.
The decoder is the same plain decoder for all three.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.aspp import ASPP
from autoseg.model.blocks import LEAKY_SLOPE, OPS, ConvNormAct, padding_for
from autoseg.planning.plan_types import Configuration


class ResidualBlock(nn.Module):
    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel, stride, dilation=None):
        super().__init__()
        conv, _, norm = OPS[ndim]
        dilation = dilation or [1] * ndim
        self.conv1 = ConvNormAct(ndim, in_channels, out_channels, kernel, stride, dilation)
        self.conv2 = nn.Sequential(
            conv(out_channels, out_channels, kernel, padding=padding_for(kernel, dilation), dilation=dilation,
                 bias=True),
            norm(out_channels, eps=1e-5, affine=True))
        shortcut = []
        if any(s != 1 for s in stride):
            shortcut.append((nn.AvgPool2d if ndim == 2 else nn.AvgPool3d)(stride, stride))
        if in_channels != out_channels:
            shortcut += [conv(in_channels, out_channels, 1, bias=False), norm(out_channels, eps=1e-5, affine=True)]
        self.shortcut = nn.Sequential(*shortcut)  # empty: identity
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def _residual_stage(ndim, in_channels, out_channels, kernel, stride, n_blocks, dilation=None) -> nn.Sequential:
    blocks = [ResidualBlock(ndim, in_channels, out_channels, kernel, stride, dilation)]
    blocks += [ResidualBlock(ndim, out_channels, out_channels, kernel, [1] * ndim, dilation)
               for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def _stage(ndim, in_channels, out_channels, kernel, stride, n_convs, dilation=None) -> nn.Sequential:
    layers = [ConvNormAct(ndim, in_channels, out_channels, kernel, stride, dilation)]
    layers += [ConvNormAct(ndim, out_channels, out_channels, kernel, [1] * ndim, dilation)
               for _ in range(n_convs - 1)]
    return nn.Sequential(*layers)


ARCHITECTURES = ("plain", "resenc", "deeplab")


class UNet(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        """The configuration's network; "resenc" and "deeplab": convs_per_stage_encoder counts residual blocks,
        after a stem convolution."""
        super().__init__()
        ndim, features, kernels = config.ndim, config.features_per_stage, config.conv_kernels
        strides, convs_encoder, convs_decoder = config.network_strides, config.convs_per_stage_encoder, \
            config.convs_per_stage_decoder
        if not (len(features) == len(strides) == len(kernels) == len(convs_encoder) == len(convs_decoder) + 1):
            raise ValueError("features, strides, kernels and convs per stage must describe the same stages")
        if config.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config.architecture!r}")
        dilations = config.dilations or [[1] * ndim for _ in features]
        if len(dilations) != len(features):
            raise ValueError("dilations must give one entry per stage")
        _, transposed, _ = OPS[ndim]
        self.deep_supervision = deep_supervision
        self.stem = None
        channels = in_channels
        make_stage = _stage
        if config.architecture in ("resenc", "deeplab"):
            self.stem = ConvNormAct(ndim, in_channels, features[0], kernels[0], [1] * ndim)
            channels, make_stage = features[0], _residual_stage
        self.encoder = nn.ModuleList()
        for f, s, k, n, d in zip(features, strides, kernels, convs_encoder, dilations):
            self.encoder.append(make_stage(ndim, channels, f, k, s, n, d))
            channels = f
        self.bottleneck = None
        if config.architecture == "deeplab":
            self.bottleneck = ASPP(ndim, features[-1], config.aspp_rates, config.aspp_kernel)
        self.up, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        conv = OPS[ndim][0]
        for level in range(len(features) - 2, -1, -1):  # deepest decoder level first
            stride = strides[level + 1]
            self.up.append(transposed(features[level + 1], features[level], stride, stride=stride, bias=True))
            self.decoder.append(_stage(ndim, 2 * features[level], features[level], kernels[level], [1] * ndim,
                                       convs_decoder[level]))
            self.heads.append(conv(features[level], num_classes, 1, bias=True))
        self.apply(_he_init)
        for module in self.modules():
            if isinstance(module, ResidualBlock):  # each block starts as its shortcut
                nn.init.zeros_(module.conv2[1].weight)
                nn.init.zeros_(module.conv2[1].bias)

    def forward(self, x: torch.Tensor):
        """Logits at full resolution; with deep supervision (in training), a list from full resolution down."""
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        if self.bottleneck is not None:
            x = self.bottleneck(x)
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
    return UNet(config, in_channels, num_classes, deep_supervision=deep_supervision)
