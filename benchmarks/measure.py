"""Wall time and peak memory of a command and all its child processes (Linux /proc, stdlib only).

Memory is the sum of PSS over the process tree: summing RSS would count the pages that
forked workers share with their parent once per worker (nnU-Net forks 12 such processes
with torch loaded, which RSS inflates ~10x).
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Measurement:
    wall_s: float
    peak_mb: float  # peak of the summed PSS of the process tree, sampled every 20 ms


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _rss_kb(pid: int) -> int:
    """Proportional set size: pages shared by forked workers count once in the sum, not once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_kb(pid)
        stack += _children(pid)
    return total


def run_measured(cmd: list[str], env: dict | None = None, cwd=None) -> Measurement:
    """Run cmd to completion; raise with its output tail on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    import threading
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(output[-30:])}")
    return Measurement(wall, peak / 1024)
