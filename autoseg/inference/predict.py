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
from autoseg.inference import INPUT_FORMATS, OUTPUT_TYPES
from autoseg.inference.inputs import InputCase, find_input_cases, image_files
from autoseg.inference.parts import share, torchrun_part
from autoseg.inference.predictor import PreparedCase, Predictor
from autoseg.inference.report import (CaseReport, load_case_report, write_case_report,
                                      write_predictions_csv)
from autoseg.jsonio import TEMP_PREFIX, write_json_atomic
from autoseg.output_location import (check_free_space, check_output_dir, describe_os_error, is_location_error,
                                     stops_the_run)
from autoseg.instances import InstanceRule
from autoseg.model.outputs import ENTROPY_SUFFIX, INSTANCES_SUFFIX, PROBABILITIES_SUFFIX
from autoseg.model.prediction import STEP, OutputFiles, write_outputs
from autoseg.preprocessing.case import write_like_source

SUMMARY_FILE = "prediction_summary.json"
CSV_FILE = "predictions.csv"
REPORT_SUFFIX = "_report.json"
PREVIEW_SUFFIX = "_preview.png"
SEG_SUFFIX = ".seg.dcm"


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
    output_type: str = "auto"  # OUTPUT_TYPES
    input_format: str = "auto"  # INPUT_FORMATS
    series: list[str] | None = None  # DICOM: only these SeriesInstanceUIDs
    channel_series: Path | None = None  # DICOM, multi-channel models: {case id: [series UID per channel]}
    prune_depth: int | None = None  # UNet++ only: predict with its sub-network of this depth
    instances: InstanceRule | None = None  # also each case's lesion instances: a map beside the label map, a list
    # in the report (autoseg.instances)


@dataclass(frozen=True)
class Outputs:
    """What every case of a run writes."""

    label_map: bool
    dicom_seg: bool
    probabilities: bool
    instances: bool = False  # an instance map beside each label map


def output_paths(case, output_dir: Path, outputs: Outputs) -> list[Path]:
    """Every data file a finished case has; the one listed first is written last (it marks the case finished):
    the label map, or the DICOM SEG when it is written alone."""
    paths = [output_dir / f"{case.case_id}{case.ending}"] if outputs.label_map else []
    if outputs.dicom_seg:
        paths.append(output_dir / f"{case.case_id}{SEG_SUFFIX}")
    if outputs.instances:
        paths.append(output_dir / f"{case.case_id}{INSTANCES_SUFFIX}{case.ending}")
    if outputs.probabilities:
        paths += [output_dir / f"{case.case_id}{PROBABILITIES_SUFFIX}",
                  output_dir / f"{case.case_id}{ENTROPY_SUFFIX}{case.ending}"]
    return paths


def find_cases(input_path, predictor: Predictor, options: PredictOptions) -> tuple[list, dict[str, str], bool]:
    """(cases, {case id: why refused}, whether they are DICOM) under INPUT, as options.input_format says."""
    from autoseg.dicom.series import holds_dicom, is_dicom_file

    input_path = Path(input_path)
    fmt = options.input_format
    if fmt not in INPUT_FORMATS:
        raise AutosegError(f"--input-format {fmt!r}: choose one of {', '.join(INPUT_FORMATS)}")
    if input_path.is_file() and is_dicom_file(input_path):
        raise AutosegError(f"{input_path}: one DICOM file; give the folder that holds its series")
    if fmt == "auto":
        has_images = input_path.is_file() or (input_path.is_dir() and bool(image_files(input_path)))
        fmt = "dicom" if input_path.is_dir() and not has_images and holds_dicom(input_path) else "files"
    if fmt == "files":
        if options.series or options.channel_series:
            raise AutosegError(f"{input_path}: --series and --channel-series choose DICOM series; this input is "
                               f"image files")
        return *find_input_cases(input_path, predictor.num_channels), False
    from autoseg.dicom.cases import dicom_cases
    from autoseg.dicom.series import find_series

    scan = find_series(input_path)
    if scan.skipped:
        _say(f"{input_path}: skipped " + ", ".join(f"{n} {kind} file(s)" for kind, n in sorted(scan.skipped.items())))
    cases, problems = dicom_cases(scan, predictor.channel_names, series_uids=options.series,
                                  channel_series=options.channel_series)
    if not cases and not problems:
        raise AutosegError(f"{input_path}: no DICOM series to predict")
    return cases, problems, True


def resolve_outputs(options: PredictOptions, dicom: bool) -> Outputs:
    kind = options.output_type
    if kind not in OUTPUT_TYPES:
        raise AutosegError(f"--output-type {kind!r}: choose one of {', '.join(OUTPUT_TYPES)}")
    if kind == "auto":
        kind = "dicom-seg" if dicom else "nifti"
    if kind != "nifti" and not dicom:
        raise AutosegError(f"--output-type {kind}: a DICOM SEG references its source DICOM series; this input is "
                           f"image files")
    if kind != "nifti":
        from autoseg.dicom import require_dicom_libraries
        require_dicom_libraries()
    label_map = kind in ("nifti", "both")
    return Outputs(label_map=label_map, dicom_seg=kind in ("dicom-seg", "both"),
                   probabilities=options.save_probabilities, instances=label_map and options.instances is not None)


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
                                   strict=options.strict, prune_depth=options.prune_depth)
    output_dir = Path(output_dir)
    if Path(input_path).is_dir() and output_dir.exists() and output_dir.resolve() == Path(input_path).resolve():
        raise AutosegError(f"{output_dir}: is the input folder; the label maps written there would be read as "
                           f"scans by the next run. Choose another output folder")
    cases, problems, dicom = find_cases(input_path, predictor, options)
    outputs = resolve_outputs(options, dicom)
    inputs = {p.resolve() for c in cases for p in c.files}
    for case in cases:
        for path in output_paths(case, output_dir, outputs):
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
        finished = [*output_paths(case, output_dir, outputs),
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
                                                   options, outputs)))
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


def _is_finished(case, files: list[Path]) -> bool:
    """--continue trusts nothing it did not check: every file present, the report readable, and the label
    map readable to its last byte with the shape the report recorded (a truncated or damaged output is
    predicted again)."""
    if not all(p.is_file() for p in files):
        return False
    from autoseg.dataset.image_io import read_image

    report_path = next(p for p in files if p.name.endswith(REPORT_SUFFIX))
    try:
        report = load_case_report(report_path)
        if files[0].name.endswith(SEG_SUFFIX):
            shape = _seg_shape(files[0], report)
        else:
            shape = list(read_image(files[0])[0].shape)
    except AutosegError:
        _say(f"{files[0]}: incomplete or damaged output, predicting {case.case_id} again")
        return False
    if shape != list(report.shape):
        _say(f"{files[0]}: shape {shape} differs from its report's {report.shape}, predicting "
             f"{case.case_id} again")
        return False
    return True


def _seg_shape(path: Path, report: CaseReport) -> list[int]:
    """(slices, rows, columns) of a written SEG, read to its last byte (slices: the report's, which the SEG
    does not hold when frames without a segment are omitted)."""
    import pydicom

    try:
        seg = pydicom.dcmread(path)
        seg.PixelData  # noqa: B018 - the whole file must be there
        return [report.shape[0], int(seg.Rows), int(seg.Columns)]
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on a truncated file
        raise AutosegError(f"{path}: unreadable ({type(e).__name__})") from None


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


def _one_line(error: Exception, case) -> str:
    if isinstance(error, AutosegError):
        return str(error)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = case.files[0] if isinstance(case, InputCase) else f"series {case.case_id} ({case.reference.folder})"
    return f"{where}: prediction failed ({type(error).__name__}{': ' + detail[:200] if detail else ''})"


def _export(predictor: Predictor, case, prepared: PreparedCase, logits, output_dir: Path,
            options: PredictOptions, outputs: Outputs) -> None:
    """Restore, then preview, probabilities, report and SEG, and the label map last (it marks the case
    finished; the SEG does when it is written alone)."""
    label_path = output_dir / f"{case.case_id}{case.ending}" if outputs.label_map else None
    seg_path = output_dir / f"{case.case_id}{SEG_SUFFIX}" if outputs.dicom_seg else None
    extra = output_paths(case, output_dir, outputs)[-2:] if outputs.probabilities else []
    files = OutputFiles(label_path, *extra)
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
    report = predictor.case_report(prepared, segmentation, case.case_id, str(label_path or ""))
    if seg_path is not None:
        report.dicom_seg = str(seg_path)
        report.source_series = [s.series_uid for s in case.series]
    numbered = None
    if options.instances is not None:
        numbered, report.instances = predictor.instances(prepared, segmentation, options.instances)
        if outputs.instances:
            report.instance_map = str(output_dir / f"{case.case_id}{INSTANCES_SUFFIX}{case.ending}")

    def report_and_seg():
        if report.instance_map:
            write_like_source(numbered, restored.props, Path(report.instance_map))
        write_case_report(report, output_dir / f"{case.case_id}{REPORT_SUFFIX}")
        if seg_path is not None:
            write_case_seg(predictor, case, segmentation, seg_path)

    write_outputs(restored, files, before_label_map=report_and_seg)


def write_case_seg(predictor: Predictor, case, segmentation, path: Path) -> None:
    """The case's label map as a DICOM SEG referencing its (first channel's) series, naming the model."""
    from autoseg import __version__
    from autoseg.dicom.seg import Algorithm, write_seg

    models = predictor.models
    source = Path(models.source)
    algorithm = Algorithm(name=source.parent.name if source.name == "models" else source.name, version=__version__, package_sha256=models.package_sha256,
                          description=" + ".join(f"{m.configuration} folds {','.join(m.folds)}" for m in models.models))
    write_seg(segmentation, case.reference, models.plan.labels, path, algorithm=algorithm,
              label_codes=models.plan.label_codes, regions=models.plan.regions)
