"""Trained models as prediction needs them: a configuration's finished folds, loaded once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.fingerprint import load_fingerprint
from autoseg.jsonio import from_dict, to_dict
from autoseg.planning.plan_types import Plan, check_configuration_name, is_configuration_name, load_plan
from autoseg.postprocessing import Postprocessing, load_postprocessing
from autoseg.model.checkpoint import FINAL, LATEST, read_fold_weights
from autoseg.model.network import build_network
from autoseg.model.input_checks import TrainingSummary, training_summary
from autoseg.model.prediction import Member

INFERENCE_FILE = "inference.json"  # written by find-best: the configuration(s) to use by default


@dataclass
class TrainedModel(Member):
    """A configuration's networks (one per fold), ready to predict; previous_stage is the cascade's
    low-resolution model."""

    folds: list[str] = field(default_factory=list)
    in_channels: int = 0
    postprocessing: Postprocessing | None = None

    @property
    def num_channels(self) -> int:
        """Image channels the user provides (the cascade adds its own)."""
        return len(self.plan.channel_names)


def trained_folds(models_dir: Path, configuration: str) -> list[str]:
    folder = models_dir / configuration
    if not folder.is_dir():
        return []
    folds = [p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / FINAL).is_file()]
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def read_inference_choice(models_dir: Path) -> tuple[list[str], Postprocessing] | None:
    """find-best's choice: (configurations, postprocessing), or None when find-best has not run."""
    path = models_dir / INFERENCE_FILE
    if not path.is_file():
        return None
    try:
        choice = json.loads(path.read_text())
        configurations = [str(c) for c in choice["configurations"]]
        postprocessing = from_dict(Postprocessing, choice["postprocessing"], where=str(path))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise AutosegError(f"{path}: not a valid find-best choice (rerun autoseg find-best)") from None
    if not configurations:
        raise AutosegError(f"{path}: names no configuration (rerun autoseg find-best)")
    unknown = [c for c in configurations if not is_configuration_name(c)]
    if unknown:  # they become folder names under models/: nothing else may pass
        raise AutosegError(f"{path}: unknown configuration {unknown[0]!r} (rerun autoseg find-best)")
    return configurations, postprocessing


def default_configuration(models_dir: Path) -> str:
    """The only trained configuration, else 3d_fullres when trained."""
    trained = sorted(p.name for p in models_dir.iterdir() if p.is_dir() and trained_folds(models_dir, p.name)) \
        if models_dir.is_dir() else []
    if not trained:
        unfinished = sorted(models_dir.glob(f"*/fold_*/{LATEST}")) if models_dir.is_dir() else []
        if unfinished:
            raise AutosegError(f"{unfinished[0].parent}: still training or interrupted (no {FINAL} yet); finish "
                               f"it with autoseg train ... --resume")
        raise AutosegError(f"{models_dir}: no trained model (a models/<configuration>/fold_<k>/{FINAL})")
    if len(trained) == 1:
        return trained[0]
    if "3d_fullres" in trained:
        return "3d_fullres"
    raise AutosegError(f"{models_dir}: several configurations are trained ({', '.join(trained)}); pick one "
                       f"with --config or run autoseg find-best")


def load_trained_model(models_dir: str | Path, configuration: str | None = None, folds=None,
                       device: torch.device = torch.device("cpu")) -> TrainedModel:
    """The configuration's networks for `folds` (default: every fold with a final checkpoint)."""
    models_dir = Path(models_dir)
    if configuration is not None:
        check_configuration_name(configuration, models_dir)
    configuration = configuration or default_configuration(models_dir)
    available = trained_folds(models_dir, configuration)
    if folds is None:
        folds = available
        if not folds:
            raise AutosegError(f"{models_dir / configuration}: no fold has finished training ({FINAL} missing)")
    folds = [str(f) for f in folds]
    for fold in folds:
        if fold not in available:
            folder = models_dir / configuration / f"fold_{fold}"
            why = "still training or interrupted" if (folder / LATEST).is_file() else "not trained"
            raise AutosegError(f"{folder}: fold {fold} has no {FINAL} ({why})")
    plan = None
    networks = []
    in_channels = None
    for fold in folds:
        folder = models_dir / configuration / f"fold_{fold}"
        fold_plan = load_plan(folder / "plan.json")
        if plan is None:
            plan = fold_plan
        elif to_dict(fold_plan) != to_dict(plan):
            raise AutosegError(f"{folder / 'plan.json'}: fold {fold} was trained from another plan than fold "
                               f"{folds[0]}; predict with folds of one plan")
        weights = read_fold_weights(folder / FINAL)
        in_channels = weights.in_channels
        networks.append(network_from_weights(plan, configuration, weights.state_dict, in_channels,
                                             weights.num_classes, device))
    config = plan.configurations[configuration]
    previous = None
    if config.previous_stage:
        previous = load_trained_model(models_dir, config.previous_stage, folds, device)
    return TrainedModel(plan, configuration, networks, previous, folds, in_channels,
                        load_postprocessing(models_dir / configuration))


def network_from_weights(plan: Plan, configuration: str, state_dict: dict, in_channels: int, num_classes: int,
                         device: torch.device) -> torch.nn.Module:
    network = build_network(plan.configurations[configuration], in_channels, num_classes, deep_supervision=True)
    try:
        network.load_state_dict(state_dict)
    except RuntimeError as e:
        raise AutosegError(f"{configuration}: the weights do not fit the plan's network "
                           f"({str(e).splitlines()[0][:200]})") from None
    return network.to(device).eval()


@dataclass
class ModelSet:
    """Everything prediction uses: the model(s) (several: an ensemble averaging probabilities), the
    postprocessing to apply, and where they came from (for reports); the training summary for input
    checks when it is known."""

    models: list[TrainedModel]
    postprocessing: Postprocessing | None
    source: str
    package_sha256: str | None = None
    training_summary: TrainingSummary | None = None

    @property
    def num_channels(self) -> int:
        return self.models[0].num_channels

    @property
    def plan(self) -> Plan:
        return self.models[0].plan


def load_models(models_dir, configuration: str | None = None, folds=None,
                device: torch.device = torch.device("cpu")) -> ModelSet:
    """The model(s) of a training folder's models/ to predict with, and the postprocessing to apply.

    Without a configuration, find-best's choice (models/inference.json: one configuration or an ensemble,
    and its postprocessing) when there is one; else one configuration with its own saved postprocessing.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise AutosegError(f"{models_dir}: no such folder (expected a training folder's models/ or a model package)")
    choice = read_inference_choice(models_dir) if configuration is None else None
    if choice is None:
        model = load_trained_model(models_dir, configuration, folds, device)
        models, postprocessing = [model], model.postprocessing
    else:
        configurations, postprocessing = choice
        models = [load_trained_model(models_dir, c, folds, device) for c in configurations]
    return ModelSet(models, postprocessing, str(models_dir.resolve()), None,
                    _training_summary_beside(models_dir, models[0].plan))


def _training_summary_beside(models_dir: Path, plan: Plan) -> TrainingSummary | None:
    """The input checks' reference from the training folder's fingerprint, when it is still there."""
    path = models_dir.parent / "fingerprint.json"
    if not path.is_file():
        return None
    try:
        return training_summary(load_fingerprint(path), plan)
    except AutosegError:
        return None


def prune(models: list[TrainedModel], depth: int) -> None:
    """Predict with UNet++'s sub-network of this depth (autoseg.model.families.unetpp): fewer nodes, the same
    weights. Every model must be a UNet++ (a cascade's first stage is left whole)."""
    for model in models:
        config = model.plan.configurations[model.configuration]
        if config.architecture != "unetpp":
            raise AutosegError(f"--prune-depth: {model.configuration} is a {config.architecture} network; only "
                               f"UNet++ networks can be pruned")
        if not 1 <= depth <= config.num_stages - 1:
            raise AutosegError(f"--prune-depth {depth}: {model.configuration}'s UNet++ has depths 1 to "
                               f"{config.num_stages - 1}")
        for network in model.networks:
            network.inference_depth = depth
