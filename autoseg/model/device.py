"""Which torch device a run uses: the choice "auto" prefers CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import torch

from autoseg.errors import AutosegError


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise AutosegError("--device cuda: no CUDA device is available to this torch build")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AutosegError("--device mps: MPS is not available on this machine")
    if choice not in ("cpu", "mps"):
        raise AutosegError(f"unknown device {choice!r} (auto, cpu, cuda or mps)")
    return torch.device(choice)
