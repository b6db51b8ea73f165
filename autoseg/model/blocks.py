"""The layers every network family is built from: 2D or 3D by the op types, conv -> instance norm -> leaky ReLU."""
from __future__ import annotations

from torch import nn

OPS = {2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d)}
LEAKY_SLOPE = 0.01


def padding_for(kernel, dilation) -> list[int]:
    return [d * (k // 2) for k, d in zip(kernel, dilation)]


class ConvNormAct(nn.Sequential):
    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel, stride, dilation=None):
        conv, _, norm = OPS[ndim]
        dilation = dilation or [1] * ndim
        super().__init__(
            conv(in_channels, out_channels, kernel, stride=stride, padding=padding_for(kernel, dilation),
                 dilation=dilation, bias=True),
            norm(out_channels, eps=1e-5, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
