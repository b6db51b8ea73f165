"""The validation patches after every epoch: loss and pseudo-Dice per class or region, which the moving
average (and with it the best checkpoint) follows, and one slice for tracking."""
from __future__ import annotations

import numpy as np
import torch

from autoseg.training import distributed
from autoseg.training.loss import Objective


@torch.inference_mode()
def validation_pass(network, batches, iterations: int, device, objective: Objective, amp_dtype,
                    ranks) -> tuple[float, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Loss and pseudo-Dice per foreground class or region over `iterations` unaugmented validation patches
    (true/false positives and false negatives summed over all of them, and over ranks), and the first
    patch's middle slice (image channel 0, reference, prediction) for tracking."""
    network.eval()
    counts = None
    loss_sum = 0.0
    example = None
    for _ in range(iterations):
        batch = next(batches)
        data, target = batch["data"].to(device), batch["target"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = network(data)
        loss_sum += float(objective.loss(logits, target))
        if example is None:  # the first patch; its middle slice along z in 3D
            first = (0, data.shape[2] // 2) if data.ndim == 5 else (0,)
            example = (data[0, 0][first[1:]].float().cpu().numpy(), target[first].cpu().numpy(),
                       objective.label_map(logits)[first].cpu().numpy())
        masks = objective.foreground(logits, target)
        if counts is None:
            counts = torch.zeros(3, len(masks), dtype=torch.float64)
        for k, (p, r) in enumerate(masks):
            counts[0, k] += (p & r).sum().item()
            counts[1, k] += (p & ~r).sum().item()
            counts[2, k] += (~p & r).sum().item()
    counts = distributed.all_sum(counts, ranks)
    loss = float(distributed.all_sum(torch.tensor([loss_sum / iterations]), ranks).item() / ranks.world_size)
    tp, fp, fn = counts.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return loss, dice, example
