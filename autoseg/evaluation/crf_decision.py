"""Deciding whether a dense CRF (autoseg.crf) refines a model's predictions, from its cross-validation.

Each of the candidate settings (autoseg.crf.CANDIDATES) is run on every cross-validation case's saved
probabilities (an ensemble's: its members' averaged) with the scan's first channel normalised as the plan
says; the setting with the best mean foreground Dice is kept only when it raises the mean foreground Dice
and lowers no class's Dice, the connected-component steps' rule (autoseg.evaluation.postprocessing_decision).
Region-based models are not offered a CRF: their probabilities are independent sigmoids, not one
distribution over classes. The label maps of the kept setting are written for the connected-component
decision that follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.crf import CANDIDATES, CrfSettings, refine
from autoseg.dataset.image_io import nifti_header_bytes, read_image
from autoseg.dataset.image_write import write_image_like
from autoseg.evaluation.postprocessing_decision import improves, target_means
from autoseg.jsonio import to_dict
from autoseg.label_scheme import LabelScheme
from autoseg.model.outputs import load_probabilities
from autoseg.overlap import dice_per_target
from autoseg.parallel import default_workers, map_cases
from autoseg.planning.plan_types import ChannelNormalization
from autoseg.preprocessing.normalize import normalize_scan


@dataclass(frozen=True)
class CrfCase:
    """One cross-validation case: its saved probabilities (one file per ensemble member), scan and reference."""

    case_id: str
    probabilities: tuple[Path, ...]
    image: Path  # the first channel's file (an MSD 4D file: its first volume)
    reference: Path


def _inputs(case: CrfCase, rule: ChannelNormalization):
    total = None
    for path in case.probabilities:
        probabilities, _ = load_probabilities(path)
        total = probabilities.astype(np.float32) if total is None else total + probabilities
    total /= len(case.probabilities)
    reference, geometry = read_image(case.reference)
    image, _ = read_image(case.image)
    if image.ndim == reference.ndim + 1:
        image = image[0]
    intensity = normalize_scan(image[None].astype(np.float32), [rule])[0]
    return total, intensity, geometry.spacing[-reference.ndim:], reference


def _case_dice(task):
    case, rule, scheme, settings = task
    probabilities, intensity, spacing, reference = _inputs(case, rule)
    rows = [dice_per_target(scheme.label_map(probabilities, probabilities=True), reference, scheme.targets,
                            scheme.ignore_label)]
    for setting in settings:
        refined = refine(probabilities, intensity, spacing, setting)
        rows.append(dice_per_target(scheme.label_map(refined, probabilities=True), reference, scheme.targets,
                                    scheme.ignore_label))
    return rows


def _write_refined(task):
    case, rule, scheme, setting, out_dir = task
    probabilities, intensity, spacing, reference = _inputs(case, rule)
    segmentation = scheme.label_map(refine(probabilities, intensity, spacing, setting), probabilities=True)
    _, geometry = read_image(case.reference)
    target = out_dir / case.reference.name
    write_image_like(segmentation, target, geometry.spacing, geometry.origin, geometry.direction,
                     nifti_header_bytes(case.reference))
    return case.case_id, target, case.reference


def decide_crf(cases: list[CrfCase], scheme: LabelScheme, rule: ChannelNormalization, *, workers: int | None = None,
               progress: bool = True,
               candidates: tuple[CrfSettings, ...] = CANDIDATES) -> tuple[CrfSettings | None, dict]:
    """The CRF setting worth applying (None: none helps), and the Dice behind the choice."""
    keys = [t.key for t in scheme.targets]
    workers = default_workers() if workers is None else workers
    tasks = [(case, rule, scheme, candidates) for case in cases]
    rows = list(map_cases(_case_dice, tasks, workers, progress, "postprocessing (CRF)"))
    without = target_means([r[0] for r in rows], keys)
    tried = [target_means([r[k + 1] for r in rows], keys) for k in range(len(candidates))]

    def foreground(means) -> float:  # NaN (nothing defined) ranks last
        defined = [v for v in means.values() if v == v]
        return float(np.mean(defined)) if defined else -1.0
    best = max(range(len(candidates)), key=lambda k: foreground(tried[k]))
    chosen = candidates[best] if improves(without, tried[best]) else None
    report = {"dice_without": without,
              "tried": [{"settings": to_dict(c), "dice": d} for c, d in zip(candidates, tried)],
              "chosen": to_dict(chosen) if chosen is not None else None}
    return chosen, report


def write_refined_predictions(cases: list[CrfCase], scheme: LabelScheme, rule: ChannelNormalization,
                              setting: CrfSettings, out_dir: Path, *, workers: int | None = None,
                              progress: bool = True) -> list[tuple[str, Path, Path]]:
    """The label maps after the CRF, for the decisions that follow it; (case, prediction, reference) pairs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if workers is None else workers
    tasks = [(case, rule, scheme, setting, out_dir) for case in cases]
    return list(map_cases(_write_refined, tasks, workers, progress, "postprocessing (CRF maps)"))
