"""The `autoseg evaluate` step: every predicted label map against its reference, per case and class.

Writes summary.json (means per class and over foreground classes, every case), a per-case CSV
and a PNG with a box plot per class per metric. Prediction and reference must share their
grid; a mismatch fails that case with a line naming it, and nothing is written. 2D label maps
(a 2D dataset's predictions) are scored in 2D with the spacing of their two axes.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from autoseg.dataset.image_io import file_ending, read_image
from autoseg.errors import AutosegError, CasesFailed
from autoseg.instances import MATCH_IOU, InstanceCounts, InstanceRule, match_instances
from autoseg.evaluation.metrics import DEFAULT_SURFACE, METRIC_NAMES, SURFACE_CONVENTIONS, case_metrics, class_metrics
from autoseg.jsonio import TEMP_PREFIX, json_safe, write_json_atomic, write_text_atomic
from autoseg.label_scheme import Target, as_targets
from autoseg.output_location import check_output_file
from autoseg.parallel import default_workers, map_cases

SUMMARY_VERSION = 2  # 2: surface_convention; NSD/HD95 default to surface elements
SUMMARY_FILE, CASES_FILE, PLOT_FILE = "summary.json", "cases.csv", "boxplots.png"
MEAN_METRICS = ("dice", "iou", "hd95", "nsd")
INSTANCE_MEANS = ("precision", "recall", "f1", "lesion_dice", "sq", "pq")
INSTANCES_FILE = "instances.csv"


def paired_cases(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, reference) for every reference image; a missing prediction is an error."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder in (pred_dir, ref_dir):
        if not folder.is_dir():
            raise AutosegError(f"{folder}: no such folder")
    references = sorted(p for p in ref_dir.iterdir() if p.is_file() and file_ending(p)
                        and not p.name.startswith((".", TEMP_PREFIX)))
    if not references:
        raise AutosegError(f"{ref_dir}: no reference label files")
    missing = [p.name for p in references if not (pred_dir / p.name).is_file()]
    if missing:
        raise AutosegError(f"{pred_dir / missing[0]}: no prediction for this reference"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [(p.name[:-len(file_ending(p))], pred_dir / p.name, p) for p in references]


def _evaluate_case(task):
    case_id, pred_path, ref_path, labels, tolerance, surface_convention, ignore_label, instances = task
    try:
        prediction, pred_geometry = read_image(pred_path)
        reference, ref_geometry = read_image(ref_path)
    except AutosegError as e:
        return case_id, None, str(e)
    for path, array in ((pred_path, prediction), (ref_path, reference)):
        if array.ndim not in (2, 3):
            return case_id, None, f"{path}: is {array.ndim}D, expected a 2D or 3D label map"
        if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
            return case_id, None, f"{path}: label map has non-integer values (labels must be whole numbers)"
    if prediction.shape != reference.shape:
        return case_id, None, (f"{pred_path}: shape {prediction.shape} differs from the reference's "
                               f"{reference.shape} ({ref_path})")
    diffs = pred_geometry.matches(ref_geometry)
    if diffs:
        return case_id, None, f"{pred_path}: geometry differs from the reference ({'; '.join(diffs)})"
    if labels is None:  # every foreground value either map holds
        labels = sorted((set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist())) - {0, ignore_label})
    # a 2D file's geometry is still 3D (a unit-less third axis first): its array axes are the last two
    spacing = ref_geometry.spacing[-reference.ndim:]
    metrics = case_metrics(prediction, reference, spacing, labels, tolerance, ignore_label=ignore_label,
                           surface_convention=surface_convention)
    result = {key: m.as_dict() for key, m in metrics.items()}
    if instances is not None:
        counts = _instance_counts(prediction, reference, spacing, labels, instances, ignore_label)
        return case_id, (result, counts), None
    return case_id, (result, None), None


def _instance_counts(prediction, reference, spacing, labels, rule: InstanceRule, ignore_label) -> dict:
    """Each class's (or region's) lesion instances matched (autoseg.instances); where the reference is
    unannotated the prediction counts nowhere."""
    annotated = reference != ignore_label if ignore_label is not None else np.ones(reference.shape, bool)
    counts = {}
    for target in as_targets(labels):
        predicted = np.isin(prediction, target.values) & annotated
        counts[target.key] = match_instances(predicted, np.isin(reference, target.values), spacing, rule)
    return counts


def _nanmean(values) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(cases: list[dict], labels: list[Target], tolerance_mm: float, *,
              surface_convention: str = DEFAULT_SURFACE, ignore_label: int | None = None) -> dict:
    """Means per class or region (over cases where it is defined) and over all of them. `labels` lists the
    label values, or for regions each region's values."""
    keys = [t.key for t in labels]
    mean = {k: {m: _nanmean([c["metrics"][k][m] for c in cases]) for m in METRIC_NAMES} for k in keys}
    foreground = {m: _nanmean([mean[k][m] for k in keys]) for m in MEAN_METRICS}
    regions = any(len(t.values) > 1 for t in labels)
    return {"version": SUMMARY_VERSION, "surface_convention": surface_convention, "tolerance_mm": tolerance_mm,
            "labels": [list(t.values) if regions else t.values[0] for t in labels], "ignore_label": ignore_label,
            "num_cases": len(cases), "mean": mean, "foreground_mean": foreground, "cases": cases}


def evaluate_pairs(pairs: list[tuple[str, Path, Path]], labels=None, tolerance_mm: float = 1.0,
                   workers: int | None = None, progress: bool = True, *,
                   surface_convention: str = DEFAULT_SURFACE, ignore_label: int | None = None,
                   instances: InstanceRule | None = None) -> dict:
    """The summary of (case id, prediction, reference) pairs; raises CasesFailed listing every bad case.

    labels: label values and/or regions (autoseg.label_scheme.Target); None: every foreground value found.
    ignore_label: reference voxels holding it count nowhere (sparse annotations).
    instances: also lesion-wise metrics, instances being components under this rule (autoseg.instances)."""
    if tolerance_mm <= 0:
        raise AutosegError(f"--tolerance must be positive, got {tolerance_mm}")
    if surface_convention not in SURFACE_CONVENTIONS:
        raise AutosegError(f"--surface must be one of {', '.join(SURFACE_CONVENTIONS)}, got {surface_convention!r}")
    labels = sorted(as_targets(labels), key=lambda t: t.values) if labels is not None else None
    if labels is not None and ignore_label is not None and any(ignore_label in t.values for t in labels):
        raise AutosegError(f"--ignore-label {ignore_label} is also one of the labels evaluated")
    tasks = [(case_id, pred, ref, labels, tolerance_mm, surface_convention, ignore_label, instances)
             for case_id, pred, ref in pairs]
    workers = default_workers() if workers is None else workers
    results, problems = [], []
    for case_id, metrics, problem in map_cases(_evaluate_case, tasks, workers, progress, "evaluate"):
        if problem:
            problems.append(problem)
        else:
            results.append((case_id, metrics))
    if problems:
        raise CasesFailed(f"{Path(pairs[0][1]).parent}", problems)
    found = labels if labels is not None else as_targets(sorted({int(v) for _, (m, _) in results for v in m}))
    empty = class_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,)).as_dict()  # absent from both
    cases, totals = [], {t.key: InstanceCounts(0, 0, 0, [], []) for t in found}
    for (case_id, (metrics, counts)), (_, pred, ref) in zip(results, pairs):
        cases.append({"case": case_id, "prediction": str(pred), "reference": str(ref),
                      "metrics": {t.key: metrics.get(t.key, empty) for t in found}})
        if counts is not None:
            none = InstanceCounts(0, 0, 0, [], [])
            cases[-1]["instances"] = {t.key: counts.get(t.key, none).metrics() for t in found}
            totals = {key: total.add(counts.get(key, none)) for key, total in totals.items()}
    summary = summarize(cases, found, tolerance_mm, surface_convention=surface_convention, ignore_label=ignore_label)
    if instances is not None:
        summary["instances"] = instance_summary(totals, instances)
    return summary


def instance_summary(totals: dict[str, InstanceCounts], rule: InstanceRule) -> dict:
    """Lesion-wise metrics per class from the counts summed over every case, and their mean over classes."""
    per_class = {key: counts.metrics() for key, counts in totals.items()}
    return {"connectivity": "full", "match_iou": MATCH_IOU, "min_volume_mm3": rule.min_volume_mm3,
            "per_class": per_class,
            "foreground_mean": {m: _nanmean([per_class[k][m] for k in per_class]) for m in INSTANCE_MEANS}}


def evaluate_folder(pred_dir, ref_dir, labels=None, output=None, tolerance_mm: float = 1.0,
                    workers: int | None = None, progress: bool = True, *,
                    surface_convention: str = DEFAULT_SURFACE, ignore_label: int | None = None,
                    instances: InstanceRule | None = None) -> dict:
    """Evaluate PRED_DIR against REF_DIR; writes summary.json (default PRED_DIR/summary.json), cases.csv and
    boxplots.png beside it, and returns the summary."""
    output = Path(output) if output is not None else Path(pred_dir) / SUMMARY_FILE
    check_output_file(output, what="evaluation summary")
    summary = evaluate_pairs(paired_cases(Path(pred_dir), Path(ref_dir)), labels, tolerance_mm, workers, progress,
                             surface_convention=surface_convention, ignore_label=ignore_label, instances=instances)
    write_report(summary, output)
    return summary


def write_report(summary: dict, output: Path) -> None:
    """summary.json at `output`, cases.csv and boxplots.png beside it, each written atomically."""
    from autoseg.evaluation.boxplots import plot_boxplots

    write_json_atomic(output, json_safe(summary))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", *METRIC_NAMES])
    for case in summary["cases"]:
        for label, metrics in case["metrics"].items():
            writer.writerow([case["case"], label, *[_csv_value(metrics[m]) for m in METRIC_NAMES]])
    write_text_atomic(output.parent / CASES_FILE, buffer.getvalue())
    if "instances" in summary:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = ["tp", "fp", "fn", *INSTANCE_MEANS]
        writer.writerow(["case", "label", *columns])
        for case in summary["cases"]:
            for label, metrics in case["instances"].items():
                writer.writerow([case["case"], label, *[_csv_value(metrics[m]) for m in columns]])
        write_text_atomic(output.parent / INSTANCES_FILE, buffer.getvalue())
    plot_boxplots(summary, output.parent / PLOT_FILE)


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
