"""Start a new training run from another model's weights (`autoseg train --init-from SOURCE`).

Every tensor of the new network that the source has with the same name and shape is copied. Two
differences are bridged instead of refused, because they are what fine-tuning on a new dataset usually
changes:
- other classes: the segmentation heads (`heads.*`) keep their fresh initialisation;
- other input channels: the first convolution's weights for channels the source had are copied, and every
  new channel gets the mean of the source's channel weights (a new channel starts as an average of what
  the source saw); with fewer channels, the first ones are kept.
Any other mismatch means another topology (stages, width), and is refused naming the first tensor; planning
the target with `autoseg plan --plan-from` the source model gives it the source's network
(autoseg.planning.transfer).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.planning.plan_types import load_plan
from autoseg.planning.transfer import PlanSource

HEADS = "heads."


@dataclass
class Transfer:
    source: str
    copied: int = 0
    total: int = 0
    new_heads: list[str] = field(default_factory=list)
    adapted_channels: str | None = None  # "1 -> 2 input channels" when the first convolution was adapted

    def describe(self) -> str:
        parts = [f"{self.copied} of {self.total} tensors copied from {self.source}"]
        if self.new_heads:
            parts.append(f"{len(self.new_heads)} segmentation head tensors freshly initialised (other classes)")
        if self.adapted_channels:
            parts.append(f"{self.adapted_channels} (new channels start from the mean of the source's)")
        return "; ".join(parts)


def source_weights(source: str | Path, configuration: str) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint (.pt), a fold folder, a training folder's models/ or a model package (the
    first fold of `configuration`, else of its first model)."""
    from autoseg.model.checkpoint import read_fold_weights

    path = Path(source)
    if path.is_dir() and (path / "checkpoint_final.pt").is_file():
        path = path / "checkpoint_final.pt"
    if path.is_file() and path.suffix == ".pt":
        return read_fold_weights(path).state_dict
    models = _trained_models(path, "checkpoint, model folder or package")
    chosen = next((m for m in models if m.configuration == configuration), models[0])
    return {k: v.float() for k, v in chosen.networks[0].state_dict().items()}


def _trained_models(path: Path, what: str) -> list:
    """The models of a package file or a training folder's models/."""
    if path.is_file():
        from autoseg.model.package import load_package
        return load_package(path).models
    if path.is_dir():
        from autoseg.model.trained import load_models
        return load_models(path, None).models
    raise AutosegError(f"{path}: no such {what}")


def source_plan(source: str | Path) -> PlanSource:
    """The plan `autoseg plan --plan-from SOURCE` keeps: a plan.json (or the output folder holding one) as
    planned, or a trained model's (a fold folder, a training folder's models/, a package) configurations as
    trained, so the network is exactly the one whose weights --init-from loads."""
    path = Path(source)
    if path.is_dir() and (path / "checkpoint_final.pt").is_file() and (path / "plan.json").is_file():
        return PlanSource(load_plan(path / "plan.json"), str(path))  # a fold folder: the plan it trained on
    if path.is_dir() and (path / "plan.json").is_file():
        path = path / "plan.json"
    if path.is_file() and path.suffix == ".json":
        return PlanSource(load_plan(path), str(path))
    members = _trained_models(path, "plan.json, output folder, model folder or package")
    configurations = {}
    for member in members:
        while member is not None:
            configurations[member.configuration] = member.plan.configurations[member.configuration]
            member = member.previous_stage
    return PlanSource(dataclasses.replace(members[0].plan, configurations=configurations), str(path))


def transfer_weights(source: dict[str, torch.Tensor], network: torch.nn.Module, name: str) -> Transfer:
    """Load `source` into `network` as the module docstring says; returns what was done."""
    target = network.state_dict()
    result = Transfer(name, total=len(target))
    first_conv = next(k for k, v in target.items() if v.ndim >= 3)
    loaded = {}
    for key, tensor in target.items():
        found = source.get(key)
        if found is not None and found.shape == tensor.shape:
            loaded[key] = found.to(tensor.dtype)
            result.copied += 1
        elif found is not None and key.startswith(HEADS) and found.shape[1:] == tensor.shape[1:]:
            result.new_heads.append(key)
        elif (found is not None and key == first_conv and found.shape[0] == tensor.shape[0]
              and found.shape[2:] == tensor.shape[2:]):
            adapted = found.mean(dim=1, keepdim=True).expand_as(tensor).clone().to(tensor.dtype)
            kept = min(found.shape[1], tensor.shape[1])
            adapted[:, :kept] = found[:, :kept]
            loaded[key] = adapted
            result.copied += 1
            result.adapted_channels = f"{found.shape[1]} -> {tensor.shape[1]} input channels"
        else:
            shown = "missing" if found is None else f"{tuple(found.shape)} in the source"
            raise AutosegError(f"{name}: {key} is {tuple(tensor.shape)} here but {shown}: the source has another "
                               f"network topology (stages, features or width); its weights cannot start this run "
                               f"(plan this dataset with `autoseg plan --plan-from {name}` to give it the source's "
                               f"network)")
    network.load_state_dict(loaded, strict=False)
    return result
