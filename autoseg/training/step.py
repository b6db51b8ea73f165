"""One optimisation step, shared by the training loop and the step-time probe that sizes the recipe."""
from __future__ import annotations

import time

import torch

from autoseg.model.network import build_network
from autoseg.planning.plan_types import Configuration
from autoseg.training.loss import deep_supervision_loss, deep_supervision_weights


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(network: torch.nn.Module, lr: float, momentum: float, weight_decay: float, kind: str = "sgd"):
    """nnU-Net's SGD (Nesterov momentum), or AdamW (betas (momentum, 0.999)): adaptive steps move a freshly
    initialised network further in its first few hundred iterations, where short budgets end."""
    if kind == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=lr, betas=(min(momentum, 0.9), 0.999),
                                 weight_decay=weight_decay)
    return torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)


def train_step(model, optimizer, scaler, batch, device, weights, batch_dice: bool, grad_clip: float,
               amp_dtype) -> float:
    data = batch["data"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(data)
    loss = deep_supervision_loss(outputs, target, weights, batch_dice)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


# A step slower than this is timed once after the warm-up; faster ones are averaged over PROBE_STEPS.
PROBE_SLOW_S = 1.0
PROBE_STEPS = 3


def time_training_step(config: Configuration, in_channels: int, num_classes: int, device: torch.device,
                       amp_dtype) -> float:
    """Seconds per training step of this configuration (its features and batch size) on random data, after
    one untimed warm-up step (first-touch allocations, kernel selection). Seeds nothing global: the run's
    own random streams are untouched."""
    generator = torch.Generator().manual_seed(0)
    network = build_network(config, in_channels, num_classes, deep_supervision=True).to(device)
    optimizer = make_optimizer(network, 1e-3, 0.99, 3e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    shape = (config.batch_size, *config.patch_size)
    batch = {"data": torch.randn(shape[:1] + (in_channels,) + shape[1:], generator=generator),
             "target": torch.randint(0, num_classes, shape, generator=generator)}
    weights = deep_supervision_weights(config.num_stages - 1)
    network.train()

    def step() -> float:
        start = time.perf_counter()
        train_step(network, optimizer, scaler, batch, device, weights, config.batch_dice, 12.0, amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warm = step()
    repeats = 1 if warm > PROBE_SLOW_S else PROBE_STEPS
    return sum(step() for _ in range(repeats)) / repeats
