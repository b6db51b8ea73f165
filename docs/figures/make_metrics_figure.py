"""Draws docs/figures/metrics.png: one 2D example with every quantity autoseg evaluate reports.

    .venv/bin/python docs/figures/make_metrics_figure.py

The numbers printed in the figure are computed by autoseg.evaluation.metrics on the drawn masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autoseg.evaluation.metrics import class_metrics, surface

CELL, SPACING, TOLERANCE = 22, (1.0, 1.0), 1.0
TP, FP, FN = (120, 190, 120), (240, 150, 120), (130, 160, 230)


def masks():
    ref = np.zeros((16, 22), bool)
    pred = np.zeros((16, 22), bool)
    ref[3:12, 3:12] = True
    pred[4:13, 5:14] = True  # shifted by one row and two columns
    pred[2:4, 17:20] = True  # a spurious blob
    return pred, ref


def main() -> None:
    pred, ref = masks()
    m = class_metrics(pred, ref, SPACING, TOLERANCE, surface_convention="voxels")  # the figure draws voxel borders
    h, w = ref.shape
    image = Image.new("RGB", (w * CELL + 330, h * CELL + 20), "white")
    draw = ImageDraw.Draw(image)
    sp, sr = surface(pred), surface(ref)
    for (y, x), _ in np.ndenumerate(ref):
        box = [10 + x * CELL, 10 + y * CELL, 10 + (x + 1) * CELL - 1, 10 + (y + 1) * CELL - 1]
        fill = TP if pred[y, x] and ref[y, x] else FP if pred[y, x] else FN if ref[y, x] else (250, 250, 250)
        draw.rectangle(box, fill=fill, outline=(225, 225, 225))
        if sr[y, x]:
            draw.rectangle([box[0] + 3, box[1] + 3, box[2] - 3, box[3] - 3], outline=(20, 40, 150), width=2)
        if sp[y, x]:
            draw.ellipse([box[0] + 7, box[1] + 7, box[2] - 7, box[3] - 7], fill=(150, 30, 20))
    x0 = w * CELL + 24
    lines = [("true positive (in both)", TP), ("false positive (prediction only)", FP),
             ("false negative (reference only)", FN), ("", None),
             ("blue frame: reference surface voxel", (20, 40, 150)), ("red dot: prediction surface voxel", (150, 30, 20)),
             ("", None),
             (f"TP {m.tp}  FP {m.fp}  FN {m.fn} voxels", (0, 0, 0)),
             (f"Dice = 2TP/(2TP+FP+FN) = {m.dice:.3f}", (0, 0, 0)),
             (f"IoU = TP/(TP+FP+FN) = {m.iou:.3f}", (0, 0, 0)),
             (f"HD95 = {m.hd95:.2f} mm: max of the two directed", (0, 0, 0)),
             ("  95th percentiles of surface-to-surface distance", (0, 0, 0)),
             (f"NSD at {TOLERANCE:g} mm = {m.nsd:.3f}: share of both", (0, 0, 0)),
             ("  surfaces within the tolerance of the other", (0, 0, 0)),
             ("", None), ("the spurious blob costs Dice little but", (0, 0, 0)),
             ("dominates HD95: use both kinds of metric", (0, 0, 0))]
    for k, (text, colour) in enumerate(lines):
        if colour is not None and k < 3:
            draw.rectangle([x0, 14 + 20 * k, x0 + 14, 28 + 20 * k], fill=colour)
            draw.text((x0 + 22, 15 + 20 * k), text, fill=(0, 0, 0))
        elif text:
            draw.text((x0, 15 + 20 * k), text, fill=colour)
    out = Path(__file__).with_name("metrics.png")
    image.save(out)
    print(f"{out}: Dice {m.dice:.3f} IoU {m.iou:.3f} HD95 {m.hd95:.2f} NSD {m.nsd:.3f}")


if __name__ == "__main__":
    main()
