"""The `autoseg plan` step: dataset folder (or an existing fingerprint) -> fingerprint.json + plan.json."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autoseg.fingerprint import compute_fingerprint, load_fingerprint, save_fingerprint
from autoseg.output_location import check_output_dir
from autoseg.errors import AutosegError
from autoseg.planning.plan_types import CONFIGURATION_NAMES, Plan, save_plan
from autoseg.planning.planner import plan_experiment
from autoseg.planning.transfer import PlanSource, transfer_plan
from autoseg.quality import DatasetReport, dataset_report, write_dataset_report

FINGERPRINT_FILE = "fingerprint.json"
PLAN_FILE = "plan.json"


def default_output_dir(dataset_dir: str | os.PathLike) -> Path:
    """The working folder beside the dataset: /data/Dataset004_X -> /data/Dataset004_X.autoseg"""
    dataset_dir = Path(dataset_dir).resolve()
    return dataset_dir.with_name(dataset_dir.name + ".autoseg")


@dataclass
class PlanResult:
    output_dir: Path
    fingerprint_path: Path
    plan_path: Path
    plan: Plan
    report: DatasetReport | None = None  # cases worth a look (autoseg.quality), written beside the plan
    report_path: Path | None = None
    overview_path: Path | None = None


def plan_dataset(dataset_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
                 fingerprint_path: str | os.PathLike | None = None, workers: int | None = None,
                 gpu_memory_gb: float | None = None, configurations=CONFIGURATION_NAMES,
                 progress: bool = True, *, plan_from: PlanSource | None = None, preset: str = "plain",
                 families: tuple[str, ...] = ()) -> PlanResult:
    """Fingerprint the dataset (unless a fingerprint is given) and write the plan: planned for this dataset,
    or with plan_from, keeping another model's network and preprocessing (autoseg.planning.transfer).
    families: other presets' networks planned beside 2d and 3d_fullres (autoseg.planning.planner).

    Nothing is written unless the whole dataset validates; both files are written atomically.
    """
    if (dataset_dir is None) == (fingerprint_path is None):
        raise ValueError("give exactly one of dataset_dir and fingerprint_path")
    if plan_from is not None and families:
        raise AutosegError("--plan-from keeps the source model's one network: it cannot plan other families too")
    if fingerprint_path is not None:
        fingerprint_path = Path(fingerprint_path)
        default = fingerprint_path.parent
    else:
        default = default_output_dir(dataset_dir)
    # before the fingerprint: a read-only dataset share must not cost the whole dataset's reading first
    check_output_dir(output_dir if output_dir is not None else default, what="output folder",
                     remedy=None if output_dir is not None else "choose another with -o OUTPUT_DIR")
    output_dir = Path(output_dir) if output_dir is not None else default
    if fingerprint_path is not None:
        fingerprint = load_fingerprint(fingerprint_path)
    else:
        fingerprint = compute_fingerprint(dataset_dir, workers=workers, progress=progress)
    if plan_from is not None:
        plan = transfer_plan(plan_from, fingerprint, tuple(configurations), fingerprint_file=FINGERPRINT_FILE)
    else:
        plan = plan_experiment(fingerprint, gpu_memory_gb, tuple(configurations), fingerprint_file=FINGERPRINT_FILE,
                               preset=preset, families=tuple(families))
    output_dir.mkdir(parents=True, exist_ok=True)
    out_fingerprint = output_dir / FINGERPRINT_FILE
    if fingerprint_path is None or out_fingerprint.resolve() != fingerprint_path.resolve():
        save_fingerprint(fingerprint, out_fingerprint)
    plan_path = output_dir / PLAN_FILE
    save_plan(plan, plan_path)
    report = dataset_report(fingerprint)
    report_path, overview_path = write_dataset_report(report, fingerprint, output_dir)
    return PlanResult(output_dir, out_fingerprint, plan_path, plan, report, report_path, overview_path)


def describe_plan(plan: Plan) -> str:
    """A short table of the planned configurations for the terminal."""
    lines = [f"network and preprocessing kept from {plan.transferred_from}"] if plan.transferred_from else []
    lines += [f"dataset {plan.dataset_name}: {plan.preset} network, transpose {plan.transpose_forward}, "
             f"normalization {', '.join(f'{n.channel}={n.scheme}' + ('(masked)' if n.use_nonzero_mask else '') for n in plan.normalization)}"]
    lines.append(f"{'configuration':<20}{'spacing':<26}{'patch':<18}{'batch':>6}{'stages':>8}  pools/axis")
    for name, c in plan.configurations.items():
        spacing = "x".join(f"{s:.3g}" for s in c.spacing)
        patch = "x".join(str(p) for p in c.patch_size)
        lines.append(f"{name:<20}{spacing:<26}{patch:<18}{c.batch_size:>6}{c.num_stages:>8}  {c.num_pools_per_axis}")
    return "\n".join(lines)
