"""Which torch device a run uses: the choice "auto" prefers CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import os
import platform
from pathlib import Path

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


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """Model name, logical CPUs and which of CPU_FLAGS /proc/cpuinfo lists (timings depend on them)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def machine_description(device: torch.device, amp_dtype) -> dict[str, str]:
    """What a timing was measured on, as strings (recorded with the training recipe)."""
    cpu = cpu_info()
    described = {"device": str(device), "precision": "float32" if amp_dtype is None else str(amp_dtype).split(".")[-1],
                 "cpu": cpu["model"], "cpu_flags": " ".join(f for f, present in cpu["flags"].items() if present),
                 "torch_threads": str(torch.get_num_threads()), "torch": torch.__version__}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described
