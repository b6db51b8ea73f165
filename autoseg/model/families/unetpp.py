"""UNet++ (Zhou et al., DLMIA 2018 / TMI 2020): the encoder and decoder joined by nested, dense skip pathways.

Node X(i, 0) is encoder stage i. Node X(i, j), j >= 1, is a convolution stage at level i on the concatenation
of every earlier node of its level, X(i, 0) ... X(i, j-1), and the upsampled X(i+1, j-1) (a transposed
convolution by level i+1's planned stride). Each X(0, j) is a full-resolution segmentation of a U-Net of depth
j, with its own 1x1 head: deep supervision trains all of them with equal weight, as the paper does, the deepest
first.

Pruning: at inference the network can stop at depth d < L (the `inference_depth`): only the nodes with
i + j <= d are computed and X(0, d)'s head answers, a shallower sub-network with the same weights.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import OPS, conv_stage, initialize
from autoseg.planning.plan_types import Configuration


class UNetPlusPlus(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim = config.ndim
        conv, transposed, _ = OPS[ndim]
        features, kernels, strides = config.features_per_stage, config.conv_kernels, config.pool_strides
        self.depth = len(features) - 1
        self.inference_depth = self.depth
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        channels = in_channels
        for f, s, k, n in zip(features, strides, kernels, config.convs_per_stage_encoder):
            self.encoder.append(conv_stage(ndim, channels, f, k, s, n))
            channels = f
        self.up, self.nodes = nn.ModuleDict(), nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                stride = strides[i + 1]
                self.up[f"{i}_{j}"] = transposed(features[i + 1], features[i], stride, stride=stride, bias=True)
                self.nodes[f"{i}_{j}"] = conv_stage(ndim, (j + 1) * features[i], features[i], kernels[i], [1] * ndim,
                                                    config.convs_per_stage_decoder[i])
        self.heads = nn.ModuleList(conv(features[0], num_classes, 1, bias=True) for _ in range(self.depth))
        initialize(self)

    def forward(self, x: torch.Tensor):
        supervised = self.deep_supervision and self.training
        depth = self.depth if self.training else self.inference_depth
        if not 1 <= depth <= self.depth:
            raise ValueError(f"UNet++ inference depth must be 1 to {self.depth}, got {depth}")
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(depth + 1):
            x = self.encoder[i](x)
            nodes[i, 0] = x
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                earlier = [nodes[i, k] for k in range(j)]
                # the list stands for the maps' concatenation (autoseg.model.blocks.ConvNormAct)
                nodes[i, j] = self.nodes[f"{i}_{j}"](earlier + [self.up[f"{i}_{j}"](nodes[i + 1, j - 1])])
        if supervised:
            return [self.heads[j - 1](nodes[0, j]) for j in range(depth, 0, -1)]
        return self.heads[depth - 1](nodes[0, depth])
