"""End of training: sliding-window prediction of the fold's validation cases, back in each scan's own
geometry, scored against the original label files -> validation/summary.json."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from autoseg.dataset import load_dataset, read_image
from autoseg.overlap import dice_per_target
from autoseg.jsonio import json_safe, write_json_atomic
from autoseg.model.cascade import cascade_classes, one_hot_channels
from autoseg.model.outputs import PROBABILITIES_SUFFIX
from autoseg.model.prediction import InferenceSettings, Member, OutputFiles, network_logits, restore_and_write
from autoseg.planning.plan_types import Plan
from autoseg.preprocessing.case import label_on_grid_of
from autoseg.preprocessing.properties import load_properties
from autoseg.preprocessing.storage import case_paths, load_case, save_npy_atomic

SUMMARY = "summary.json"


def _mean(values) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def validate_fold(network, plan: Plan, configuration: str, preprocessed: Path, dataset_dir: Path,
                  case_ids: list[str], out_dir: Path, device: torch.device, amp_dtype=None, mirror: bool = True,
                  progress: bool = True, previous: dict[str, Path] | None = None,
                  next_stage: tuple[Path, Path] | None = None) -> dict:
    """Predict, restore, write `<case><ending>` and score every case; returns (and writes) the summary.

    previous: the cascade's previous-stage segmentations (input channels). next_stage: (the next stage's
    preprocessed folder, where to put this stage's segmentations on that grid for it).
    """
    from tqdm import tqdm

    scheme = plan.label_scheme
    label_files = {case.case_id: case.label_file for case in load_dataset(dataset_dir).cases}
    member = Member(plan, configuration, [network])
    settings = InferenceSettings(device, amp_dtype, mirror)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_case = []
    for case_id in tqdm(case_ids, desc="validation", disable=not progress, dynamic_ncols=True):
        image, _, props = load_case(preprocessed, case_id)
        if previous is not None:
            image = np.concatenate([image, one_hot_channels(np.load(previous[case_id]), cascade_classes(plan))])
        logits = network_logits(member, image, settings).numpy()
        if next_stage is not None:
            next_props = load_properties(case_paths(next_stage[0], case_id)[2])
            on_next_grid = label_on_grid_of(scheme.label_map(logits), props, next_props, plan)
            save_npy_atomic(next_stage[1] / f"{case_id}.npy", on_next_grid)
        # probabilities are kept for find-best, which averages configurations' to evaluate ensembles
        files = OutputFiles(out_dir / f"{case_id}{props.source.file_format}",
                            probabilities=out_dir / f"{case_id}{PROBABILITIES_SUFFIX}", half_probabilities=True)
        segmentation = restore_and_write([(logits, props, plan)], files)
        reference, _ = read_image(label_files[case_id])
        dice = dice_per_target(segmentation, reference, scheme.targets, scheme.ignore_label)
        per_case.append({"case": case_id, "dice": {t.name: dice[t.key] for t in scheme.targets}})
    mean = {t.name: _mean([c["dice"][t.name] for c in per_case]) for t in scheme.targets}
    summary = {"configuration": configuration, "num_cases": len(per_case), "mirroring": mirror,
               "mean_dice": mean, "foreground_mean_dice": _mean([v for v in mean.values() if v is not None]),
               "cases": per_case}
    write_json_atomic(out_dir / SUMMARY, json_safe(summary))
    return summary

