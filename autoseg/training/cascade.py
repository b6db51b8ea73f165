"""The cascade's second stage: the low-resolution stage's segmentation as extra input channels.

Each case's extra channels come from the low-resolution model that did not train on it (its
cross-validation prediction, saved on the full-resolution grid by that fold's final
validation), so the full-resolution stage learns from the kind of input it will get at
prediction time.
"""
from __future__ import annotations

from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.model.cascade import cascade_classes
from autoseg.planning.plan_types import Plan

NEXT_STAGE_DIR = "predicted_next_stage"


def cascade_input_channels(plan: Plan, configuration: str) -> int:
    """Input channels of a configuration's network: the images', plus one per foreground class in a cascade."""
    extra = cascade_classes(plan) - 1 if plan.configurations[configuration].previous_stage else 0
    return len(plan.channel_names) + extra


def previous_stage_predictions(output_dir: Path, plan: Plan, configuration: str, case_ids) -> dict[str, Path]:
    """Case id -> the previous stage's cross-validation segmentation (.npy on this stage's grid)."""
    previous = plan.configurations[configuration].previous_stage
    stage_dir = Path(output_dir) / "models" / previous
    found: dict[str, Path] = {}
    for fold_dir in sorted(stage_dir.glob("fold_*")):
        for path in sorted((fold_dir / NEXT_STAGE_DIR).glob("*.npy")):
            found.setdefault(path.stem, path)
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise AutosegError(f"{stage_dir}: no {previous} cross-validation prediction for {len(missing)} of "
                           f"{len(case_ids)} cases (e.g. {missing[0]}); train all folds of {previous} with "
                           f"validation first")
    return {c: found[c] for c in case_ids}
