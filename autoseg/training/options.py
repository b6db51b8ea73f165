"""How a run trains: the recipe (which must not change when a run is resumed) and defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainOptions:
    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int | None = None  # per epoch; default: a fifth of the training iterations
    time_budget_s: float | None = None  # fit the whole schedule into this many seconds instead of `epochs`
    initial_lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    warmup: float = 0.0  # fraction of the schedule with a linear learning-rate ramp
    grad_clip: float = 12.0
    batch_size: int | None = None  # default: the plan's
    seed: int = 0
    precision: str = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with native bfloat16, else fp32

    @property
    def val_iterations(self) -> int:
        if self.validation_iterations is not None:
            return self.validation_iterations
        return max(1, self.iterations_per_epoch // 5)

    def differences(self, other: "TrainOptions") -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
