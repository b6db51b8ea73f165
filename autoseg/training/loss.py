"""Dice + cross-entropy (1:1), voxels labelled OUTSIDE ignored, summed over deep-supervision outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from autoseg.preprocessing.crop import OUTSIDE

SMOOTH = 1e-5


def soft_dice(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool) -> torch.Tensor:
    """Soft Dice per foreground class, (classes-1,) with batch Dice else (batch, classes-1).

    target is (B, *spatial) with integer labels; OUTSIDE voxels count nowhere.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    valid = (target != OUTSIDE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(min=0).long(), num_classes).movedim(-1, 1).to(probs.dtype)
    probs, onehot = probs * valid, onehot * valid
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0,) + axes
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot) * valid).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    dice = (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)
    return dice[..., 1:]  # background is not part of the Dice term


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=OUTSIDE)
    if not (target != OUTSIDE).any():
        ce = logits.sum() * 0.0  # all ignored: cross_entropy would be NaN
    return ce + (1 - soft_dice(logits, target, batch_dice).mean())


def downsample_target(target: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour label map at a decoder output's resolution."""
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).to(target.dtype)


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, weights: list[float],
                          batch_dice: bool) -> torch.Tensor:
    """Weighted sum of dice_ce_loss over outputs (full resolution first); zero-weight outputs add nothing."""
    total = outputs[0].new_zeros(())
    for output, weight in zip(outputs, weights):
        if weight:
            total = total + weight * dice_ce_loss(output, downsample_target(target, output.shape[2:]), batch_dice)
        else:  # keep the unused head in the graph: DistributedDataParallel expects a gradient for every parameter
            total = total + 0.0 * torch.nan_to_num(output).sum()
    return total


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Loss weight per output, full resolution first: halving per level, the lowest off, summing to 1."""
    weights = [0.5 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]
