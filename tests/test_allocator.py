import subprocess
import sys

import pytest

PROBE = """
import resource, sys, threading
import numpy as np
from autoseg.allocator import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "retain" else False

def work():  # in a worker thread, as the prediction service runs its networks
    np.ones(16 * 2 ** 20)  # 128 MB, allocated and freed once before counting
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(16 * 2 ** 20)
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if sys.argv[2] == "thread":
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
else:
    work()
"""


def _page_faults(mode: str, where: str = "main") -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, where], capture_output=True, text=True,
                         check=True).stdout
    took, faults = out.split()
    return took == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_blocks_stay_in_the_process():
    took, retained = _page_faults("retain")
    if not took:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, default = _page_faults("default")
    # (with transparent huge pages a fault maps up to 2 MB, so compare counts rather than expect one per 4 KiB)
    assert default >= 5 * 64, f"glibc's default should fault each reallocated 128 MB block in again ({default})"
    assert retained * 20 < default, f"{retained} page faults vs {default}: freed blocks went back to the kernel"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_blocks_stay_in_the_process_in_worker_threads_too():
    """glibc's per-thread arenas cap their heaps at 64 MiB, so larger blocks freed in a thread went back to
    the kernel whatever the thresholds said; the service's network thread paid for it on every case."""
    took, retained = _page_faults("retain", "thread")
    if not took:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, default = _page_faults("default", "thread")
    assert default >= 5 * 64, f"glibc's default should fault each reallocated 128 MB block in again ({default})"
    assert retained * 20 < default, f"{retained} page faults vs {default} in a worker thread"
