"""Keep memory that a CPU step frees inside the process instead of handing it back to the kernel.

Every training or inference step allocates and frees the same few hundred MB of activations.
glibc's malloc serves blocks that large with mmap and returns them with munmap, so the next step
takes a page fault for every 4 KiB page and the kernel zeroes it again. On the Hippocampus plan
(patch 40x56x40, batch 7, bf16) that kernel time was a third of the step: 3.36 s -> 2.27 s per
step once freed blocks stay in the heap, for about 25% more peak resident memory.

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


def retain_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and never trim it; True when it took effect.

    A no-op (False) on other C libraries and platforms, where the allocator already behaves or
    cannot be tuned this way.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc versions that cap the threshold at 32 MiB still keep a bf16 activation of that size
    threshold_set = any(mallopt(_M_MMAP_THRESHOLD, value) for value in (_LARGEST, 32 * 2 ** 20))
    one_arena = bool(mallopt(_M_ARENA_MAX, 1))
    return threshold_set and one_arena and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
