"""The `autoseg preprocess` step: every case of the planned dataset, for each configuration."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from autoseg.dataset import Dataset, load_dataset, read_case
from autoseg.dataset.image_io import file_ending, nifti_header_bytes
from autoseg.dataset.layout import Case
from autoseg.errors import AutosegError
from autoseg.fingerprint import load_fingerprint
from autoseg.jsonio import to_dict
from autoseg.output_location import check_free_space, check_output_dir
from autoseg.parallel import default_workers, map_cases
from autoseg.planning.plan_types import Plan, load_plan
from autoseg.preprocessing.case import preprocess_case
from autoseg.preprocessing.properties import PROPERTIES_VERSION, save_properties
from autoseg.preprocessing.storage import case_paths, is_complete, remove_stale_temp_files, save_npy_atomic

PREPROCESSED_DIR = "preprocessed"


def preprocessed_folder(output_dir: str | os.PathLike, plan: Plan, configuration: str) -> Path:
    return Path(output_dir) / PREPROCESSED_DIR / plan.configurations[configuration].data_identifier


# Raised whenever preprocessing computes other numbers from the same plan (2: nnU-Net's B-spline resampling,
# clamping and label ties, and the seg >= 0 z-score mask), so cases written by older code are redone.
PREPROCESSING_REVISION = 2


def case_signature(plan: Plan, configuration: str, case: Case) -> str:
    """Changes when anything that shapes this case's preprocessed data changes."""
    config = plan.configurations[configuration]
    decisions = {"version": PROPERTIES_VERSION, "revision": PREPROCESSING_REVISION, "orientation": plan.orientation,
                 "transpose": plan.transpose_forward, "spacing": config.spacing,
                 "normalization": to_dict(plan.normalization), "resampling": to_dict(plan.resampling),
                 "labels": plan.labels}
    if plan.regions or plan.ignore_label is not None:  # the sampler's class locations follow these
        decisions["sampled_values"] = plan.label_scheme.foreground_values
    files = []
    for path in (*case.image_files, case.label_file):
        stat = path.stat()
        files.append([path.name, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([decisions, files], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PreprocessResult:
    processed: int
    skipped: int
    failed: list[str]
    folders: dict[str, Path]


def _preprocess_one(task):
    dataset, case, plan, jobs, force = task
    todo = []
    for configuration, folder in jobs:
        signature = case_signature(plan, configuration, case)
        if force or not is_complete(folder, case.case_id, signature):
            todo.append((configuration, folder, signature))
    if not todo:
        return "skipped", []
    data, problems = read_case(dataset, case)
    if data is None:
        return "failed", problems
    header = nifti_header_bytes(case.image_files[0])
    ending = file_ending(case.image_files[0]) or dataset.file_ending
    for configuration, folder, signature in todo:
        image, label, props = preprocess_case(data, plan, configuration, signature, ending, header)
        data_path, seg_path, props_path = case_paths(folder, case.case_id)
        props_path.unlink(missing_ok=True)  # the properties file marks completion: remove it first
        save_npy_atomic(data_path, image)
        save_npy_atomic(seg_path, label)
        save_properties(props, props_path)
    return "processed", []


def preprocess_dataset(output_dir: str | os.PathLike, configurations: list[str] | None = None,
                       workers: int | None = None, force: bool = False, progress: bool = True,
                       dataset_dir: str | os.PathLike | None = None) -> PreprocessResult:
    """Preprocess every case for the given configurations (default: all planned).

    Reruns skip cases whose files are complete and made from the same plan and sources, so an
    interrupted run continues where it stopped; force=True redoes everything.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, what="training folder")
    plan = load_plan(output_dir / "plan.json")
    if dataset_dir is None:
        fingerprint = load_fingerprint(output_dir / plan.fingerprint_file)
        dataset_dir = fingerprint.dataset_dir
    if not Path(dataset_dir).is_dir():
        raise AutosegError(f"{dataset_dir}: dataset folder not found (moved? pass --dataset)")
    dataset: Dataset = load_dataset(dataset_dir)
    names = list(plan.configurations) if configurations is None else list(configurations)
    unknown = [n for n in names if n not in plan.configurations]
    if unknown:
        raise AutosegError(f"{output_dir / 'plan.json'}: no configuration {', '.join(unknown)} "
                           f"(planned: {', '.join(plan.configurations)})")
    # rough: float32 arrays take at least what the scans' files take; finished cases need nothing
    check_free_space(output_dir / PREPROCESSED_DIR, what="preprocessed data", expected_bytes=sum(
        sum(p.stat().st_size for p in case.image_files if p.is_file())
        for folder in {preprocessed_folder(output_dir, plan, name) for name in names} for case in dataset.cases
        if force or not case_paths(folder, case.case_id)[2].is_file()))
    jobs, folders = [], {}
    for name in names:
        folder = preprocessed_folder(output_dir, plan, name)
        folders[name] = folder
        if any(folder == f for _, f in jobs):
            continue  # the cascade shares 3d_fullres data
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(folder)
        jobs.append((name, folder))
    tasks = [(dataset, case, plan, jobs, force) for case in dataset.cases]
    workers = default_workers() if workers is None else workers
    processed = skipped = 0
    failed: list[str] = []
    for status, problems in map_cases(_preprocess_one, tasks, workers, progress, "preprocess"):
        processed += status == "processed"
        skipped += status == "skipped"
        failed += problems
    return PreprocessResult(processed, skipped, failed, folders)
