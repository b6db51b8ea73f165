"""Keep memory that a CPU step frees inside the process instead of handing it back to the kernel.

Every training or inference step allocates and frees the same few hundred MB of activations.
glibc's malloc serves blocks that large with mmap and returns them with munmap, so the next step
takes a page fault for every 4 KiB page and the kernel zeroes it again. On the Hippocampus plan
(patch 40x56x40, batch 7, bf16) that kernel time was a third of the step: 3.36 s -> 2.27 s per
step once freed blocks stay in the heap. The price is memory: the heap fragments, and in float32 a
training step's peak grew by 45% (batch 7 at 40x56x40: 1648 -> 2387 MB) to 70% (batch 2 at 128^3,
quarter width: 2479 -> 4235 MB) for steps 30-35% faster. So training keeps freed memory only where the
machine has room for it (autoseg.training.recipe.RETAIN_SHARE) and otherwise bounds it again.

Threads other than the main one allocate from glibc's per-thread arenas, whose heaps are capped
at 64 MiB: a larger activation there is always mmapped and unmapped, whatever the thresholds say.
The prediction service runs its networks in a worker thread, where that made a Hippocampus case
3.8 s instead of 2.4 s; so every thread is sent to the main arena (M_ARENA_MAX = 1). The arenas
exist to spare small allocations a lock; the network's allocations are few and large.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_LARGEST = 2 ** 31 - 1


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Hand the freed memory the heap holds back to the kernel now (glibc's malloc_trim); True when some was.

    Called where a process's needs shrink for good: after the recipe's probe has timed wider networks than
    the one it chose, the heap would otherwise keep the widest probe's activations for the whole run."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def retain_freed_memory(retain: bool = True) -> bool:
    """Ask glibc to serve large blocks from the heap and never trim it; True when it took effect.

    retain=False bounds it again where memory is short (autoseg.training.recipe decides): blocks over
    32 MiB are mapped and unmapped, and at most 64 MiB of free heap is kept, glibc's own limits for its
    adaptive thresholds. A no-op (False) on other C libraries and platforms, where the allocator already
    behaves or cannot be tuned this way.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not Linux, or musl and others without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    one_arena = bool(mallopt(_M_ARENA_MAX, 1))
    if not retain:
        bounded = mallopt(_M_MMAP_THRESHOLD, 32 * 2 ** 20) and mallopt(_M_TRIM_THRESHOLD, 64 * 2 ** 20)
        release_freed_memory()
        return bool(bounded) and one_arena
    # glibc versions that cap the threshold at 32 MiB still keep a bf16 activation of that size
    threshold_set = any(mallopt(_M_MMAP_THRESHOLD, value) for value in (_LARGEST, 32 * 2 ** 20))
    return threshold_set and one_arena and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
