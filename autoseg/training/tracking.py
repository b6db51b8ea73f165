"""Experiment tracking beside metrics.jsonl: `autoseg train --tensorboard` (the `tensorboard` extra).

metrics.jsonl stays the record; TensorBoard is a view of it that updates while a run trains. Each epoch
writes its metrics line's numbers as scalars (losses, pseudo-Dice per class and their mean and moving
average, learning rate, timings), and one validation patch's middle slice as an image: the scan with the
reference on the left and the prediction on the right, classes in colour. Only rank 0 writes, into
`fold_k/tensorboard/` (`tensorboard --logdir OUTPUT_DIR/models`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError

TENSORBOARD_DIR = "tensorboard"
CLASS_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                          (145, 30, 180), (70, 240, 240), (240, 50, 230)], dtype=np.float32)
OVERLAY_OPACITY = 0.5


def overlay_pair(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(H, W) image, reference and prediction -> (3, H, 2W + 2) uint8: reference overlay | prediction overlay."""
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255

    def coloured(labels: np.ndarray) -> np.ndarray:
        rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
        for value in np.unique(labels):
            if value <= 0:  # background, and -1 where a patch was padded
                continue
            mask = labels == value
            colour = CLASS_COLOURS[(int(value) - 1) % len(CLASS_COLOURS)]
            rgb[mask] = (1 - OVERLAY_OPACITY) * rgb[mask] + OVERLAY_OPACITY * colour
        return rgb

    gap = np.full((image.shape[0], 2, 3), 255, np.float32)
    pair = np.concatenate([coloured(reference), gap, coloured(prediction)], axis=1)
    return pair.astype(np.uint8).transpose(2, 0, 1)


class TensorBoardTracker:
    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AutosegError("--tensorboard needs the tensorboard extra: pip install 'autoseg[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(self, line: dict, example: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        epoch = int(line["epoch"])
        for key, value in line.items():
            if key == "pseudo_dice":
                for name, dice in value.items():
                    if dice is not None:
                        self.writer.add_scalar(f"pseudo_dice/{name}", dice, epoch)
            elif key != "epoch" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(key, value, epoch)
        if example is not None:
            self.writer.add_image("validation/reference_vs_prediction", overlay_pair(*example), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NoTracker:
    def log_epoch(self, line: dict, example) -> None:
        pass

    def close(self) -> None:
        pass


def make_tracker(enabled: bool, model_dir: Path, is_main: bool):
    return TensorBoardTracker(model_dir / TENSORBOARD_DIR) if enabled and is_main else NoTracker()
