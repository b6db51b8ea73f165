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

FAMILIES is the registry of every network a plan can name: these three and the classic families of
autoseg.model.families (FCN, SegNet, V-Net, UNet++, PSPNet, HRNet), each with the loss weights of its outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.aspp import ASPP
from autoseg.model.blocks import OPS, ConvNormAct, conv_stage, initialize, residual_stage
from autoseg.model.families.fcn import FCN
from autoseg.model.families.hrnet import HRNet
from autoseg.model.families.pspnet import AUXILIARY_WEIGHT, PSPNet
from autoseg.model.families.segnet import SegNet
from autoseg.model.families.unetpp import UNetPlusPlus
from autoseg.model.families.vnet import VNet
from autoseg.planning.plan_types import Configuration


ARCHITECTURES = ("plain", "resenc", "deeplab")  # the U-Net family; the others: autoseg.model.families


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
        make_stage = conv_stage
        if config.architecture in ("resenc", "deeplab"):
            self.stem = ConvNormAct(ndim, in_channels, features[0], kernels[0], [1] * ndim)
            channels, make_stage = features[0], residual_stage
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
            self.decoder.append(conv_stage(ndim, 2 * features[level], features[level], kernels[level], [1] * ndim,
                                       convs_decoder[level]))
            self.heads.append(conv(features[level], num_classes, 1, bias=True))
        initialize(self)

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
            x = stage([up(x), skips.pop()])  # their concatenation, not built in training (blocks.ConvNormAct)
            if self.deep_supervision and self.training:
                outputs.append(head(x))
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return self.heads[-1](x)


def _halving(config: Configuration) -> list[float]:  # nnU-Net's deep supervision over the decoder's outputs
    return deep_supervision_weights(config.num_stages - 1)


def _single(config: Configuration) -> list[float]:
    return [1.0]


def _equal(config: Configuration) -> list[float]:  # UNet++: every nested output alike
    return [1.0 / (config.num_stages - 1)] * (config.num_stages - 1)


def _auxiliary(config: Configuration) -> list[float]:  # PSPNet: the main loss and 0.4 x the auxiliary one
    if config.num_stages == 1:
        return [1.0]
    return [1 / (1 + AUXILIARY_WEIGHT), AUXILIARY_WEIGHT / (1 + AUXILIARY_WEIGHT)]


# architecture -> (network class, loss weight of each training output)
FAMILIES = {"plain": (UNet, _halving), "resenc": (UNet, _halving), "deeplab": (UNet, _halving),
            "fcn": (FCN, _single), "segnet": (SegNet, _single), "vnet": (VNet, _single),
            "unetpp": (UNetPlusPlus, _equal), "pspnet": (PSPNet, _auxiliary), "hrnet": (HRNet, _single)}


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Loss weight per output, full resolution first: halving per level, the lowest off, summing to 1."""
    weights = [0.5 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def supervision_weights(config: Configuration) -> list[float]:
    """The loss weight of each output the configuration's network returns in training, full resolution first."""
    return _family(config)[1](config)


def _family(config: Configuration):
    try:
        return FAMILIES[config.architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {config.architecture!r}") from None


def build_network(config: Configuration, in_channels: int, num_classes: int, deep_supervision: bool = True) -> nn.Module:
    """The configuration's network, whichever family it is (the registry: FAMILIES)."""
    return _family(config)[0](config, in_channels, num_classes, deep_supervision=deep_supervision)
