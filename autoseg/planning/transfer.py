"""A plan for one dataset that keeps another model's network (`autoseg plan TARGET --plan-from SOURCE`), so
the source's weights fit a fine-tuning run (`autoseg train --init-from`); nnU-Net's
move_plans_between_datasets does the same.

Taken from the source: the voxel orientation and transpose, each configuration (target spacing, patch,
batch, stages, kernels, features), resampling, and the normalization of every channel whose scheme the
target would also choose, CT clip range and statistics included: the network sees intensities scaled as
its weights expect. Planned for the target: labels (classes, regions, ignore label), channels the source
does not have or normalizes by another scheme, and the target's own median spacing and shape, which the
input checks of prediction compare against.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.fingerprint import Fingerprint, in_orientation
from autoseg.planning.normalization import plan_normalization
from autoseg.planning.plan_types import CONFIGURATION_NAMES, PLAN_VERSION, ChannelNormalization, Plan


@dataclass
class PlanSource:
    plan: Plan  # the source's plan; a trained model's configurations as trained (its recipe's width and batch)
    where: str  # what it was read from, recorded in the new plan


def transferred_normalization(source: list[ChannelNormalization],
                              own: list[ChannelNormalization]) -> list[ChannelNormalization]:
    """Per target channel: the source's rule for the same channel index when it uses the same scheme (CT
    statistics included), else the target's own."""
    result = []
    for index, rule in enumerate(own):
        theirs = source[index] if index < len(source) else None
        if theirs is not None and theirs.scheme == rule.scheme:
            result.append(dataclasses.replace(theirs, channel=rule.channel))
        else:
            result.append(rule)
    return result


def transfer_plan(source: PlanSource, fingerprint: Fingerprint, configurations=CONFIGURATION_NAMES,
                  fingerprint_file: str | Path = "fingerprint.json") -> Plan:
    """The target's plan with the source's network and preprocessing (module docstring)."""
    plan = source.plan
    chosen = {name: plan.configurations[name] for name in CONFIGURATION_NAMES
              if name in plan.configurations and name in configurations}
    if not chosen:
        raise AutosegError(f"{source.where}: has none of the configurations asked for ({', '.join(configurations)}); "
                           f"it has {', '.join(plan.configurations) or 'none'}")
    for name, config in list(chosen.items()):
        if config.previous_stage and config.previous_stage not in chosen:
            chosen[config.previous_stage] = plan.configurations[config.previous_stage]
    chosen = {name: dataclasses.replace(chosen[name], next_stage=chosen[name].next_stage
                                        if chosen[name].next_stage in chosen else None)
              for name in CONFIGURATION_NAMES if name in chosen}
    if not fingerprint.cases:
        raise AutosegError(f"{fingerprint.dataset_dir}: fingerprint has no cases")
    # the target's cases, measured in its own dominant orientation, seen in the source's
    cases = [in_orientation(dataclasses.replace(c, orientation=fingerprint.orientation), plan.orientation)
             for c in fingerprint.cases]
    spacing = np.median(np.array([c.spacing for c in cases], dtype=np.float64), axis=0)[plan.transpose_forward]
    shape = np.median(np.array([c.shape_after_crop for c in cases], dtype=np.float64), axis=0)[plan.transpose_forward]
    return Plan(
        version=PLAN_VERSION, dataset_name=fingerprint.dataset_name, fingerprint_file=str(fingerprint_file),
        gpu_memory_gb=plan.gpu_memory_gb, orientation=plan.orientation,
        transpose_forward=list(plan.transpose_forward), transpose_backward=list(plan.transpose_backward),
        original_median_spacing=[float(s) for s in spacing], original_median_shape=[float(s) for s in shape],
        channel_names=dict(fingerprint.channel_names), labels=dict(fingerprint.labels),
        normalization=transferred_normalization(plan.normalization, plan_normalization(fingerprint)),
        resampling=plan.resampling, configurations=chosen, label_codes=dict(fingerprint.label_codes),
        regions=list(fingerprint.regions), ignore_label=fingerprint.ignore_label,
        transferred_from=f"{plan.dataset_name} ({source.where})", preset=plan.preset)
