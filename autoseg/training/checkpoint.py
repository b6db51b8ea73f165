"""Checkpoints: everything a run needs to continue exactly, written atomically."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.jsonio import atomic_path

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        # our own files, holding numpy/python RNG states besides tensors
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise AutosegError(f"{path}: checkpoint unreadable ({type(e).__name__}: {e})") from None
