"""`autoseg train`: one fold of one configuration, from preprocessed cases to a model folder.

OUTPUT_DIR/models/<configuration>/fold_<k>/ holds plan.json (what the model was trained on),
options.json, metrics.jsonl, training.log, progress.png, checkpoint_{latest,best,final}.pt and,
at the end, validation/ with the fold's validation cases predicted in their original geometry.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from autoseg.allocator import retain_freed_memory
from autoseg.errors import AutosegError
from autoseg.fingerprint import load_fingerprint
from autoseg.jsonio import from_dict, json_safe, to_dict, write_json_atomic
from autoseg.output_location import check_output_dir
from autoseg.planning.plan_types import Plan, load_plan, save_plan
from autoseg.preprocessing.run import preprocessed_folder
from autoseg.training import distributed
from autoseg.training.augmentation import augmentation_settings
from autoseg.training.batches import TRAIN_STREAM, VALIDATION_STREAM, IndexedBatches, batch_iterator
from autoseg.training.cascade import NEXT_STAGE_DIR, cascade_input_channels, previous_stage_predictions
from autoseg.model.checkpoint import BEST, FINAL, LATEST
from autoseg.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from autoseg.training.loss import deep_supervision_loss, deep_supervision_weights, dice_ce_loss
from autoseg.model.network import build_network
from autoseg.training.options import TrainOptions
from autoseg.model.precision import autocast_dtype
from autoseg.training.progress import append_metrics, log, plot_progress, read_metrics, rewrite_metrics
from autoseg.training.schedule import poly_lr
from autoseg.training.splits import fold_cases, load_or_create_splits
from autoseg.training.validation import SUMMARY, validate_fold

EMA_DECAY = 0.9
CHECKPOINT_EVERY_S = 60.0  # latest checkpoint after an epoch, but not more often than this


@dataclass
class TrainResult:
    model_dir: Path
    epochs: int
    iterations: int
    train_seconds: float
    validation: dict | None


def model_folder(output_dir, configuration: str, fold) -> Path:
    return Path(output_dir) / "models" / configuration / f"fold_{fold}"


def _preprocessed_cases(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise AutosegError(f"{folder}: no preprocessed data (run `autoseg preprocess` first)")
    ids = sorted(p.name[:-len(".json")] for p in folder.glob("*.json") if not p.name.startswith("."))
    if not ids:
        raise AutosegError(f"{folder}: no preprocessed cases (run `autoseg preprocess` first)")
    return ids


@dataclass
class _State:
    epoch: int = 0
    iteration: int = 0
    train_seconds: float = 0.0
    ema: float | None = None
    best_ema: float = -1.0


def train(output_dir, fold="0", configuration: str = "3d_fullres", options: TrainOptions | None = None,
          device: str = "auto", workers: int | None = None, resume: bool = False, progress: bool = True,
          validate: bool = True, checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> TrainResult:
    """Train (or continue training) one fold; returns where the model is and how far it got."""
    options = options or TrainOptions()
    output_dir = Path(output_dir)
    check_output_dir(output_dir, what="training folder")
    plan = load_plan(output_dir / "plan.json")
    if configuration not in plan.configurations:
        raise AutosegError(f"{output_dir / 'plan.json'}: no configuration {configuration} "
                           f"(planned: {', '.join(plan.configurations)})")
    ranks, dev = distributed.start(device)
    if dev.type == "cpu":
        retain_freed_memory()
    try:
        return _train(output_dir, plan, str(fold), configuration, options, ranks, dev, workers, resume, progress,
                      validate, checkpoint_every_s)
    finally:
        distributed.stop(ranks)


def _train(output_dir: Path, plan: Plan, fold: str, configuration: str, options: TrainOptions,
           ranks: distributed.Ranks, device: torch.device, workers, resume: bool, progress: bool,
           validate: bool, checkpoint_every_s: float) -> TrainResult:
    config = plan.configurations[configuration]
    data_folder = preprocessed_folder(output_dir, plan, configuration)
    case_ids = _preprocessed_cases(data_folder)
    if ranks.is_main:
        load_or_create_splits(output_dir, case_ids)
    distributed.barrier(ranks)
    train_ids, val_ids = fold_cases(load_or_create_splits(output_dir, case_ids), fold, case_ids)
    model_dir = model_folder(output_dir, configuration, fold)
    say = (lambda message: log(model_dir, message, echo=progress)) if ranks.is_main else (lambda message: None)

    final_path, latest_path = model_dir / FINAL, model_dir / LATEST
    checkpoint_path = latest_path if latest_path.is_file() else None
    if checkpoint_path is None and final_path.is_file():
        checkpoint_path = final_path
    if resume and checkpoint_path is None:
        raise AutosegError(f"{model_dir}: nothing to resume (no {LATEST} or {FINAL})")

    previous = None
    if config.previous_stage:
        previous = previous_stage_predictions(output_dir, plan, configuration, case_ids)
    in_channels, num_classes = cascade_input_channels(plan, configuration), len(plan.labels)
    torch.manual_seed(options.seed)
    network = build_network(config, in_channels, num_classes, deep_supervision=True).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=options.initial_lr, momentum=options.momentum,
                                weight_decay=options.weight_decay, nesterov=True)
    amp_dtype = autocast_dtype(options.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    state = _State()
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        saved = from_dict(TrainOptions, checkpoint["options"])
        changed = saved.differences(options)
        if changed:
            raise AutosegError(f"{checkpoint_path}: this run was started with other options ({'; '.join(changed)}); "
                               f"rerun with the same options, or train into another folder")
        network.load_state_dict(checkpoint["network"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["grad_scaler"])
        state = _State(**checkpoint["state"])
        restore_rng_states(checkpoint["rng"])
        metrics = read_metrics(model_dir)[:state.epoch]
        if ranks.is_main:
            rewrite_metrics(model_dir, metrics)
        say(f"resuming {configuration} fold {fold} from {checkpoint_path.name} at epoch {state.epoch}, "
            f"iteration {state.iteration}")
    else:
        metrics = []
        if ranks.is_main:
            model_dir.mkdir(parents=True, exist_ok=True)
            rewrite_metrics(model_dir, [])
            save_plan(plan, model_dir / "plan.json")
            write_json_atomic(model_dir / "options.json", options)
        say(f"training {configuration} fold {fold}: {len(train_ids)} training / {len(val_ids)} validation cases, "
            f"patch {config.patch_size}, batch {options.batch_size or config.batch_size}, device {device}, "
            f"{'float32' if amp_dtype is None else str(amp_dtype).replace('torch.', '') + ' mixed precision'}"
            + (f", {ranks.world_size} processes" if ranks.active else ""))
    distributed.barrier(ranks)

    def checkpoint_state() -> dict:
        return {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict(), "state": dataclasses.asdict(state), "rng": rng_states(),
                "options": to_dict(options), "configuration": configuration, "fold": fold,
                "in_channels": in_channels, "num_classes": num_classes}

    done = _finished(state, options)
    if not done:
        _run_epochs(network, optimizer, scaler, state, metrics, options, plan, configuration, data_folder,
                    train_ids, val_ids or train_ids, previous, model_dir, ranks, device, workers, progress, amp_dtype,
                    checkpoint_every_s, checkpoint_state, say)
        if ranks.is_main:
            save_checkpoint(final_path, checkpoint_state())
            latest_path.unlink(missing_ok=True)
        say(f"finished after {state.epoch} epochs, {state.iteration} iterations, "
            f"{state.train_seconds / 60:.1f} min of training")
    summary = None
    summary_path = model_dir / "validation" / SUMMARY
    if validate and val_ids and ranks.is_main:
        if done and summary_path.is_file():
            say(f"already trained and validated: {summary_path}")
        else:
            dataset_dir = Path(load_fingerprint(output_dir / plan.fingerprint_file).dataset_dir)
            start = time.time()
            next_stage = None
            if config.next_stage and config.next_stage in plan.configurations:
                next_stage = (preprocessed_folder(output_dir, plan, config.next_stage), model_dir / NEXT_STAGE_DIR)
            summary = validate_fold(network, plan, configuration, data_folder, dataset_dir, val_ids,
                                    model_dir / "validation", device, amp_dtype, progress=progress,
                                    previous=previous, next_stage=next_stage)
            say(f"validation: mean foreground Dice {summary['foreground_mean_dice']:.4f} over "
                f"{summary['num_cases']} cases ({time.time() - start:.0f} s) -> {summary_path}")
    distributed.barrier(ranks)
    return TrainResult(model_dir, state.epoch, state.iteration, state.train_seconds, summary)


def _finished(state: _State, options: TrainOptions) -> bool:
    if options.time_budget_s is not None:
        return state.train_seconds >= options.time_budget_s
    return state.epoch >= options.epochs


def _progress_fraction(state: _State, options: TrainOptions) -> float:
    if options.time_budget_s is not None:
        return state.train_seconds / options.time_budget_s
    return state.iteration / (options.epochs * options.iterations_per_epoch)


def _run_epochs(network, optimizer, scaler, state: _State, metrics: list[dict], options: TrainOptions, plan: Plan,
                configuration: str, data_folder: Path, train_ids, val_ids, previous, model_dir: Path, ranks, device,
                workers, progress: bool, amp_dtype, checkpoint_every_s: float, checkpoint_state, say) -> None:
    from tqdm import tqdm

    config = plan.configurations[configuration]
    batch_size = distributed.rank_batch_size(options.batch_size or config.batch_size, ranks)
    settings = augmentation_settings(config.patch_size, config.elastic_deformation)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # on a CPU device the model needs the cores; one worker keeps up with a CPU-speed step
        workers = 1 if device.type == "cpu" else max(1, min(12, cpus // ranks.world_size - 1))
    train_batches = batch_iterator(
        IndexedBatches(data_folder, train_ids, settings, batch_size, options.seed, TRAIN_STREAM, ranks.rank, True,
                       previous, len(plan.labels)),
        state.iteration, workers, device.type == "cuda")
    val_iterations = options.val_iterations
    val_batches = batch_iterator(
        IndexedBatches(data_folder, val_ids, settings, batch_size, options.seed, VALIDATION_STREAM, ranks.rank,
                       False, previous, len(plan.labels)), state.epoch * val_iterations, 0, False)
    weights = deep_supervision_weights(config.num_stages - 1)
    model = DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None) \
        if ranks.active else network
    last_save = time.monotonic()
    while not _finished(state, options):
        epoch_start = time.monotonic()
        seconds_before = state.train_seconds
        network.train()
        losses = []
        bar = tqdm(range(options.iterations_per_epoch), desc=f"epoch {state.epoch + 1}", leave=False,
                   disable=not (progress and ranks.is_main), dynamic_ncols=True)
        for _ in bar:
            lr = poly_lr(options.initial_lr, _progress_fraction(state, options), options.poly_exponent,
                         options.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(train_batches)
            losses.append(_train_step(model, optimizer, scaler, batch, device, weights, config.batch_dice,
                                      options.grad_clip, amp_dtype))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
            state.iteration += 1
            state.train_seconds = distributed.broadcast_float(seconds_before + time.monotonic() - epoch_start, ranks)
            if options.time_budget_s is not None and state.train_seconds >= options.time_budget_s:
                break
        iterations_time = time.monotonic() - epoch_start
        val_loss, dice = _validation_pass(network, val_batches, val_iterations, device, len(plan.labels),
                                          config.batch_dice, amp_dtype, ranks)
        state.train_seconds = distributed.broadcast_float(seconds_before + time.monotonic() - epoch_start, ranks)
        state.epoch += 1
        mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else None
        if mean_dice is not None:
            state.ema = mean_dice if state.ema is None else EMA_DECAY * state.ema + (1 - EMA_DECAY) * mean_dice
        train_loss = float(distributed.all_sum(torch.tensor([np.mean(losses)]), ranks).item() / ranks.world_size)
        line = {"epoch": state.epoch, "iterations": len(losses), "train_loss": train_loss, "val_loss": val_loss,
                "pseudo_dice": {name: json_safe(float(dice[value - 1])) for name, value in plan.labels.items()
                                if value > 0},
                "mean_pseudo_dice": mean_dice, "ema_pseudo_dice": state.ema, "lr": lr,
                "iterations_time_s": iterations_time, "epoch_time_s": time.monotonic() - epoch_start,
                "train_seconds": state.train_seconds}
        metrics.append(line)
        if not ranks.is_main:
            continue
        append_metrics(model_dir, line)
        plot_progress(model_dir, metrics)
        say(f"epoch {state.epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, pseudo-Dice "
            f"{_fmt(mean_dice)} (moving average {_fmt(state.ema)}), lr {lr:.2e}, {line['epoch_time_s']:.1f} s")
        if state.ema is not None and state.ema > state.best_ema:
            state.best_ema = state.ema
            save_checkpoint(model_dir / BEST, checkpoint_state())
        if time.monotonic() - last_save >= checkpoint_every_s or _finished(state, options):
            save_checkpoint(model_dir / LATEST, checkpoint_state())
            last_save = time.monotonic()


def _train_step(model, optimizer, scaler, batch, device, weights, batch_dice: bool, grad_clip: float,
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


@torch.inference_mode()
def _validation_pass(network, batches, iterations: int, device, num_classes: int, batch_dice: bool,
                     amp_dtype, ranks) -> tuple[float, np.ndarray]:
    """Loss and pseudo-Dice per foreground class over `iterations` unaugmented validation patches
    (true/false positives and false negatives summed over all of them, and over ranks)."""
    network.eval()
    counts = torch.zeros(3, num_classes - 1, dtype=torch.float64)
    loss_sum = 0.0
    for _ in range(iterations):
        batch = next(batches)
        data, target = batch["data"].to(device), batch["target"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = network(data)
        loss_sum += float(dice_ce_loss(logits, target, batch_dice))
        prediction = logits.argmax(1)
        valid = target >= 0
        for c in range(1, num_classes):
            p, r = (prediction == c) & valid, target == c
            counts[0, c - 1] += (p & r).sum().item()
            counts[1, c - 1] += (p & ~r).sum().item()
            counts[2, c - 1] += (~p & r).sum().item()
    counts = distributed.all_sum(counts, ranks)
    loss = float(distributed.all_sum(torch.tensor([loss_sum / iterations]), ranks).item() / ranks.world_size)
    tp, fp, fn = counts.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return loss, dice


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

