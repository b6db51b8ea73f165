"""Mixed precision: float16 with loss scaling on CUDA, bfloat16 on CPUs that compute it natively
(AVX512-BF16 or AMX, where it roughly halves a step's time), float32 elsewhere."""
from __future__ import annotations

import torch

from autoseg.errors import AutosegError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this device, or None for plain float32."""
    if precision not in PRECISIONS:
        raise AutosegError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type != "cuda":
        raise AutosegError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
