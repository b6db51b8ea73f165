"""What `autoseg serve` can be told (kept free of the web libraries, so the CLI can build it without them)."""
from __future__ import annotations

from dataclasses import dataclass

from autoseg.errors import AutosegError

MB = 1024 * 1024


@dataclass
class ServeOptions:
    """Settings of one server; the defaults are the CLI's."""

    host: str = "127.0.0.1"  # loopback: this machine only. Anything else needs a reverse proxy with TLS and auth.
    port: int = 8000
    workers: int = 2  # threads reading/preprocessing uploads, and as many restoring/writing, beside the network
    max_queue: int = 8  # requests admitted (uploading, waiting or running) before new ones get 503
    max_request_mb: float = 512.0  # largest request body
    timeout_s: float = 600.0  # a request unanswered after this gets 504
    device: str = "auto"
    mirror: bool = True  # test-time mirroring
    temp_dir: str | None = None  # parent of this server's temp folder (default: the system temp dir)
    # an upload may decode to at most this many times max_request_mb of voxels (zip members and NIfTI data
    # together): the bound on zip and gzip bombs
    max_unpack_factor: float = 8.0

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_request_mb * self.max_unpack_factor * MB)

    def check(self) -> None:
        """One line for the first setting that cannot work."""
        if not 0 <= self.port <= 65535:
            raise AutosegError(f"--port {self.port}: must be between 0 and 65535")
        if self.workers < 1:
            raise AutosegError(f"--workers {self.workers}: must be at least 1")
        if self.max_queue < 1:
            raise AutosegError(f"--max-queue {self.max_queue}: must be at least 1")
        if not self.max_request_mb > 0:
            raise AutosegError(f"--max-request-mb {self.max_request_mb}: must be positive")
        if not self.timeout_s > 0:
            raise AutosegError(f"--timeout {self.timeout_s}: must be positive")
        if not self.max_unpack_factor >= 1:
            raise AutosegError(f"max_unpack_factor {self.max_unpack_factor}: must be at least 1")
