"""What a run reports: metrics.jsonl (one JSON line per epoch), a human log, progress.png."""
from __future__ import annotations

import json
import time
from pathlib import Path

from autoseg.jsonio import atomic_path, write_text_atomic

METRICS, LOG, PLOT = "metrics.jsonl", "training.log", "progress.png"


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / METRICS
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is lost with it
    return lines


def rewrite_metrics(folder: Path, lines: list[dict]) -> None:
    """On resume: keep exactly the epochs the checkpoint knows about."""
    write_text_atomic(Path(folder) / METRICS, "".join(json.dumps(line) + "\n" for line in lines))


def append_metrics(folder: Path, line: dict) -> None:
    with open(Path(folder) / METRICS, "a") as f:
        f.write(json.dumps(line) + "\n")


def log(folder: Path, message: str, echo: bool = True) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(Path(folder) / LOG, "a") as f:
        f.write(f"{stamp} {message}\n")
    if echo:
        print(message, flush=True)


# ---- progress.png, drawn with Pillow (no plotting library needed) ----
_W, _H, _MARGIN = 900, 250, 48
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _panel(draw, top: int, title: str, series: dict[str, list[float]], epochs: list[int]) -> None:
    left, right, bottom = _MARGIN, _W - 10, top + _H - 30
    draw.rectangle([left, top + 20, right, bottom], outline=(0, 0, 0))
    draw.text((left, top + 4), title, fill=(0, 0, 0))
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values or not epochs:
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = min(epochs), max(max(epochs), min(epochs) + 1)

    def xy(e, v):
        return (left + (e - x0) / (x1 - x0) * (right - left),
                bottom - (v - lo) / (hi - lo) * (bottom - top - 20))
    draw.text((4, top + 20), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((4, bottom - 10), f"{lo:.3g}", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 4), f"epoch {x1}", fill=(0, 0, 0))
    for k, (name, vs) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [xy(e, v) for e, v in zip(epochs, vs) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for p in points[-1:]:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.text((left + 10 + 140 * k, bottom + 4), name, fill=colour)


def plot_progress(folder: Path, lines: list[dict]) -> None:
    from PIL import Image, ImageDraw

    epochs = [line["epoch"] for line in lines]
    image = Image.new("RGB", (_W, 4 * _H), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, "loss", {"train": [m["train_loss"] for m in lines],
                             "validation": [m.get("val_loss") for m in lines]}, epochs)
    _panel(draw, _H, "pseudo-Dice (mean over classes) and its moving average",
           {"pseudo-Dice": [m.get("mean_pseudo_dice") for m in lines],
            "moving average": [m.get("ema_pseudo_dice") for m in lines]}, epochs)
    _panel(draw, 2 * _H, "learning rate", {"lr": [m["lr"] for m in lines]}, epochs)
    _panel(draw, 3 * _H, "epoch time (s)", {"seconds": [m["epoch_time_s"] for m in lines]}, epochs)
    with atomic_path(Path(folder) / PLOT) as tmp:
        image.save(tmp, format="PNG")
