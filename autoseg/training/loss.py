"""Dice + cross-entropy (1:1), or for region-based models Dice + binary cross-entropy per region (1:1, as
nnU-Net); voxels labelled OUTSIDE (padding, and the ignore label of sparse annotations) count nowhere;
summed over deep-supervision outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

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


def region_masks(target: torch.Tensor, regions) -> torch.Tensor:
    """(B, *spatial) label map -> (B, regions, *spatial) float: 1 where the voxel holds one of a region's values."""
    return torch.stack([torch.isin(target, torch.tensor(values, device=target.device)) for values in regions],
                       dim=1).float()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, regions, batch_dice: bool) -> torch.Tensor:
    """Soft Dice of every region's sigmoid (no background channel) + binary cross-entropy over valid voxels."""
    logits = logits.float()
    valid = (target != OUTSIDE).unsqueeze(1).float()
    masks = region_masks(target, regions)
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    bce = (bce * valid).sum() / (valid.sum() * logits.shape[1]).clamp(min=1.0)
    probs = torch.sigmoid(logits) * valid
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0,) + axes
    tp = (probs * masks).sum(axes)
    fp = (probs * (1 - masks)).sum(axes)
    fn = ((1 - probs) * masks * valid).sum(axes)
    dice = (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)
    return bce + (1 - dice.mean())


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


@dataclass(frozen=True)
class Objective:
    """What a step minimises: the loss of each deep-supervision output (full resolution first), weighted;
    classes (softmax) unless `regions` lists each region's label values (sigmoid per region)."""

    weights: tuple[float, ...]
    batch_dice: bool
    regions: tuple[tuple[int, ...], ...] = ()
    region_values: tuple[int, ...] = ()  # each region's value in a label map, for pictures of a prediction

    def label_map(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, outputs, ...) -> (B, ...) predicted label map: argmax, or the regions written in order."""
        if not self.regions:
            return logits.argmax(1)
        out = torch.zeros(logits.shape[:1] + logits.shape[2:], dtype=torch.long, device=logits.device)
        for r, value in enumerate(self.region_values or range(1, len(self.regions) + 1)):
            out[logits[:, r] > 0] = value
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.regions:
            return dice_bce_loss(logits, target, self.regions, self.batch_dice)
        return dice_ce_loss(logits, target, self.batch_dice)

    def __call__(self, outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return deep_supervision_loss(outputs, target, self)

    def foreground(self, logits: torch.Tensor, target: torch.Tensor):
        """(predicted, reference) boolean masks per foreground class or region, over valid voxels."""
        valid = target != OUTSIDE
        if self.regions:
            reference = region_masks(target, self.regions).bool()
            return [((logits[:, r] > 0) & valid, reference[:, r] & valid) for r in range(len(self.regions))]
        prediction = logits.argmax(1)
        return [((prediction == c) & valid, target == c) for c in range(1, logits.shape[1])]


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, objective: Objective) -> torch.Tensor:
    """Weighted sum of the objective's loss over outputs (full resolution first); zero-weight outputs add
    nothing."""
    total = outputs[0].new_zeros(())
    for output, weight in zip(outputs, objective.weights):
        if weight:
            total = total + weight * objective.loss(output, downsample_target(target, output.shape[2:]))
        else:  # keep the unused head in the graph: DistributedDataParallel expects a gradient for every parameter
            total = total + 0.0 * torch.nan_to_num(output).sum()
    return total
