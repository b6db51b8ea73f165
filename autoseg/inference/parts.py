"""Which share of a folder's cases this process predicts: `--part K/N`, or one share per rank under torchrun,
so several machines or processes can split one folder without coordinating."""
from __future__ import annotations

import os

from autoseg.errors import AutosegError


def parse_part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AutosegError(f"--part {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise AutosegError(f"--part {text!r}: K must be between 1 and N")
    return k, n


def torchrun_part() -> tuple[int, int] | None:
    """This process's share when launched by torchrun (it sets WORLD_SIZE and RANK), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")) + 1, world) if world > 1 else None


def share(cases: list, part: tuple[int, int] | None) -> list:
    if part is None:
        return cases
    k, n = part
    return cases[k - 1::n]
