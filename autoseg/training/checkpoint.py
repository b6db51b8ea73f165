"""Checkpoints: everything a run needs to continue exactly, written atomically."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from autoseg.jsonio import atomic_path
from autoseg.model.checkpoint import read_training_checkpoint



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
    return read_training_checkpoint(path, map_location)
