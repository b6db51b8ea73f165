"""What a planned network costs: its parameters and the floating-point operations of one training step (forward
and backward at the configuration's batch and patch), counted by torch's FLOP counter on the meta device, so
nothing is allocated or computed. The loss's own arithmetic is negligible beside the network's and is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoseg.model.network import build_network
from autoseg.planning.plan_types import Configuration


@dataclass(frozen=True)
class NetworkCost:
    parameters: int
    gflop_per_step: float


def network_cost(config: Configuration, in_channels: int, num_classes: int) -> NetworkCost:
    with torch.device("meta"):
        network = build_network(config, in_channels, num_classes, deep_supervision=True).train()
        data = torch.empty(config.batch_size, in_channels, *config.patch_size)
    with FlopCounterMode(display=False) as counter:
        outputs = network(data)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        sum(output.sum() for output in outputs).backward()
    return NetworkCost(sum(p.numel() for p in network.parameters()), counter.get_total_flops() / 1e9)
