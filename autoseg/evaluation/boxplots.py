"""boxplots.png: one box plot per class for each metric, drawn with Pillow (no plotting library)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from autoseg.jsonio import atomic_path

PANELS = (("dice", "Dice", (0.0, 1.0)), ("iou", "IoU", (0.0, 1.0)), ("nsd", "normalized surface Dice", (0.0, 1.0)),
          ("hd95", "HD95 (mm)", None))
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
_PANEL_W, _PANEL_H, _LEFT, _TOP, _BOTTOM = 420, 300, 56, 28, 40


def _box(draw, x: float, width: float, values: np.ndarray, to_y, colour) -> None:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    low, high = inside.min(), inside.max()
    draw.line([(x, to_y(low)), (x, to_y(q1))], fill=colour, width=1)
    draw.line([(x, to_y(q3)), (x, to_y(high))], fill=colour, width=1)
    for whisker in (low, high):
        draw.line([(x - width / 4, to_y(whisker)), (x + width / 4, to_y(whisker))], fill=colour)
    draw.rectangle([x - width / 2, to_y(q3), x + width / 2, to_y(q1)], outline=colour, width=2)
    draw.line([(x - width / 2, to_y(median)), (x + width / 2, to_y(median))], fill=colour, width=3)
    for v in values[(values < low) | (values > high)]:  # outliers
        draw.ellipse([x - 2, to_y(v) - 2, x + 2, to_y(v) + 2], outline=colour)


def plot_boxplots(summary: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    labels = list(summary["mean"])  # label values, or a region's values joined by "+"
    image = Image.new("RGB", (2 * _PANEL_W, 2 * _PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for k, (metric, title, fixed) in enumerate(PANELS):
        left, top = (k % 2) * _PANEL_W, (k // 2) * _PANEL_H
        x0, x1 = left + _LEFT, left + _PANEL_W - 12
        y0, y1 = top + _TOP, top + _PANEL_H - _BOTTOM
        draw.text((x0, top + 8), title, fill=(0, 0, 0))
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        per_label = {}
        for label in labels:
            values = [c["metrics"][label][metric] for c in summary["cases"]]
            values = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
            per_label[label] = values
        finite = np.concatenate([v for v in per_label.values() if v.size] or [np.zeros(0)])
        lo, hi = fixed if fixed else (0.0, float(finite.max()) if finite.size else 1.0)
        hi = hi if hi > lo else lo + 1.0

        def to_y(v, lo=lo, hi=hi, y0=y0, y1=y1):
            return y1 - (float(v) - lo) / (hi - lo) * (y1 - y0)
        draw.text((left + 6, y0 - 6), f"{hi:.3g}", fill=(0, 0, 0))
        draw.text((left + 6, y1 - 6), f"{lo:.3g}", fill=(0, 0, 0))
        slot = (x1 - x0) / max(len(labels), 1)
        for j, label in enumerate(labels):
            x = x0 + slot * (j + 0.5)
            colour = _COLOURS[j % len(_COLOURS)]
            if per_label[label].size:
                _box(draw, x, min(slot * 0.5, 60), per_label[label], to_y, colour)
            draw.text((x - 12, y1 + 6), f"label {label}", fill=colour)
            draw.text((x - 12, y1 + 20), f"n={per_label[label].size}", fill=(90, 90, 90))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
