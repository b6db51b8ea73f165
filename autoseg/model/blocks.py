"""The layers every network family is built from: 2D or 3D by the op types, conv -> instance norm -> leaky ReLU.

Training on a CPU in float32, instance norm and leaky ReLU run as one autograd function that keeps only its
output for the backward pass (the idea of In-Place ABN, Rota Bulo et al., CVPR 2018): the normalised values
are recomputed from the output, since leaky ReLU and the affine step are invertible. PyTorch's own modules keep
the convolution's output as well, so every conv-norm-activation block would hold two activation maps; this
holds one. On the Hippocampus plan (batch 7, 40x56x40) that cuts what a training step keeps from 1034 to 629
MB. The gradients are the same up to float rounding; where a norm's scale is near zero (it cannot be inverted),
where autograd is off (prediction), on other devices and in other precisions, the modules run as they are.

Two more things keep a CPU step's peak down, since the peak is what decides whether a run fits a machine:
- the function's backward pass works through a few (sample, channel) rows at a time, so its intermediate maps
  are cache-sized pieces instead of four full-size maps at the moment the step's memory peaks;
- a decoder stage's first convolution on the concatenation of its upsampled map and its skip is summed over the
  two parts instead (ConvNormAct given a list of maps), so the concatenation is never built and kept.
On the Hippocampus plan (batch 7, float32, freed memory kept) the two took a bare step's peak from 1600-2030 to
1217-1258 MB at the same speed (docs/benchmarks.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OPS = {2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d)}
LEAKY_SLOPE = 0.01


def padding_for(kernel, dilation) -> list[int]:
    return [d * (k // 2) for k, d in zip(kernel, dilation)]


ROWS_CHUNK_ELEMENTS = 2 ** 18  # per piece of the backward pass: 1 MiB of float32
MIN_INVERTIBLE_SCALE = 1e-3  # below this |norm weight| the output cannot give back the normalised values


class _NormLeakyReLU(torch.autograd.Function):
    """Instance norm (affine) then leaky ReLU, saving only the output and the per-(sample, channel) 1/std."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, slope: float):
        n, c = x.shape[:2]
        # instance norm is batch norm over (1, n*c, ...): the native kernel also returns 1/std
        out, _, invstd = torch.ops.aten.native_batch_norm(x.reshape(1, n * c, *x.shape[2:]), weight.repeat(n),
                                                          bias.repeat(n), None, None, True, 0.0, eps)
        out = out.view_as(x)
        F.leaky_relu_(out, slope)
        ctx.slope = slope
        ctx.save_for_backward(out, weight, bias, invstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, weight, bias, invstd = ctx.saved_tensors
        n, c = out.shape[:2]
        rows, size = n * c, out[0, 0].numel()
        # every (sample, channel) row is normalised on its own: working through a few rows at a time keeps the
        # intermediate maps small (cache-sized) instead of four full-size maps at the start of the backward pass,
        # which is where a training step's memory peaks
        out_rows, grad_rows = out.reshape(rows, size), grad.reshape(rows, size)
        scale, shift = weight.repeat(n).unsqueeze(1), bias.repeat(n).unsqueeze(1)
        gain = invstd.unsqueeze(1) * scale
        grad_x = torch.empty_like(out_rows)
        sums_grad, sums_grad_xhat = out.new_empty(rows), out.new_empty(rows)
        step = max(1, ROWS_CHUNK_ELEMENTS // size)
        for start in range(0, rows, step):
            rows_here = slice(start, start + step)
            out_chunk, grad_chunk = out_rows[rows_here], grad_rows[rows_here]
            negative = out_chunk < 0
            grad_y = torch.where(negative, grad_chunk * ctx.slope, grad_chunk)  # through leaky ReLU
            xhat = torch.where(negative, out_chunk * (1.0 / ctx.slope), out_chunk)  # its input, the norm's output...
            xhat.sub_(shift[rows_here]).div_(scale[rows_here])  # ... and the normalised values
            torch.sum(grad_y, dim=1, out=sums_grad[rows_here])
            torch.linalg.vecdot(grad_y, xhat, out=sums_grad_xhat[rows_here])
            # the gradient of the normalised values is grad_y * scale; through the normalisation:
            grad_y.sub_(sums_grad[rows_here, None], alpha=1.0 / size)
            grad_y.sub_(xhat.mul_(sums_grad_xhat[rows_here, None] * (1.0 / size)))
            torch.mul(grad_y, gain[rows_here], out=grad_x[rows_here])
        grad_weight = sums_grad_xhat.view(n, c).sum(0)
        grad_bias = sums_grad.view(n, c).sum(0)
        return grad_x.view_as(out), grad_weight, grad_bias, None, None


class ConvNormAct(nn.Sequential):
    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel, stride, dilation=None):
        conv, _, norm = OPS[ndim]
        dilation = dilation or [1] * ndim
        super().__init__(
            conv(in_channels, out_channels, kernel, stride=stride, padding=padding_for(kernel, dilation),
                 dilation=dilation, bias=True),
            norm(out_channels, eps=1e-5, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True))

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """x: a map, or a list of maps standing for their concatenation along the channels (a decoder stage's
        upsampled map and skip; a conv_stage passes the list to its first block)."""
        if isinstance(x, (list, tuple)):
            return self._forward_concatenated(list(x))
        return self._norm_act(self[0](x))

    def _forward_concatenated(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The block on torch.cat(parts, dim=1). In CPU float32 training the convolution is summed over the parts
        instead (it is linear in its input channels), so that no concatenated map is built and kept for the
        backward pass: each part is kept already, or only here, at its own size. The convolution module itself
        is not called then: forward hooks on it see prediction, not such training steps."""
        conv, norm, _ = self
        if not _keeps_output_only(parts[0], norm.weight) or conv.padding_mode != "zeros":
            return self._norm_act(conv(torch.cat(parts, dim=1)))
        convolve = F.conv2d if parts[0].dim() == 4 else F.conv3d
        x, start = None, 0
        for part in parts:
            weight = conv.weight[:, start:start + part.shape[1]]
            start += part.shape[1]
            if x is None:
                x = convolve(part, weight, conv.bias, conv.stride, conv.padding, conv.dilation)
            else:  # the convolution keeps its input, not its output: adding in place is safe
                x.add_(convolve(part, weight, None, conv.stride, conv.padding, conv.dilation))
        return self._norm_act(x)

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        _, norm, act = self
        if _keeps_output_only(x, norm.weight):
            return _NormLeakyReLU.apply(x, norm.weight, norm.bias, norm.eps, act.negative_slope)
        return act(norm(x))


def _keeps_output_only(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether the block runs as _NormLeakyReLU: CPU float32 training (the meta device too, so that counting a
    step's memory there counts what the CPU keeps) with every norm scale invertible."""
    if not torch.is_grad_enabled() or x.dtype != torch.float32 or scale.dtype != torch.float32:
        return False
    if x.device.type == "meta":
        return True
    return x.device.type == "cpu" and bool(scale.detach().abs().min() >= MIN_INVERTIBLE_SCALE)


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


def residual_stage(ndim, in_channels, out_channels, kernel, stride, n_blocks, dilation=None) -> nn.Sequential:
    blocks = [ResidualBlock(ndim, in_channels, out_channels, kernel, stride, dilation)]
    blocks += [ResidualBlock(ndim, out_channels, out_channels, kernel, [1] * ndim, dilation)
               for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def conv_stage(ndim, in_channels, out_channels, kernel, stride, n_convs, dilation=None) -> nn.Sequential:
    layers = [ConvNormAct(ndim, in_channels, out_channels, kernel, stride, dilation)]
    layers += [ConvNormAct(ndim, out_channels, out_channels, kernel, [1] * ndim, dilation)
               for _ in range(n_convs - 1)]
    return nn.Sequential(*layers)


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    """Linear interpolation (bilinear or trilinear) to a size: the fixed upsampling of FCN, PSPNet and HRNet."""
    return F.interpolate(x, size=tuple(size), mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


def _he_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def initialize(network: nn.Module) -> None:
    """He initialisation for the leaky ReLUs; every residual block starts as its shortcut."""
    network.apply(_he_init)
    for module in network.modules():
        if isinstance(module, ResidualBlock):
            nn.init.zeros_(module.conv2[1].weight)
            nn.init.zeros_(module.conv2[1].bias)
