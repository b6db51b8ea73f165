"""Data-parallel training under torchrun: process group, per-rank device and batch share, reductions."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from autoseg.model.device import resolve_device


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (NCCL needs CUDA tensors)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def start(device_choice: str) -> tuple[Ranks, torch.device]:
    """Join the process group when launched by torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), resolve_device(device_choice)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    ranks = Ranks(rank, world, local_rank, device if device.type == "cuda" else torch.device("cpu"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return ranks, device


def stop(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def rank_batch_size(batch_size: int, ranks: Ranks) -> int:
    """This rank's share of the global batch (the first ranks take the remainder), at least 1."""
    share = batch_size // ranks.world_size + (ranks.rank < batch_size % ranks.world_size)
    return max(1, share)


def all_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.active:
        moved = tensor.to(ranks.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)
    return tensor


def broadcast_float(value: float, ranks: Ranks) -> float:
    """Rank 0's value everywhere, so that all ranks take the same decisions (e.g. when time is up)."""
    if not ranks.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ranks.device)
    dist.broadcast(t, 0)
    return float(t.item())


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()
