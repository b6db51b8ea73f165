"""Learning rate as a function of training progress (0 -> 1).

Progress is iterations done / iterations planned, or with a time budget, training seconds spent /
seconds budgeted: the whole decay, not a truncated one, fits into the budget.
"""
from __future__ import annotations

import re

POLY_EXPONENT = 0.9


def poly_lr(initial_lr: float, progress: float, exponent: float = POLY_EXPONENT, warmup: float = 0.0) -> float:
    """Polynomial decay to 0 at progress 1, after an optional linear warm-up over the first `warmup` fraction."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return initial_lr * (progress + 1e-3) / warmup
    return initial_lr * (1.0 - progress) ** exponent


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m' or plain seconds -> seconds."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(min|[smhd])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(min|[smhd])", "", text).strip():
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 2h, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)
