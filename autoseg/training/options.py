"""How a run trains: the recipe (which must not change when a run is resumed) and defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass


LENGTH_OPTIONS = ("epochs", "time_budget_s")
NOT_THE_RUN = ("memory_limit_gb", "tensorboard")  # may differ when a run continues  # the options a finished or running run may grow


@dataclass
class TrainOptions:
    """None leaves a value to the recipe (autoseg.training.recipe), which records what it chose."""

    epochs: int = 1000
    iterations_per_epoch: int | None = None
    validation_iterations: int | None = None  # validation batches per epoch
    time_budget_s: float | None = None  # fit the whole schedule into this many seconds instead of `epochs`
    recipe: str = "auto"  # auto, standard, budget, or the path of a recipe.json to reuse
    width: float | None = None  # features per stage relative to the plan's
    augmentation: str | None = None  # standard or light
    optimizer: str | None = None  # sgd or adamw
    initial_lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    warmup: float | None = None  # fraction of the schedule with a linear learning-rate ramp
    grad_clip: float = 12.0
    batch_size: int | None = None
    seed: int = 0
    precision: str = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with native bfloat16, else fp32
    memory_limit_gb: float | None = None  # what a CPU run may take (None: the machine's available memory)
    init_from: str | None = None  # a checkpoint, model folder or package whose weights start a new run
    tensorboard: bool = False  # also log each epoch to fold_k/tensorboard/ (autoseg.training.tracking)

    def differences(self, other: "TrainOptions") -> list[str]:
        """Options that differ, except those that do not change what is trained: the memory limit (a resumed
        run keeps its recipe.json whatever the machine has free now) and tracking."""
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k] and k not in NOT_THE_RUN]

    def continuation(self, other: "TrainOptions") -> tuple[list[str], list[str]]:
        """(what grows, what may not change) when a run started with these options continues with `other`.

        Only the length may grow: more epochs, or a longer time budget (docs/training.md, "Training
        longer"); the run then follows the longer schedule from where it is. Everything else, a shorter
        schedule, or switching between epochs and a time budget would make the saved state mean something
        else, and is refused."""
        grows, refused = [], []
        for change in self.differences(other):
            key = change.split(":", 1)[0]
            old, new = getattr(self, key), getattr(other, key)
            budget_run = self.time_budget_s is not None
            if key == "epochs" and budget_run:
                continue  # a budget run's length is its budget; --epochs plays no part
            if key in LENGTH_OPTIONS and old is not None and new is not None and (key == "epochs") != budget_run:
                (grows if new > old else refused).append(change + ("" if new > old else " (it can only grow)"))
            else:
                refused.append(change)
        return grows, refused
