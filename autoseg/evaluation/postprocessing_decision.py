"""Deciding a model's postprocessing from its cross-validation predictions.

First: keep only the largest connected component of all foreground together. Then, for each
class: keep only that class's largest component (classes only: a region-based model's label values
are pieces of several regions, so only the first step is tried). A step is kept only when it raises the mean
foreground Dice and lowers no class's Dice (means over cases where the class is defined).
A class's own step only turns that class's voxels into background, so it changes no other
class's Dice: the per-class steps are decided independently, after the first.
"""
from __future__ import annotations

import math

import numpy as np

from autoseg.dataset.image_io import read_image
from autoseg.label_scheme import LabelScheme, Target
from autoseg.overlap import dice_per_target
from autoseg.parallel import default_workers, map_cases
from autoseg.postprocessing import Postprocessing, apply_postprocessing, keep_largest_component


def _dice_pair(task):
    """Per-target Dice of one case without and with a step."""
    pred_path, ref_path, scheme, foreground_first = task
    prediction, _ = read_image(pred_path)
    reference, _ = read_image(ref_path)
    if foreground_first is None:  # the first decision: the whole foreground's largest component
        before = prediction
        after = apply_postprocessing(prediction, Postprocessing(largest_component_of_foreground=True))
        return tuple(dice_per_target(p, reference, scheme.targets, scheme.ignore_label) for p in (before, after))
    labels = [v for v in scheme.output_values if v > 0]
    base = apply_postprocessing(prediction, Postprocessing(largest_component_of_foreground=foreground_first))
    with_step = {}
    for value in labels:  # each class's step on its own: only that class's Dice can change
        mask = base == value
        kept = np.where(mask & ~keep_largest_component(mask), 0, base)
        with_step[str(value)] = dice_per_target(kept, reference, [Target(str(value), (value,))],
                                                scheme.ignore_label)[str(value)]
    return dice_per_target(base, reference, scheme.targets, scheme.ignore_label), with_step


def target_means(rows: list[dict], labels) -> dict[str, float]:
    out = {}
    for value in labels:
        finite = [r[value] for r in rows if not math.isnan(r[value])]
        out[value] = float(np.mean(finite)) if finite else float("nan")
    return out


def improves(before: dict[int, float], after: dict[int, float]) -> bool:
    defined = [v for v in before if not math.isnan(before[v])]
    if not defined:
        return False
    if any(after[v] < before[v] - 1e-12 for v in defined):
        return False
    return np.mean([after[v] for v in defined]) > np.mean([before[v] for v in defined]) + 1e-12


def decide_postprocessing(pairs, scheme: LabelScheme, workers: int | None = None,
                          progress: bool = True) -> tuple[Postprocessing, dict]:
    """The steps worth applying to these (case, prediction, reference) pairs under the model's label scheme,
    and the Dice behind the choice."""
    keys = [t.key for t in scheme.targets]
    workers = default_workers() if workers is None else workers
    tasks = [(pred, ref, scheme, None) for _, pred, ref in pairs]
    results = list(map_cases(_dice_pair, tasks, workers, progress, "postprocessing (foreground)"))
    plain, largest = target_means([r[0] for r in results], keys), target_means([r[1] for r in results], keys)
    foreground = improves(plain, largest)
    classes = []
    base, per_class = plain if not foreground else largest, {}
    if not scheme.uses_regions:
        tasks = [(pred, ref, scheme, foreground) for _, pred, ref in pairs]
        results = list(map_cases(_dice_pair, tasks, workers, progress, "postprocessing (classes)"))
        base = target_means([r[0] for r in results], keys)
        per_class = target_means([r[1] for r in results], keys)
        classes = [int(k) for k in keys if improves({k: base[k]}, {k: per_class[k]})]
    report = {"dice_without": plain, "dice_foreground_largest_component": largest,
              "dice_after_first_step": base, "dice_class_largest_component": per_class}
    return Postprocessing(largest_component_of_foreground=foreground, largest_component_of_classes=classes), report
