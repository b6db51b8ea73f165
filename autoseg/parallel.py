"""Running one function per case in worker processes, with a progress bar."""
from __future__ import annotations

import multiprocessing
import os
import sys


def default_workers() -> int:
    """All usable cores, at most 8 (beyond that, disk and memory bandwidth limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def _start_method() -> str:
    """fork where it is safe, else forkserver (else spawn).

    A forked worker starts with everything the parent imported, where a forkserver worker imports it again
    (0.7 s for the preprocessing modules, a quarter of preprocessing all of Hippocampus). Forking is unsafe
    in a process with threads that may hold locks: torch's thread pools, or Python threads (tqdm's
    monitor starts with the first bar, so the pool starts before it)."""
    import threading

    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "torch" not in sys.modules and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def map_cases(function, tasks: list, workers: int, progress: bool, desc: str):
    """Yield function(task) for each task, in order, using worker processes when workers > 1."""
    if workers <= 1 or len(tasks) <= 1:
        with _bar(len(tasks), desc, progress) as bar:
            for task in tasks:
                yield function(task)
                bar.update()
        return
    with multiprocessing.get_context(_start_method()).Pool(min(workers, len(tasks))) as pool, \
            _bar(len(tasks), desc, progress) as bar:  # the pool first: a bar may start a thread
        chunk = max(1, min(8, len(tasks) // (4 * workers)))
        for result in pool.imap(function, tasks, chunksize=chunk):
            yield result
            bar.update()


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="case", disable=not progress, file=sys.stderr, leave=False)
