"""Training time as `--time-budget` counts it, and when to stop so that the budget is kept.

Everything from the start of a run to its last checkpoint counts: the step-time probe, the steps,
the per-epoch validation patches, checkpoints and the progress plot. Only the final sliding-window
validation of the fold's cases is not training and is reported on its own. The last epoch stops early
enough for its own validation patches and checkpoint to fit (their cost is known from the epoch before,
or estimated from the step time in the first epoch), so a run ends within a step or so of the budget.
"""
from __future__ import annotations

import time


class BudgetClock:
    def __init__(self, budget_s: float | None, spent_s: float = 0.0):
        self.budget_s = budget_s
        self._spent_before = spent_s
        self._start = time.monotonic()

    @property
    def seconds(self) -> float:
        """Training seconds so far, including what earlier sessions of a resumed run spent."""
        return self._spent_before + time.monotonic() - self._start

    @property
    def remaining(self) -> float | None:
        return None if self.budget_s is None else max(0.0, self.budget_s - self.seconds)

    def exhausted(self) -> bool:
        return self.budget_s is not None and self.seconds >= self.budget_s

    def must_stop(self, step_s: float, tail_s: float) -> bool:
        """True when another step of step_s would leave less than tail_s (this epoch's validation patches and
        checkpoint) before the budget ends; half a step of slack, so the expected overshoot is zero."""
        if self.budget_s is None:
            return False
        return self.seconds + 0.5 * step_s + tail_s >= self.budget_s
