"""The `autoseg predict` step: scans in, label maps out, each in its scan's own geometry, with a report
per case (`{case}_report.json`, one row of `predictions.csv`) and optionally a preview picture.

The model is loaded once (a Predictor). Reading and preprocessing of the next cases and restoring and
writing of finished ones run in background threads while the network works on the current case (the
heavy parts — decompression, resampling, convolutions — release the GIL). A case that cannot be read
is reported in one line and the others go on.

Many machines: `part=(k, n)` takes every n-th case starting at the k-th (1-based) of the sorted cases,
so n processes over a shared folder split the work without talking to each other; under torchrun
each rank takes its share by itself. Outputs are written atomically and `skip_existing` (--continue)
skips finished cases, so reruns are safe.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.dataset.orientation import reorient, reorientation
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase, find_input_cases
from autoseg.inference.predictor import PreparedCase, Predictor
from autoseg.inference.report import (CaseReport, load_case_report, write_case_report,
                                      write_predictions_csv)
from autoseg.jsonio import TEMP_PREFIX, write_json_atomic
from autoseg.output_location import (check_free_space, check_output_dir, describe_os_error, is_location_error,
                                     stops_the_run)
from autoseg.model.outputs import ENTROPY_SUFFIX, PROBABILITIES_SUFFIX
from autoseg.model.prediction import STEP, OutputFiles, write_outputs

SUMMARY_FILE = "prediction_summary.json"
CSV_FILE = "predictions.csv"
REPORT_SUFFIX = "_report.json"
PREVIEW_SUFFIX = "_preview.png"


@dataclass
class PredictResult:
    output_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class PredictOptions:
    """Everything about a prediction run besides where inputs, outputs and the model are."""

    configuration: str | None = None
    folds: list[str] | None = None
    mirror: bool = True
    step: float = STEP
    device: str = "auto"
    precision: str = "auto"
    save_probabilities: bool = False
    workers: int | None = None
    skip_existing: bool = False
    progress: bool = True
    strict: bool = False  # input-check warnings fail the case
    preview: bool = False
    part: tuple[int, int] | None = None  # (k, n), 1-based; None: all cases (or this rank's share under torchrun)


def output_paths(case: InputCase, output_dir: Path, save_probabilities: bool) -> list[Path]:
    """Every data file a finished case has; the label map is written last and listed first."""
    paths = [output_dir / f"{case.case_id}{case.ending}"]
    if save_probabilities:
        paths += [output_dir / f"{case.case_id}{PROBABILITIES_SUFFIX}",
                  output_dir / f"{case.case_id}{ENTROPY_SUFFIX}{case.ending}"]
    return paths


def parse_part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AutosegError(f"--part {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise AutosegError(f"--part {text!r}: K must be between 1 and N")
    return k, n


def torchrun_part() -> tuple[int, int] | None:
    """This process's share when launched by torchrun (it sets WORLD_SIZE and RANK), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")) + 1, world) if world > 1 else None


def share(cases: list, part: tuple[int, int] | None) -> list:
    if part is None:
        return cases
    k, n = part
    return cases[k - 1::n]


def predict(input_path, output_dir, model, options: PredictOptions | None = None, *,
            predictor: Predictor | None = None) -> PredictResult:
    """Predict every case under `input_path` (this part's share) into `output_dir`; `model` is a package
    file or a training folder's models/. See PredictResult.failed for the cases that failed."""
    from tqdm import tqdm

    options = options or PredictOptions()
    check_output_dir(output_dir, what="prediction folder")
    part = options.part or torchrun_part()
    device = options.device
    if part is not None and options.part is None and device in ("auto", "cuda"):
        import torch
        if torch.cuda.is_available():  # one GPU per rank
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    if predictor is None:
        predictor = Predictor.load(model, device=device, configuration=options.configuration, folds=options.folds,
                                   mirror=options.mirror, step=options.step, precision=options.precision,
                                   strict=options.strict)
    output_dir = Path(output_dir)
    if Path(input_path).is_dir() and output_dir.exists() and output_dir.resolve() == Path(input_path).resolve():
        raise AutosegError(f"{output_dir}: is the input folder; the label maps written there would be read as "
                           f"scans by the next run. Choose another output folder")
    cases, problems = find_input_cases(input_path, predictor.num_channels)
    inputs = {p.resolve() for c in cases for p in c.files}
    for case in cases:
        for path in output_paths(case, output_dir, options.save_probabilities):
            if path.resolve() in inputs:
                raise AutosegError(f"{path}: the output would overwrite an input scan; choose another output folder")
    cases = share(cases, part)
    # rough: a label map takes far less than its scan's file; a quarter of it is a floor, not a promise
    check_free_space(output_dir, what="prediction folder",
                     expected_bytes=sum(c.files[0].stat().st_size for c in cases if c.files[0].is_file()) // 4)
    if part is not None and part[0] != 1:  # a case ruled out by its file names is reported by part 1 alone
        problems = {}
    output_dir.mkdir(parents=True, exist_ok=True)
    if part is None:  # parts running beside each other may be writing; only a lone run may clear leftovers
        for stale in output_dir.glob(f"{TEMP_PREFIX}*"):  # left by a killed run; never a finished output
            stale.unlink(missing_ok=True)

    result = PredictResult(output_dir)
    for case_id, problem in problems.items():
        result.failed[case_id] = problem
        _say(problem)
    todo = []
    for case in cases:
        finished = [*output_paths(case, output_dir, options.save_probabilities),
                    output_dir / f"{case.case_id}{REPORT_SUFFIX}"]
        if options.preview:
            finished.append(output_dir / f"{case.case_id}{PREVIEW_SUFFIX}")
        if options.skip_existing and _is_finished(case, finished):
            result.skipped.append(case.case_id)
        else:
            todo.append(case)

    workers = max(1, options.workers if options.workers is not None else 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as readers, \
            ThreadPoolExecutor(workers, thread_name_prefix="export") as writers:
        ahead: deque[tuple[InputCase, Future]] = deque()
        exporting: deque[tuple[InputCase, Future]] = deque()
        pending = iter(todo)

        def refill():
            while len(ahead) < workers + 1:
                case = next(pending, None)
                if case is None:
                    return
                ahead.append((case, readers.submit(predictor.prepare_files, case)))

        def collect(limit: int):
            while len(exporting) > limit:
                case, future = exporting.popleft()
                try:
                    future.result()
                    result.written.append(case.case_id)
                except Exception as e:  # noqa: BLE001 - one bad case must not stop the others
                    if stops_the_run(e):  # full or read-only output folder: every later case would fail too
                        raise
                    result.failed[case.case_id] = (describe_os_error(e) if is_location_error(e)
                                                   else _one_line(e, case))
                    _say(result.failed[case.case_id])

        refill()
        bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not options.progress, dynamic_ncols=True)
        while ahead:
            case, future = ahead.popleft()
            refill()
            try:
                prepared = future.result()
                logits = predictor.infer(prepared)
            except Exception as e:  # noqa: BLE001 - reported per case; the run goes on
                result.failed[case.case_id] = _one_line(e, case)
                _say(result.failed[case.case_id])
                bar.update()
                continue
            del future
            collect(workers - 1)  # bounded: at most `workers` finished cases wait in memory
            exporting.append((case, writers.submit(_export, predictor, case, prepared, logits, output_dir,
                                                   options)))
            del prepared, logits
            bar.update()
        collect(0)
        bar.close()
    summary_name = SUMMARY_FILE if part is None else f"prediction_summary.part{part[0]}of{part[1]}.json"
    write_json_atomic(output_dir / summary_name, {
        "model": predictor.models.source, "package_sha256": predictor.models.package_sha256,
        "configuration": " + ".join(m.configuration for m in predictor.models.models),
        "folds": predictor.models.models[0].folds, "mirroring": options.mirror, "step": options.step,
        "part": list(part) if part else None,
        "written": sorted(result.written), "skipped": sorted(result.skipped),
        "failed": dict(sorted(result.failed.items()))})
    write_predictions_csv(_all_reports(output_dir), output_dir / CSV_FILE)
    return result


def _is_finished(case: InputCase, files: list[Path]) -> bool:
    """--continue trusts nothing it did not check: every file present, the report readable, and the label
    map readable to its last byte with the shape the report recorded (a truncated or damaged output is
    predicted again)."""
    if not all(p.is_file() for p in files):
        return False
    from autoseg.dataset.image_io import read_image

    report_path = next(p for p in files if p.name.endswith(REPORT_SUFFIX))
    try:
        report = load_case_report(report_path)
        labels, _ = read_image(files[0])
    except AutosegError:
        _say(f"{files[0]}: incomplete or damaged output, predicting {case.case_id} again")
        return False
    if list(labels.shape) != list(report.shape):
        _say(f"{files[0]}: shape {list(labels.shape)} differs from its report's {report.shape}, predicting "
             f"{case.case_id} again")
        return False
    return True


def _all_reports(output_dir: Path) -> list[CaseReport]:
    """Every finished case's report in the folder (other parts' and earlier runs' too), sorted by case."""
    reports = []
    for path in sorted(output_dir.glob(f"*{REPORT_SUFFIX}")):
        if path.name.startswith(TEMP_PREFIX):
            continue
        try:
            reports.append(load_case_report(path))
        except AutosegError as e:
            _say(f"{path}: left out of {CSV_FILE} ({e})")
    return reports


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: Exception, case: InputCase) -> str:
    if isinstance(error, AutosegError):
        return str(error)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{case.files[0]}: prediction failed ({type(error).__name__}{': ' + detail[:200] if detail else ''})"


def _export(predictor: Predictor, case: InputCase, prepared: PreparedCase, logits, output_dir: Path,
            options: PredictOptions) -> None:
    """Restore, then preview, probabilities and report, and the label map last (it marks the case finished)."""
    label_path, *extra = output_paths(case, output_dir, options.save_probabilities)
    files = OutputFiles(label_path, *extra) if extra else OutputFiles(label_path)
    start = time.perf_counter()
    restored = predictor.restore(prepared, logits, keep_probabilities=options.save_probabilities)
    segmentation = restored.segmentation
    if options.preview:
        from autoseg.inference.preview import write_preview
        # drawn in the model's orientation, so every preview of a model shows the anatomy the same way round
        moved = reorientation(prepared.data.geometry.direction, predictor.models.plan.orientation)
        write_preview(output_dir / f"{case.case_id}{PREVIEW_SUFFIX}", reorient(prepared.data.image, moved),
                      reorient(segmentation, moved), [prepared.data.geometry.spacing[a] for a in moved.permutation],
                      predictor.label_names, case.case_id)
    prepared.timings["restore_s"] = time.perf_counter() - start
    prepared.timings["total_s"] = sum(prepared.timings.values())
    report = predictor.case_report(prepared, segmentation, case.case_id, str(label_path))
    write_outputs(restored, files,
                  before_label_map=lambda: write_case_report(report, output_dir / f"{case.case_id}{REPORT_SUFFIX}"))
