"""What the machine has free and what this process holds, from Linux's /proc and the cgroup's limits.

Training sizes its network to the memory it may take (autoseg.training.recipe) and records what a step
really peaked at; a container's cgroup limit counts as well as the machine's free memory, since exceeding
it gets the process killed just the same. Every function answers None where the platform has no such
figure (macOS, Windows): callers then skip the check rather than guess.
"""
from __future__ import annotations

from pathlib import Path

_PROC_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_CGROUP_V2 = Path("/sys/fs/cgroup")


def _kib_field(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes() -> int | None:
    """This process's resident memory now."""
    return _kib_field(_PROC_STATUS, "VmRSS")


def peak_resident_bytes() -> int | None:
    """This process's highest resident memory since it started or since `reset_peak`."""
    return _kib_field(_PROC_STATUS, "VmHWM")


def reset_peak() -> bool:
    """Start a new peak from the current resident memory (Linux 4.0+); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _cgroup_room() -> int | None:
    try:
        limit = (_CGROUP_V2 / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP_V2 / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """Memory this process could still take: the kernel's MemAvailable, or the room left under the
    container's cgroup limit when that is smaller."""
    figures = [x for x in (_kib_field(_MEMINFO, "MemAvailable"), _cgroup_room()) if x is not None]
    return min(figures) if figures else None
