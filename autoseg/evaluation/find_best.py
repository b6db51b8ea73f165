"""The `autoseg find-best` step: which configuration (or pair of configurations) to predict with.

Each configuration's cross-validation predictions (the final validation of its folds) are
merged and evaluated; so is every pairwise ensemble (class probabilities averaged). Other network
families planned with `autoseg plan --families` are configurations like the others ("3d_fullres@deeplab"),
so plain, residual-encoder and DeepLab networks and their ensembles compete on the same cases. The best
mean foreground Dice wins, ties going to the simpler candidate (one configuration before an
ensemble; 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres in that order, each before its family variants).
Its postprocessing is decided on the same predictions (a dense CRF on the probabilities first,
autoseg.evaluation.crf_decision, then connected components on the label maps it gives), and
models/inference.json records the choice for `autoseg predict`.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from autoseg.dataset import load_dataset, read_image
from autoseg.dataset.image_io import nifti_header_bytes
from autoseg.dataset.image_write import write_image_like
from autoseg.errors import AutosegError
from autoseg.evaluation.crf_decision import CrfCase, decide_crf, write_refined_predictions
from autoseg.evaluation.evaluate import SUMMARY_FILE, evaluate_pairs, write_report
from autoseg.evaluation.postprocessing_decision import decide_postprocessing
from autoseg.fingerprint import load_fingerprint
from autoseg.model.outputs import PROBABILITIES_SUFFIX, load_probabilities
from autoseg.model.prediction import ensemble_labels
from autoseg.model.trained import INFERENCE_FILE, trained_folds
from autoseg.jsonio import json_safe, to_dict, write_json_atomic
from autoseg.label_scheme import LabelScheme
from autoseg.output_location import check_output_dir
from autoseg.planning.plan_types import configuration_order, load_plan
from autoseg.postprocessing import save_postprocessing
from autoseg.training.validation import SUMMARY as VALIDATION_SUMMARY

INFERENCE_VERSION = 1
ENSEMBLES_DIR = "ensembles"


def _validated_folds(models: Path, configuration: str) -> set[str]:
    return {f for f in trained_folds(models, configuration) if f != "all"
            and (models / configuration / f"fold_{f}" / "validation" / VALIDATION_SUMMARY).is_file()}


def _crossval_predictions(models: Path, configuration: str, folds, references: dict[str, Path]):
    """(case, prediction, reference) over the validation cases of `folds`."""
    pairs = []
    for fold in sorted(folds):
        folder = models / configuration / f"fold_{fold}" / "validation"
        for case in json.loads((folder / VALIDATION_SUMMARY).read_text())["cases"]:
            reference = references[case["case"]]
            pairs.append((case["case"], folder / reference.name, reference))
    return pairs


def _ensemble(pairs_by_member: list[list], out_dir: Path, scheme: LabelScheme):
    """Average the members' saved probabilities per case, write the argmax label maps; returns the pairs."""
    pairs = []
    for rows in zip(*pairs_by_member):
        case_id, _, reference = rows[0]
        if any(row[0] != case_id for row in rows):  # both configurations validate the folds of one splits.json
            raise AutosegError(f"{rows[1][1].parent}: validation cases differ from {rows[0][1].parent}; "
                               f"were the configurations trained on different splits?")
        total = None
        for _, prediction, _ in rows:
            path = prediction.parent / f"{case_id}{PROBABILITIES_SUFFIX}"
            if not path.is_file():
                raise AutosegError(f"{path}: missing; retrain or revalidate {prediction.parent.parent.name} of "
                                   f"{prediction.parent.parent.parent.name} to save probabilities")
            probabilities, _ = load_probabilities(path)
            total = probabilities.astype(np.float32) if total is None else total + probabilities
        segmentation = ensemble_labels(total, scheme)
        _, geometry = read_image(reference)
        target = out_dir / reference.name
        write_image_like(segmentation, target, geometry.spacing, geometry.origin, geometry.direction,
                         nifti_header_bytes(reference))
        pairs.append((case_id, target, reference))
    return pairs


def _crf_cases(pairs: dict, members: tuple[str, ...], images: dict[str, Path]) -> list[CrfCase] | None:
    """The CRF decision's inputs: each case's saved probabilities from every member (None: some are missing,
    e.g. a fold validated before probabilities were kept)."""
    cases = []
    for rows in zip(*(pairs[(member,)] for member in members)):
        case_id, _, reference = rows[0]
        files = tuple(prediction.parent / f"{case_id}{PROBABILITIES_SUFFIX}" for _, prediction, _ in rows)
        if not all(f.is_file() for f in files):
            return None
        cases.append(CrfCase(case_id, files, images[case_id], reference))
    return cases


def _postprocessing(pairs, members, images, plan, folder: Path, workers, progress, *, crf: bool):
    """The CRF (when it helps) then the connected-component steps, decided on the candidate's predictions."""
    scheme, crf_report, chosen = plan.label_scheme, None, None
    best_pairs = pairs[members]
    cases = _crf_cases(pairs, members, images) if crf and not scheme.uses_regions else None
    if cases is not None:
        rule = plan.normalization[0]
        chosen, crf_report = decide_crf(cases, scheme, rule, workers=workers, progress=progress)
        if chosen is not None:
            best_pairs = write_refined_predictions(cases, scheme, rule, chosen, folder / "crossval_crf",
                                                   workers=workers, progress=progress)
    decision, report = decide_postprocessing(best_pairs, scheme, workers, progress)
    decision.crf = chosen
    report["crf"] = crf_report if crf_report is not None else (
        "not tried: " + ("disabled" if not crf else "region-based model" if scheme.uses_regions
                         else "some validation probabilities are missing"))
    return decision, report


def find_best(output_dir, configurations=None, workers: int | None = None, progress: bool = True,
              tolerance_mm: float = 1.0, *, crf: bool = True) -> dict:
    """Evaluate the candidates, pick one, decide its postprocessing (crf=False: connected components only),
    write models/inference.json; returns it."""
    output_dir = Path(output_dir)
    models = output_dir / "models"
    check_output_dir(models, what="models folder")
    plan = load_plan(output_dir / "plan.json")
    scheme = plan.label_scheme
    dataset_dir = load_fingerprint(output_dir / plan.fingerprint_file).dataset_dir
    dataset_cases = load_dataset(dataset_dir).cases
    references = {case.case_id: case.label_file for case in dataset_cases}
    images = {case.case_id: case.image_files[0] for case in dataset_cases}
    if configurations is None:
        configurations = [c for c in plan.configurations if _validated_folds(models, c)]
        if not configurations:
            raise AutosegError(f"{models}: no configuration has a trained and validated fold")
    configurations = sorted(configurations, key=configuration_order)
    folds_of = {c: _validated_folds(models, c) for c in configurations}
    for c, folds in folds_of.items():
        if not folds:
            raise AutosegError(f"{models / c}: no trained and validated fold")
    common = set.intersection(*folds_of.values())
    if not common:
        raise AutosegError(f"{models}: the configurations share no validated fold "
                           f"({'; '.join(f'{c}: {sorted(f)}' for c, f in folds_of.items())})")

    pairs = {(c,): _crossval_predictions(models, c, common, references) for c in configurations}
    for a, b in itertools.combinations(configurations, 2):
        out_dir = models / ENSEMBLES_DIR / f"{a}__{b}" / "crossval"
        pairs[(a, b)] = _ensemble([pairs[(a,)], pairs[(b,)]], out_dir, scheme)

    candidates = []
    for members, member_pairs in pairs.items():
        summary = evaluate_pairs(member_pairs, scheme.targets, tolerance_mm, workers, progress,
                                 ignore_label=scheme.ignore_label)
        folder = models / members[0] if len(members) == 1 else models / ENSEMBLES_DIR / "__".join(members)
        write_report(summary, folder / "crossval" / SUMMARY_FILE)
        candidates.append({"configurations": list(members), "foreground_mean_dice": summary["foreground_mean"]["dice"],
                           "mean_dice": {k: v["dice"] for k, v in summary["mean"].items()},
                           "foreground_mean_hd95": summary["foreground_mean"]["hd95"],
                           "foreground_mean_nsd": summary["foreground_mean"]["nsd"]})

    def rank(candidate):
        dice = candidate["foreground_mean_dice"]
        simplicity = (len(candidate["configurations"]), [configuration_order(c) for c in candidate["configurations"]])
        return (-(dice if dice == dice else -1.0), simplicity)  # NaN ranks last
    best = min(candidates, key=rank)
    best_members = tuple(best["configurations"])
    folder = models / best_members[0] if len(best_members) == 1 else models / ENSEMBLES_DIR / "__".join(best_members)
    decision, report = _postprocessing(pairs, best_members, images, plan, folder, workers, progress, crf=crf)
    if len(best_members) == 1:
        save_postprocessing(decision, models / best_members[0])
    choice = {"version": INFERENCE_VERSION, "configurations": list(best_members), "folds": sorted(common),
              "postprocessing": to_dict(decision), "postprocessing_dice": report,
              "candidates": sorted(candidates, key=rank)}
    write_json_atomic(models / INFERENCE_FILE, json_safe(choice))
    return choice


def format_candidates(choice: dict) -> str:
    """The candidates as a table, best first."""
    lines = [f"{'candidate':42}{'mean fg Dice':>14}{'HD95 mm':>10}{'NSD':>8}"]
    for c in choice["candidates"]:
        name = " + ".join(c["configurations"])
        dice, hd, nsd = (c[k] if c[k] is not None else float("nan") for k in
                         ("foreground_mean_dice", "foreground_mean_hd95", "foreground_mean_nsd"))
        lines.append(f"{name:42}{dice:14.4f}{hd:10.2f}{nsd:8.4f}")
    pp = choice["postprocessing"]
    crf = pp.get("crf")
    steps = ([f"dense CRF (appearance weight {crf['bilateral_weight']:g}, {crf['spatial_sigma_mm']:g} mm, "
              f"intensity {crf['intensity_sigma']:g})"] if crf else []) + \
        (["largest component of all foreground"] if pp["largest_component_of_foreground"] else []) + \
        [f"largest component of label {v}" for v in pp["largest_component_of_classes"]]
    lines.append(f"chosen: {' + '.join(choice['configurations'])} (folds {', '.join(choice['folds'])}); "
                 f"postprocessing: {', '.join(steps) if steps else 'none'}")
    return "\n".join(lines)
