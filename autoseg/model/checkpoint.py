"""What a finished fold leaves for prediction: the checkpoint file names and reading a network's weights.

Training checkpoints also hold optimizer and random-generator states (numpy objects), so reading a
training folder unpickles more than tensors; that is the user's own training output. Model packages
(model/package.py) hold bare state dicts and are always read with torch's weights-only loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from autoseg.errors import AutosegError

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


@dataclass
class NetworkWeights:
    state_dict: dict[str, torch.Tensor]
    in_channels: int
    num_classes: int


def read_training_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise AutosegError(f"{path}: checkpoint unreadable ({type(e).__name__}: {e})") from None


def read_fold_weights(path: Path) -> NetworkWeights:
    checkpoint = read_training_checkpoint(path)
    try:
        return NetworkWeights(checkpoint["network"], int(checkpoint["in_channels"]), int(checkpoint["num_classes"]))
    except (KeyError, TypeError, ValueError):
        raise AutosegError(f"{path}: not an autoseg checkpoint (network weights missing)") from None
