"""Running one function per case in worker processes, with a progress bar."""
from __future__ import annotations

import multiprocessing
import os
import sys


def default_workers() -> int:
    """All usable cores, at most 8 (beyond that, disk and memory bandwidth limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def map_cases(function, tasks: list, workers: int, progress: bool, desc: str):
    """Yield function(task) for each task, in order, using worker processes when workers > 1."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="case", disable=not progress, file=sys.stderr, leave=False)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield function(task)
                bar.update()
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
            chunk = max(1, min(8, len(tasks) // (4 * workers)))
            for result in pool.imap(function, tasks, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()
