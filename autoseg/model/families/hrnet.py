"""HRNet (Sun et al., CVPR 2019; Wang et al., TPAMI 2020): parallel streams at several resolutions, kept from
the stem on and fused again and again, with the HRNetV2 head.

The stem's two convolutions (the second strided by stage 1's planned stride, as HRNet's stem halves twice)
bring the input to the first stream's resolution. The network then runs `streams` HR stages: stage t works on
t streams, stream k at planned stage k+1's resolution with stage k's features (doubling per stream, as
HRNet's W, 2W, 4W, 8W); each stream runs its residual blocks, then every stream receives the sum of all
streams brought to its resolution (identity from itself; a 1x1 convolution and linear upsampling from a
coarser one; strided convolutions, one per stride step, from a finer one), and a new, coarser stream branches
off the coarsest by a strided convolution. The HRNetV2 head upsamples every stream to the first's
resolution, concatenates them, mixes them by a 1x1 convolution, scores the classes and upsamples the scores
to full resolution. HRNet has no deep supervision: one output.
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg.model.blocks import LEAKY_SLOPE, OPS, ConvNormAct, initialize, padding_for, residual_stage, upsample_to
from autoseg.planning.plan_types import Configuration


def _conv_norm(ndim, in_channels, out_channels, kernel, stride) -> nn.Sequential:
    conv, _, norm = OPS[ndim]
    return nn.Sequential(conv(in_channels, out_channels, kernel, stride=stride,
                              padding=padding_for(kernel, [1] * ndim), bias=True),
                         norm(out_channels, eps=1e-5, affine=True))


class Fusion(nn.Module):
    """Every stream receives the sum of all streams at its resolution and width, then leaky ReLU."""

    def __init__(self, ndim: int, widths: list[int], strides: list[list[int]], kernels: list[list[int]]):
        """strides[k] / kernels[k]: the stride from stream k-1 to stream k and stream k's kernel."""
        super().__init__()
        ones = [1] * ndim
        self.paths = nn.ModuleDict()
        for target, width in enumerate(widths):
            for source, source_width in enumerate(widths):
                if source > target:  # coarser: 1x1 to the target's width, upsampled in forward
                    self.paths[f"{source}_{target}"] = _conv_norm(ndim, source_width, width, ones, ones)
                elif source < target:  # finer: one strided convolution per step, the last without activation
                    steps = []
                    for step in range(source + 1, target + 1):
                        last = step == target
                        out = width if last else source_width
                        steps.append(_conv_norm(ndim, source_width, out, kernels[step], strides[step]) if last else
                                     ConvNormAct(ndim, source_width, out, kernels[step], strides[step]))
                    self.paths[f"{source}_{target}"] = nn.Sequential(*steps)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, streams: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = []
        for target, x in enumerate(streams):
            total = x
            for source, other in enumerate(streams):
                if source > target:
                    total = total + upsample_to(self.paths[f"{source}_{target}"](other), x.shape[2:])
                elif source < target:
                    total = total + self.paths[f"{source}_{target}"](other)
            fused.append(self.act(total))
        return fused


class HRNet(nn.Module):
    def __init__(self, config: Configuration, in_channels: int, num_classes: int, *, deep_supervision: bool = True):
        super().__init__()
        ndim, conv = config.ndim, OPS[config.ndim][0]
        ones = [1] * ndim
        n = config.streams
        if not 1 <= n < config.num_stages:
            raise ValueError(f"HRNet needs 1 to {config.num_stages - 1} streams for {config.num_stages} stages, "
                             f"got {n}")
        widths = config.features_per_stage[:n]
        # stream k sits at planned stage k+1's resolution: the stride into it and its kernel
        strides = [config.pool_strides[k + 1] for k in range(n)]
        kernels = [config.conv_kernels[k + 1] for k in range(n)]
        self.deep_supervision = deep_supervision
        self.stem = nn.Sequential(ConvNormAct(ndim, in_channels, widths[0], config.conv_kernels[0], ones),
                                  ConvNormAct(ndim, widths[0], widths[0], kernels[0], strides[0]))
        self.blocks, self.fusions, self.branches = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for stage in range(n):
            blocks = config.convs_per_stage_encoder[stage + 1]
            self.blocks.append(nn.ModuleList(residual_stage(ndim, widths[k], widths[k], kernels[k], ones, blocks)
                                             for k in range(stage + 1)))
            self.fusions.append(Fusion(ndim, widths[:stage + 1], strides, kernels) if stage else nn.Identity())
            if stage + 1 < n:
                self.branches.append(ConvNormAct(ndim, widths[stage], widths[stage + 1], kernels[stage + 1],
                                                 strides[stage + 1]))
        self.mix = ConvNormAct(ndim, sum(widths), sum(widths), ones, ones)
        self.classifier = conv(sum(widths), num_classes, 1, bias=True)
        initialize(self)

    def forward(self, x: torch.Tensor):
        size = x.shape[2:]
        streams = [self.stem(x)]
        for stage, (blocks, fusion) in enumerate(zip(self.blocks, self.fusions)):
            streams = [block(s) for block, s in zip(blocks, streams)]
            if stage:
                streams = fusion(streams)
            if stage < len(self.branches):
                streams.append(self.branches[stage](streams[-1]))
        first = streams[0].shape[2:]
        head = self.mix([streams[0]] + [upsample_to(s, first) for s in streams[1:]])  # their concatenation
        logits = upsample_to(self.classifier(head), size)
        return [logits] if self.deep_supervision and self.training else logits
