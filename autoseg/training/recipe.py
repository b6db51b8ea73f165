"""The training recipe: network width, batch, learning-rate warm-up, augmentation strength and epoch
cadence, decided once when a run starts and saved beside the model (recipe.json).

Why a recipe on top of the plan: nnU-Net's schedule (1000 epochs of 250 iterations of the planned
network) assumes a GPU. On a 2-core CPU in float32 the Hippocampus plan's step takes ~7 s, so a
30-minute budget buys ~250 iterations, far too few for that network to learn the task. A narrower
network does several times more iterations in the same time and ends better (docs/training.md has the
measured grid). The budget recipe trades width for iterations, using step times measured on the machine
at hand when the run starts.

- standard: nnU-Net's recipe (the plan's network and batch, SGD lr 0.01, 250 iterations per epoch,
  full augmentation).
- budget: from the time budget and measured step times, see `budget_recipe`.
- auto (default): budget when a time budget buys fewer than AUTO_STANDARD_ITERATIONS standard
  iterations; standard otherwise, and always without a time budget.

Memory: given the memory the run may take (RecipeRequest.memory_limit_bytes) and an estimate of a step's
peak (autoseg.training.step.estimate_step_memory), the budget recipe only considers networks that fit:
wider ones are skipped, and when even the narrowest does not fit, the batch drops to 1 and then the patch
shrinks, one bottleneck voxel at a time along its longest axis. Keeping freed memory in the process
(autoseg.allocator) makes CPU steps ~30% faster for ~70% more peak memory; the recipe keeps it only when
the step still fits in RETAIN_SHARE of the memory with it. Neither recipe times a network that would not fit.

Values the user sets explicitly (--batch-size, --lr, --width ...) are kept by every recipe.
`choose_recipe` is pure: step times come from a callback (the training loop's probe, or a table in
the tests), measured lazily so that only the widths the rule looks at are timed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from autoseg.errors import AutosegError
from autoseg.jsonio import load_versioned, write_json_atomic
from autoseg.planning.plan_types import Configuration

RECIPE_VERSION = 1
RECIPE_FILE = "recipe.json"
RECIPE_NAMES = ("auto", "standard", "budget")
AUGMENTATIONS = ("standard", "light")

STANDARD_LR = 0.01
STANDARD_ITERATIONS_PER_EPOCH = 250
# auto keeps nnU-Net's recipe when the budget buys a tenth of its 250,000 iterations: enough for the planned
# network to converge (nnU-Net's curves flatten well before the end of the schedule).
AUTO_STANDARD_ITERATIONS = 25_000

# Budget recipe (rule and constants measured on Hippocampus, docs/training.md).
WIDTHS = (1.0, 0.5, 0.25)  # features per stage relative to the plan's, widest first
MIN_FEATURES = 4
BUDGET_TARGET_ITERATIONS = 1500  # the widest network that reaches this many iterations is taken
BUDGET_BATCH = 2  # nnU-Net's smallest batch: more updates per second where each step is slow
BUDGET_WARMUP = 0.05
# AdamW at 3e-3: on the 3-minute demo (half width, ~190 steps) SGD 0.01 with momentum 0.99 reached Dice 0.26,
# AdamW 1e-3 0.73, AdamW 3e-3 0.79; momentum 0.99 needs ~100 steps just to build up.
BUDGET_OPTIMIZER = "adamw"
BUDGET_LR = 3e-3
OPTIMIZERS = ("sgd", "adamw")  # fraction of the schedule with a linear learning-rate ramp
BUDGET_EPOCHS = 40  # epochs per run: the pseudo-Dice curve, best checkpoint and progress plot get this many points
BUDGET_VALIDATION_SHARE = 0.02  # of the training time spent on the per-epoch validation patches
FORWARD_SHARE = 1 / 3  # a validation batch (forward only) costs about a third of a training step

# A step's peak resident memory against estimate_step_memory's count, measured on this machine's CPU (fp32,
# Hippocampus network, batch 7 at 40x56x40 and batch 2 at 128^3 with a quarter of the features; docs/training.md),
# with the norm-activation blocks keeping only their output (autoseg.model.blocks): x1.69-1.82 when freed memory
# goes back to the kernel, x2.5-3.5 (the larger, the more) when the process keeps it.
MEMORY_FACTOR, MEMORY_FACTOR_RETAINED, MEMORY_FIXED = 1.85, 3.5, 128 * 2 ** 20
MEMORY_SHARE = 0.75  # of the available memory the training process may plan for (workers need the rest)
RETAIN_SHARE = 0.5  # keeping freed memory only while the step then still fits in this share


@dataclass
class StepTime:
    width: float
    batch_size: int
    seconds: float  # one training step (forward, backward, update) on random data, after a warm-up step
    peak_mb: float | None = None  # resident memory the step added at its peak, where measurable


@dataclass
class Recipe:
    version: int
    name: str  # standard or budget
    reason: str  # one line: the rule and the numbers that decided
    width: float
    features_per_stage: list[int]
    batch_size: int
    initial_lr: float
    warmup: float
    augmentation: str
    iterations_per_epoch: int
    val_iterations: int
    expected_iterations: int | None  # in the time budget, at the measured step time
    optimizer: str = "sgd"  # or adamw
    step_times: list[StepTime] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)  # cpu model and flags, device, precision, threads
    probe_seconds: float = 0.0  # spent timing steps and deciding, counted in the time budget
    patch_size: list[int] = field(default_factory=list)  # empty: the plan's
    memory_limit_mb: float | None = None  # what the run planned for (None: unknown, not checked)
    expected_peak_mb: float | None = None  # the chosen step's estimated peak, as it runs
    retain_freed_memory: bool = True  # keep freed memory in the process (faster CPU steps, more memory)

    def configuration(self, config: Configuration) -> Configuration:
        """The plan's configuration as this recipe trains it (what the model folder's plan.json records)."""
        return dataclasses.replace(config, features_per_stage=list(self.features_per_stage),
                                   batch_size=self.batch_size, patch_size=list(self.patch_size or config.patch_size))


@dataclass
class RecipeRequest:
    """What the user asked for; None leaves the choice to the recipe."""

    name: str = "auto"
    time_budget_s: float | None = None
    width: float | None = None
    batch_size: int | None = None
    initial_lr: float | None = None
    warmup: float | None = None
    augmentation: str | None = None
    iterations_per_epoch: int | None = None
    val_iterations: int | None = None
    optimizer: str | None = None


def scaled_features(features: list[int], width: float) -> list[int]:
    return [max(MIN_FEATURES, int(round(f * width))) for f in features]


StepTimer = Callable[[float, int, list[int]], tuple[float, int | None]]  # (width, batch, patch) -> s, peak bytes
StepMemory = Callable[[float, int, list[int]], int]  # (width, batch, patch) -> estimate_step_memory's count


@dataclass
class MemoryModel:
    """The memory side of a decision: which (width, batch, patch) fit, and whether freed memory is kept.
    limit: the most a training step may take (None: not checked); count: estimate_step_memory's bytes."""

    limit: int | None = None
    count: StepMemory | None = None

    def peak(self, width: float, batch: int, patch: list[int], *, retained: bool) -> int | None:
        if self.count is None:
            return None
        factor = MEMORY_FACTOR_RETAINED if retained else MEMORY_FACTOR
        return int(factor * self.count(width, batch, patch) + MEMORY_FIXED)

    def fits(self, width: float, batch: int, patch: list[int]) -> bool:
        peak = self.peak(width, batch, patch, retained=False)
        return self.limit is None or peak is None or peak <= self.limit

    def retains(self, width: float, batch: int, patch: list[int]) -> bool:
        peak = self.peak(width, batch, patch, retained=True)
        return self.limit is None or peak is None or peak <= self.limit * RETAIN_SHARE / MEMORY_SHARE


def choose_recipe(request: RecipeRequest, config: Configuration, step_time: StepTimer,
                  machine: dict[str, str] | None = None, memory: MemoryModel | None = None) -> Recipe:
    if request.name not in RECIPE_NAMES:
        raise AutosegError(f"unknown recipe {request.name!r} ({', '.join(RECIPE_NAMES)}, or a recipe.json)")
    if request.optimizer is not None and request.optimizer not in OPTIMIZERS:
        raise AutosegError(f"unknown optimizer {request.optimizer!r} ({', '.join(OPTIMIZERS)})")
    if request.augmentation is not None and request.augmentation not in AUGMENTATIONS:
        raise AutosegError(f"unknown augmentation {request.augmentation!r} ({', '.join(AUGMENTATIONS)})")
    timed: dict[tuple[float, int, tuple[int, ...]], tuple[float, int | None]] = {}
    memory = memory or MemoryModel()

    def measured(width: float, batch: int, patch: list[int] | None = None) -> float:
        key = (width, batch, tuple(patch or config.patch_size))
        if key not in timed:
            seconds, peak = step_time(width, batch, list(key[2]))
            timed[key] = (float(seconds), peak)
        return timed[key][0]

    name, reason = request.name, ""
    if name == "budget" and request.time_budget_s is None:
        raise AutosegError("--recipe budget needs a --time-budget (it fits the network to the time)")
    if name == "auto":
        if request.time_budget_s is None:
            name, reason = "standard", "auto: no time budget, so nnU-Net's schedule; "
        else:
            name, reason = _auto(request, config, measured, memory)
    recipe = (standard_recipe(request, config, measured, memory) if name == "standard"
              else budget_recipe(request, config, measured, memory))
    recipe.reason = reason + recipe.reason
    recipe.step_times = [StepTime(w, b, s, None if peak is None else round(peak / 2 ** 20, 1))
                         for (w, b, _), (s, peak) in timed.items()]
    recipe.machine = dict(machine or {})
    patch = recipe.patch_size or config.patch_size
    recipe.retain_freed_memory = memory.retains(recipe.width, recipe.batch_size, patch)
    peak = memory.peak(recipe.width, recipe.batch_size, patch, retained=recipe.retain_freed_memory)
    recipe.expected_peak_mb = None if peak is None else round(peak / 2 ** 20)
    recipe.memory_limit_mb = None if memory.limit is None else round(memory.limit / 2 ** 20)
    if memory.limit is not None and peak is not None and peak > memory.limit:
        recipe.reason += (f"; warning: a step is expected to take {_gb(peak)}, more than the {_gb(memory.limit)} "
                          f"available to it")
    return recipe


def _auto(request: RecipeRequest, config: Configuration, measured, memory: MemoryModel) -> tuple[str, str]:
    """standard when the budget buys AUTO_STANDARD_ITERATIONS standard steps. The budget recipe's narrowest
    network is timed first: when even it cannot do that many, neither can the standard one, and the slow
    standard step is never timed (on a CPU that saves seconds of a minutes-long budget). Nor is a standard
    step that would not fit in memory."""
    budget = float(request.time_budget_s)
    width = request.width or WIDTHS[-1]
    batch, patch, _ = _fit_memory(request, config, width, memory)
    if budget / measured(width, batch, patch) < AUTO_STANDARD_ITERATIONS:
        return "budget", f"auto: under {AUTO_STANDARD_ITERATIONS} iterations even at width {width:g}, batch {batch}; "
    standard = (request.width or 1.0, _pick(request.batch_size, config.batch_size), config.patch_size)
    if not memory.fits(*standard):
        return "budget", "auto: nnU-Net's network and batch would not fit in memory; "
    affordable = budget / measured(*standard)
    name = "standard" if affordable >= AUTO_STANDARD_ITERATIONS else "budget"
    return name, (f"auto: the budget buys {affordable:.0f} standard iterations "
                  f"({'>=' if name == 'standard' else '<'} {AUTO_STANDARD_ITERATIONS}); ")


def _gb(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.2f} GB"


def _pick(value, default):
    return default if value is None else value


def standard_recipe(request: RecipeRequest, config: Configuration, measured, memory: MemoryModel) -> Recipe:
    width = _pick(request.width, 1.0)
    batch = _pick(request.batch_size, config.batch_size)
    per_epoch = _pick(request.iterations_per_epoch, STANDARD_ITERATIONS_PER_EPOCH)
    expected = None
    if request.time_budget_s is not None:
        expected = int(request.time_budget_s / measured(width, batch))
    return Recipe(RECIPE_VERSION, "standard", "nnU-Net's recipe", width, scaled_features(config.features_per_stage,
                  width), batch, _pick(request.initial_lr, STANDARD_LR), _pick(request.warmup, 0.0),
                  _pick(request.augmentation, "standard"), per_epoch,
                  _pick(request.val_iterations, max(1, per_epoch // 5)), expected, _pick(request.optimizer, "sgd"))


def budget_recipe(request: RecipeRequest, config: Configuration, measured, memory: MemoryModel) -> Recipe:
    """The widest network (of WIDTHS) that does BUDGET_TARGET_ITERATIONS iterations in the budget at its
    measured step time and fits in memory, else the narrowest; batch BUDGET_BATCH (or the plan's, if
    smaller); epochs sized so a run has BUDGET_EPOCHS of them, with validation patches taking
    BUDGET_VALIDATION_SHARE of the time.

    Widths are timed narrowest first and timing stops at the first that falls short, so the slow wide
    networks are timed only when the budget is long enough for them to matter (on a large-patch plan a
    full-width CPU step can take minutes)."""
    budget = float(request.time_budget_s)
    overhead = 1.0 + BUDGET_VALIDATION_SHARE
    candidates = [request.width] if request.width is not None else sorted(WIDTHS)
    width = candidates[0]
    batch, patch, squeezed = _fit_memory(request, config, width, memory)
    if budget / (measured(width, batch, patch) * overhead) >= BUDGET_TARGET_ITERATIONS:
        for w in candidates[1:]:  # a wider network is slower: worth timing only when the narrower one reached it
            if not memory.fits(w, batch, patch):
                break
            if budget / (measured(w, batch, patch) * overhead) < BUDGET_TARGET_ITERATIONS:
                break
            width = w
    expected = int(budget / (measured(width, batch, patch) * overhead))
    per_epoch = _pick(request.iterations_per_epoch, max(5, min(STANDARD_ITERATIONS_PER_EPOCH,
                                                               expected // BUDGET_EPOCHS)))
    val = _pick(request.val_iterations,
                max(1, round(per_epoch * BUDGET_VALIDATION_SHARE / FORWARD_SHARE)))
    if request.width is not None:
        reason = f"width {width:g} as asked: {expected} iterations expected"
    elif expected < BUDGET_TARGET_ITERATIONS:
        reason = f"width {width:g}, the narrowest: {expected} iterations expected (under {BUDGET_TARGET_ITERATIONS})"
    else:
        reason = f"width {width:g}, the widest reaching {BUDGET_TARGET_ITERATIONS} iterations: {expected} expected"
    return Recipe(RECIPE_VERSION, "budget", reason + squeezed, width, scaled_features(config.features_per_stage, width),
                  batch, _pick(request.initial_lr, BUDGET_LR), _pick(request.warmup, BUDGET_WARMUP),
                  _pick(request.augmentation, "light"), per_epoch, val, expected,
                  _pick(request.optimizer, BUDGET_OPTIMIZER), patch_size=list(patch))


def _fit_memory(request: RecipeRequest, config: Configuration, width: float,
                memory: MemoryModel) -> tuple[int, list[int], str]:
    """Batch and patch for the narrowest network within the memory limit: BUDGET_BATCH, then 1 (unless
    the user set the batch), then ever smaller patches. Refuses when even the smallest patch does not fit."""
    batch = _pick(request.batch_size, min(config.batch_size, BUDGET_BATCH))
    patch = list(config.patch_size)
    if memory.fits(width, batch, patch):
        return batch, patch, ""
    if request.batch_size is None and batch > 1:
        batch = 1
        if memory.fits(width, batch, patch):
            return batch, patch, "; batch 1 to fit in memory"
    while not memory.fits(width, batch, patch):
        smaller = smaller_patch(patch, config)
        if smaller is None:
            need = memory.peak(width, batch, patch, retained=False)
            raise AutosegError(f"training {config.name} needs about {_gb(need)} even at width {width:g}, batch "
                               f"{batch}, patch {'x'.join(map(str, patch))}; {_gb(memory.limit)} is available to it: "
                               f"free memory and start again")
        patch = smaller
    return batch, patch, f"; batch {batch}, patch {'x'.join(map(str, patch))} to fit in memory"


MIN_BOTTLENECK = 4  # voxels per axis at the lowest resolution, the planner's own floor (instance norm needs > 1)


def smaller_patch(patch: list[int], config: Configuration) -> list[int] | None:
    """The patch one bottleneck voxel shorter along its longest axis that can shrink (by the network's total
    stride on that axis, as the plan's rules require, keeping MIN_BOTTLENECK voxels there); None when no
    axis can."""
    strides = [1] * len(patch)
    for stage in config.pool_strides:
        strides = [s * k for s, k in zip(strides, stage)]
    for axis in sorted(range(len(patch)), key=lambda a: -patch[a]):
        if patch[axis] - strides[axis] >= MIN_BOTTLENECK * strides[axis]:
            return [size - strides[axis] if a == axis else size for a, size in enumerate(patch)]
    return None


def save_recipe(recipe: Recipe, path) -> None:
    write_json_atomic(path, recipe)


def load_recipe(path) -> Recipe:
    return load_versioned(Recipe, path, RECIPE_VERSION, "start the run again in a new folder")
