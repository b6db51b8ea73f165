"""Dice of the demo's predictions against the held-back labels: `python -m autoseg.demo.dice PRED_DIR LABEL_DIR`.

A stand-in until `autoseg evaluate` exists; it scores with the same metric as training's validation.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from autoseg.dataset import read_image
from autoseg.evaluation.metrics import dice_per_class


def main(pred_dir: str, label_dir: str) -> int:
    labels = sorted(Path(label_dir).glob("*.nii.gz"))
    scores = []
    for label_path in labels:
        prediction, _ = read_image(Path(pred_dir) / label_path.name)
        reference, _ = read_image(label_path)
        dice = dice_per_class(prediction, reference, (1, 2))
        scores.append([dice[1], dice[2]])
        print(f"{label_path.name:28} Dice anterior {dice[1]:.3f}  posterior {dice[2]:.3f}")
    mean = np.nanmean(np.array(scores, dtype=float), axis=0)
    print(f"{'mean of ' + str(len(labels)) + ' held-back cases':28} Dice anterior {mean[0]:.3f}  posterior {mean[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
