"""One optimisation step, shared by the training loop and the step-time probe that sizes the recipe."""
from __future__ import annotations

import dataclasses
import time

import torch

from autoseg import resident_memory
from autoseg.allocator import release_freed_memory
from autoseg.model.network import build_network, supervision_weights
from autoseg.planning.plan_types import Configuration
from autoseg.training.loss import Objective


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(network: torch.nn.Module, lr: float, momentum: float, weight_decay: float, kind: str = "sgd"):
    """nnU-Net's SGD (Nesterov momentum), or AdamW (betas (momentum, 0.999)): adaptive steps move a freshly
    initialised network further in its first few hundred iterations, where short budgets end."""
    if kind == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=lr, betas=(min(momentum, 0.9), 0.999),
                                 weight_decay=weight_decay)
    return torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)


def train_step(model, optimizer, scaler, batch, device, objective: Objective, grad_clip: float, amp_dtype) -> float:
    data = batch["data"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(data)
    loss = objective(outputs, target)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


# A step slower than this is timed once after the warm-up; faster ones are averaged over PROBE_STEPS.
PROBE_SLOW_S = 1.0
PROBE_STEPS = 3
# A warm-up step slower than this is the measurement (a slight overestimate): on a large-patch plan each
# CPU step costs seconds to minutes of the budget.
PROBE_ONCE_S = 10.0


@dataclasses.dataclass
class StepProbe:
    seconds: float  # per training step, after the warm-up step
    peak_bytes: int | None  # resident memory the step added to the process at its peak (None: not measurable)


def _random_batch(config: Configuration, in_channels: int, num_classes: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, *config.patch_size)
    return {"data": torch.randn(shape[:1] + (in_channels,) + shape[1:], generator=generator).to(device),
            "target": torch.randint(0, num_classes, shape, generator=generator).to(device)}


def time_training_step(config: Configuration, in_channels: int, num_classes: int, device: torch.device,
                       amp_dtype) -> StepProbe:
    """Seconds per training step of this configuration (its features and batch size) on random data, after
    one untimed warm-up step (first-touch allocations, kernel selection) unless that step took over
    PROBE_ONCE_S, and the memory the step took.
    Seeds nothing global: the run's own random streams are untouched."""
    release_freed_memory()  # what an earlier probe left in the heap would hide this one's needs
    baseline = resident_memory.resident_bytes()
    measurable = device.type == "cpu" and baseline is not None and resident_memory.reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    network = build_network(config, in_channels, num_classes, deep_supervision=True).to(device)
    optimizer = make_optimizer(network, 1e-3, 0.99, 3e-5, "adamw")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    batch = _random_batch(config, in_channels, num_classes, device)
    objective = Objective(tuple(supervision_weights(config)), config.batch_dice)
    network.train()

    def step() -> float:
        start = time.perf_counter()
        train_step(network, optimizer, scaler, batch, device, objective, 12.0, amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warm = step()
    if warm > PROBE_ONCE_S:  # first-touch costs are small beside such a step: its time is close enough
        seconds = warm
    else:
        repeats = 1 if warm > PROBE_SLOW_S else PROBE_STEPS
        seconds = sum(step() for _ in range(repeats)) / repeats
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline
    elif measurable:
        peak = resident_memory.peak_resident_bytes() - baseline
    del network, optimizer, batch
    release_freed_memory()
    return StepProbe(seconds, peak)


def estimate_step_memory(config: Configuration, in_channels: int, num_classes: int) -> int:
    """Bytes a training step keeps alive at its peak, counted without computing anything: the network runs
    on PyTorch's meta device (shapes only), adding up the tensors autograd saves for the backward pass,
    plus weights, gradients and two optimiser moments. Real peaks run above this by a factor the recipe
    calibrates with one measured step (autoseg.training.recipe.MEMORY_OVERHEAD)."""
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.device("meta"):
        network = build_network(config, in_channels, num_classes, deep_supervision=True)
        shape = (config.batch_size, in_channels, *config.patch_size)
        data = torch.empty(shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = network(data)
    parameters = sum(p.numel() * p.element_size() for p in network.parameters())
    del outputs
    return sum(saved.values()) + 4 * parameters
