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

from autoseg import resident_memory
from autoseg.allocator import retain_freed_memory
from autoseg.errors import AutosegError
from autoseg.fingerprint import load_fingerprint
from autoseg.jsonio import from_dict, json_safe, to_dict, write_json_atomic
from autoseg.output_location import check_output_dir
from autoseg.planning.plan_types import Configuration, Plan, load_plan, save_plan
from autoseg.preprocessing.run import preprocessed_folder
from autoseg.training import distributed
from autoseg.training.augmentation import augmentation_settings
from autoseg.model.cascade import cascade_classes
from autoseg.training.batches import TRAIN_STREAM, VALIDATION_STREAM, CaseSource, IndexedBatches, batch_iterator
from autoseg.training.cascade import NEXT_STAGE_DIR, cascade_input_channels, previous_stage_predictions
from autoseg.model.checkpoint import BEST, FINAL, LATEST
from autoseg.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from autoseg.training.budget import BudgetClock
from autoseg.training.epoch_validation import validation_pass
from autoseg.training.loss import Objective
from autoseg.model.device import machine_description
from autoseg.model.network import build_network, supervision_weights
from autoseg.training.options import TrainOptions
from autoseg.model.precision import autocast_dtype
from autoseg.model.weight_transfer import source_weights, transfer_weights
from autoseg.training.progress import append_metrics, log, plot_progress, read_metrics, rewrite_metrics
from autoseg.training.recipe import (FORWARD_SHARE, MEMORY_SHARE, RECIPE_FILE, MemoryModel, Recipe, RecipeRequest,
                                     choose_recipe, load_recipe, save_recipe, scaled_features)
from autoseg.training.schedule import poly_lr
from autoseg.training.step import estimate_step_memory, make_optimizer, time_training_step, train_step
from autoseg.training.splits import fold_cases, load_or_create_splits
from autoseg.training.tracking import make_tracker
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
    # training time as the budget counts it (autoseg.training.budget), the recipe's step-time probe included
    train_seconds: float = 0.0
    probe_seconds: float = 0.0  # the learning-rate schedule spans the budget after the probe
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
    in_channels, num_classes = cascade_input_channels(plan, configuration), plan.label_scheme.output_channels
    amp_dtype = autocast_dtype(options.precision, device)
    state = _State()
    probe_start = time.monotonic()
    if checkpoint_path is not None:
        recipe = _saved_recipe(model_dir, checkpoint_path)
    elif ranks.is_main:
        recipe = _decide_recipe(options, config, in_channels, num_classes, device, amp_dtype)
        recipe.probe_seconds = round(time.monotonic() - probe_start, 3)
        model_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, model_dir / RECIPE_FILE)
    distributed.barrier(ranks)
    if checkpoint_path is None and not ranks.is_main:
        recipe = load_recipe(model_dir / RECIPE_FILE)  # rank 0 decided and saved it
    state.train_seconds = state.probe_seconds = time.monotonic() - probe_start if checkpoint_path is None else 0.0
    if device.type == "cpu":
        retain_freed_memory(recipe.retain_freed_memory)
    plan = _plan_with_recipe(plan, configuration, recipe)
    config = plan.configurations[configuration]
    torch.manual_seed(options.seed)
    network = build_network(config, in_channels, num_classes, deep_supervision=True).to(device)
    optimizer = make_optimizer(network, recipe.initial_lr, options.momentum, options.weight_decay, recipe.optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        saved = from_dict(TrainOptions, checkpoint["options"])
        grows, refused = saved.continuation(options)
        if refused:
            raise AutosegError(f"{checkpoint_path}: this run was started with other options ({'; '.join(refused)}); "
                               f"only --epochs or --time-budget may grow when a run continues: rerun with the same "
                               f"options, or train into another folder")
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
        if grows:
            if ranks.is_main:
                write_json_atomic(model_dir / "options.json", options)
            say(f"training longer ({'; '.join(grows)}): the learning rate follows the longer schedule from "
                f"here, as if the run had been planned this long (docs/training.md)")
    else:
        metrics = []
        if options.init_from is not None:
            transfer = transfer_weights(source_weights(options.init_from, configuration), network, options.init_from)
            say(f"initialised from another model: {transfer.describe()}")
        if ranks.is_main:
            model_dir.mkdir(parents=True, exist_ok=True)
            rewrite_metrics(model_dir, [])
            save_plan(plan, model_dir / "plan.json")
            write_json_atomic(model_dir / "options.json", options)
        say(f"training {configuration} fold {fold}: {len(train_ids)} training / {len(val_ids)} validation cases, "
            f"patch {config.patch_size}, batch {config.batch_size}, features {config.features_per_stage}, "
            f"device {device}, "
            f"{'float32' if amp_dtype is None else str(amp_dtype).replace('torch.', '') + ' mixed precision'}"
            + (f", {ranks.world_size} processes" if ranks.active else ""))
        say(f"recipe {recipe.name}: {recipe.reason} (lr {recipe.initial_lr:g}, warm-up {recipe.warmup:g}, "
            f"{recipe.augmentation} augmentation, {recipe.iterations_per_epoch} iterations per epoch"
            + ("" if recipe.expected_peak_mb is None else
               f"; step peak ~{recipe.expected_peak_mb / 1024:.1f} of {recipe.memory_limit_mb / 1024:.1f} GB, freed "
               f"memory {'kept' if recipe.retain_freed_memory else 'returned'}")
            + f"; {state.train_seconds:.1f} s to decide) -> {model_dir / RECIPE_FILE}")
    distributed.barrier(ranks)

    def checkpoint_state() -> dict:
        return {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict(), "state": dataclasses.asdict(state), "rng": rng_states(),
                "options": to_dict(options), "configuration": configuration, "fold": fold,
                "in_channels": in_channels, "num_classes": num_classes}

    # a new run trains at least one epoch, even when deciding its recipe used up a tiny budget: it must end
    # with a model
    done = checkpoint_path is not None and _finished(state, options)
    if not done:
        _run_epochs(network, optimizer, scaler, state, metrics, options, recipe, plan, configuration, data_folder,
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


def _saved_recipe(model_dir: Path, checkpoint_path: Path) -> Recipe:
    path = model_dir / RECIPE_FILE
    if not path.is_file():
        raise AutosegError(f"{path}: missing beside {checkpoint_path.name} (the run's recipe); train into a new folder")
    return load_recipe(path)


def _decide_recipe(options: TrainOptions, config, in_channels: int, num_classes: int, device, amp_dtype) -> Recipe:
    """The recipe of a new run: a saved recipe.json when --recipe names one, else chosen by the rule, timing
    steps of candidate widths here (autoseg.training.step.time_training_step)."""
    machine = machine_description(device, amp_dtype)
    if options.recipe.endswith(".json"):
        recipe = load_recipe(options.recipe)
        recipe.reason = f"reused from {options.recipe}: {recipe.reason}"
        return recipe
    # weights loaded from another model fit only the plan's own widths (plan with --plan-from to get the source's)
    width = 1.0 if options.width is None and options.init_from is not None else options.width
    request = RecipeRequest(options.recipe, options.time_budget_s, width, options.batch_size,
                            options.initial_lr, options.warmup, options.augmentation, options.iterations_per_epoch,
                            options.validation_iterations, options.optimizer)

    def candidate(width: float, batch: int, patch: list[int]) -> Configuration:
        return dataclasses.replace(config, features_per_stage=scaled_features(config.features_per_stage, width),
                                   batch_size=batch, patch_size=list(patch))

    memory = MemoryModel()
    room = (resident_memory.available_bytes() if options.memory_limit_gb is None
            else options.memory_limit_gb * 2 ** 30)
    if device.type == "cpu" and room is not None:
        memory = MemoryModel(int(room * MEMORY_SHARE),
                             lambda w, b, p: estimate_step_memory(candidate(w, b, p), in_channels, num_classes))

    def step_time(width: float, batch: int, patch: list[int]) -> tuple[float, int | None]:
        if not memory.retains(width, batch, patch):
            retain_freed_memory(False)  # for the rest of the run: the recipe will not retain either
        probe = time_training_step(candidate(width, batch, patch), in_channels, num_classes, device, amp_dtype)
        return probe.seconds, probe.peak_bytes

    return choose_recipe(request, config, step_time, machine, memory)


def _plan_with_recipe(plan: Plan, configuration: str, recipe: Recipe) -> Plan:
    configs = dict(plan.configurations)
    configs[configuration] = recipe.configuration(configs[configuration])
    return dataclasses.replace(plan, configurations=configs)


def _finished(state: _State, options: TrainOptions) -> bool:
    if options.time_budget_s is not None:
        return state.train_seconds >= options.time_budget_s
    return state.epoch >= options.epochs


def _progress_fraction(state: _State, options: TrainOptions, recipe: Recipe) -> float:
    if options.time_budget_s is not None:
        span = options.time_budget_s - state.probe_seconds
        return (state.train_seconds - state.probe_seconds) / span if span > 0 else 1.0
    return state.iteration / (options.epochs * recipe.iterations_per_epoch)


def _run_epochs(network, optimizer, scaler, state: _State, metrics: list[dict], options: TrainOptions,
                recipe: Recipe, plan: Plan, configuration: str, data_folder: Path, train_ids, val_ids, previous,
                model_dir: Path, ranks, device, workers, progress: bool, amp_dtype, checkpoint_every_s: float,
                checkpoint_state, say) -> None:
    from tqdm import tqdm

    config = plan.configurations[configuration]
    batch_size = distributed.rank_batch_size(config.batch_size, ranks)
    settings = augmentation_settings(config.patch_size, config.elastic_deformation, recipe.augmentation)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # on a CPU device the model needs the cores; one worker keeps up with a CPU-speed step
        workers = 1 if device.type == "cpu" else max(1, min(12, cpus // ranks.world_size - 1))
    scheme = plan.label_scheme
    sources = [CaseSource(data_folder, tuple(ids), previous, cascade_classes(plan),
                          tuple(t.values for t in scheme.targets), scheme.ignore_label) for ids in (train_ids, val_ids)]
    train_batches = batch_iterator(
        IndexedBatches(sources[0], settings, batch_size, options.seed, TRAIN_STREAM, ranks.rank, True),
        state.iteration, workers, device.type == "cuda")
    val_iterations = recipe.val_iterations
    val_batches = batch_iterator(
        IndexedBatches(sources[1], settings, batch_size, options.seed, VALIDATION_STREAM, ranks.rank, False),
        state.epoch * val_iterations, 0, False)
    objective = Objective(tuple(supervision_weights(config)), config.batch_dice,
                          tuple(t.values for t in scheme.targets) if scheme.uses_regions else (),
                          tuple(scheme.output_values) if scheme.uses_regions else ())
    model = DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None) \
        if ranks.active else network
    clock = BudgetClock(options.time_budget_s, state.train_seconds)
    last_save = time.monotonic()
    tail_s = None  # what the last epoch's validation patches and bookkeeping took
    tracker = make_tracker(options.tensorboard, model_dir, ranks.is_main)  # flushed every epoch
    first_epoch = True  # always run one: a new run whose recipe decision used up the budget still needs a model
    while first_epoch or not _finished(state, options):
        first_epoch = False
        epoch_start = time.monotonic()
        network.train()
        losses = []
        bar = tqdm(range(recipe.iterations_per_epoch), desc=f"epoch {state.epoch + 1}", leave=False,
                   disable=not (progress and ranks.is_main), dynamic_ncols=True)
        for _ in bar:
            lr = poly_lr(recipe.initial_lr, _progress_fraction(state, options, recipe), options.poly_exponent,
                         recipe.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(train_batches)
            losses.append(train_step(model, optimizer, scaler, batch, device, objective, options.grad_clip,
                                     amp_dtype))
            state.iteration += 1
            state.train_seconds = distributed.broadcast_float(clock.seconds, ranks)
            step_s = (time.monotonic() - epoch_start) / len(losses)
            tail = tail_s if tail_s is not None else val_iterations * step_s * FORWARD_SHARE
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}",
                            **({} if clock.remaining is None else {"left": _minutes(clock.remaining)}))
            if distributed.broadcast_float(float(clock.must_stop(step_s, tail)), ranks):
                break
        iterations_time = time.monotonic() - epoch_start
        tail_start = time.monotonic()
        val_loss, dice, example = validation_pass(network, val_batches, val_iterations, device, objective,
                                                  amp_dtype, ranks)
        state.epoch += 1
        mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else None
        if mean_dice is not None:
            state.ema = mean_dice if state.ema is None else EMA_DECAY * state.ema + (1 - EMA_DECAY) * mean_dice
        train_loss = float(distributed.all_sum(torch.tensor([np.mean(losses)]), ranks).item() / ranks.world_size)
        step_s = iterations_time / len(losses)
        # the budget cannot take another step and an epoch's tail (this epoch's validation, just measured, is
        # the estimate: in a first epoch of slow steps there is no earlier one): the run ends with this epoch
        next_tail = max(tail_s or 0.0, time.monotonic() - tail_start)
        last = clock.budget_s is not None and clock.must_stop(step_s, next_tail)
        state.train_seconds = distributed.broadcast_float(
            max(clock.seconds, clock.budget_s) if last else clock.seconds, ranks)
        line = {"epoch": state.epoch, "iterations": len(losses), "train_loss": train_loss, "val_loss": val_loss,
                "pseudo_dice": {t.name: json_safe(float(d)) for t, d in zip(scheme.targets, dice)},
                "mean_pseudo_dice": mean_dice, "ema_pseudo_dice": state.ema, "lr": lr,
                "iterations_time_s": iterations_time, "epoch_time_s": time.monotonic() - epoch_start,
                "train_seconds": clock.seconds}
        metrics.append(line)
        if ranks.is_main:
            append_metrics(model_dir, line)
            plot_progress(model_dir, metrics)
            tracker.log_epoch(line, example)
            say(f"epoch {state.epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, pseudo-Dice "
                f"{_fmt(mean_dice)} (moving average {_fmt(state.ema)}), lr {lr:.2e}, {line['epoch_time_s']:.1f} s"
                + ("" if clock.remaining is None else f", {_minutes(clock.remaining)} of the budget left"))
            if state.ema is not None and state.ema > state.best_ema:
                state.best_ema = state.ema
                save_checkpoint(model_dir / BEST, checkpoint_state())
            if time.monotonic() - last_save >= checkpoint_every_s or _finished(state, options):
                save_checkpoint(model_dir / LATEST, checkpoint_state())
                last_save = time.monotonic()
        tail_s = distributed.broadcast_float(time.monotonic() - tail_start, ranks)
    tracker.close()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

