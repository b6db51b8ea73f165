"""The `autoseg predict` step: scans in, label maps out, each in its scan's own geometry.

The model is loaded once. Reading and preprocessing of the next cases and restoring/writing of
finished ones run in background threads while the network works on the current case (the heavy
parts — decompression, resampling, convolutions — release the GIL). A case that cannot be read
is reported in one line and the others go on.
"""
from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoseg.allocator import retain_freed_memory
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase, find_input_cases, read_input_case
from autoseg.inference.model import TrainedModel, load_trained_model, read_inference_choice
from autoseg.inference.outputs import ENTROPY_SUFFIX, PROBABILITIES_SUFFIX, normalized_entropy
from autoseg.inference.outputs import save_probabilities as save_probabilities_file
from autoseg.inference.sliding_window import STEP, predict_logits, softmax_
from autoseg.jsonio import TEMP_PREFIX, write_json_atomic
from autoseg.postprocessing import Postprocessing, apply_postprocessing
from autoseg.preprocessing.case import (label_on_grid_of, preprocess_case, restore_probabilities,
                                        restore_segmentation, write_like_source)
from autoseg.preprocessing.properties import CaseProperties
from autoseg.training.cascade import one_hot_channels
from autoseg.training.distributed import resolve_device
from autoseg.training.precision import autocast_dtype

SUMMARY_FILE = "prediction_summary.json"


@dataclass
class PredictResult:
    output_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Prepared:
    """One case preprocessed for one model."""

    image: np.ndarray
    props: CaseProperties
    previous: tuple[np.ndarray, CaseProperties] | None = None  # the cascade's low-resolution input


def output_paths(case: InputCase, output_dir: Path, save_probabilities: bool) -> list[Path]:
    """Every file a finished case has; the label map is written last and listed first."""
    paths = [output_dir / f"{case.case_id}{case.ending}"]
    if save_probabilities:
        paths += [output_dir / f"{case.case_id}{PROBABILITIES_SUFFIX}",
                  output_dir / f"{case.case_id}{ENTROPY_SUFFIX}{case.ending}"]
    return paths


def predict(input_path, output_dir, models_dir, configuration: str | None = None, folds=None, mirror: bool = True,
            step: float = STEP, device: str = "auto", save_probabilities: bool = False, workers: int | None = None,
            skip_existing: bool = False, progress: bool = True) -> PredictResult:
    """Predict every case under `input_path` into `output_dir`; see PredictResult.failed for cases that failed."""
    from tqdm import tqdm

    if not 0 < step <= 1:
        raise AutosegError(f"--step must be in (0, 1], got {step}")
    dev = resolve_device(device)
    if dev.type == "cpu":
        retain_freed_memory()
    models, postprocessing = load_models(models_dir, configuration, folds, dev)
    output_dir = Path(output_dir)
    cases, problems = find_input_cases(input_path, models[0].num_channels)
    inputs = {p.resolve() for c in cases for p in c.files}
    for case in cases:
        for path in output_paths(case, output_dir, save_probabilities):
            if path.resolve() in inputs:
                raise AutosegError(f"{path}: the output would overwrite an input scan; choose another output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f"{TEMP_PREFIX}*"):  # left by a killed run; never a finished output
        stale.unlink(missing_ok=True)

    result = PredictResult(output_dir)
    for case_id, problem in problems.items():
        result.failed[case_id] = problem
        _say(problem)
    todo = []
    for case in cases:
        if skip_existing and all(p.is_file() for p in output_paths(case, output_dir, save_probabilities)):
            result.skipped.append(case.case_id)
        else:
            todo.append(case)

    workers = max(1, workers if workers is not None else 1)
    amp_dtype = autocast_dtype("auto", dev)
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
                ahead.append((case, readers.submit(_prepare, case, models)))

        def collect(limit: int):
            while len(exporting) > limit:
                case, future = exporting.popleft()
                try:
                    future.result()
                    result.written.append(case.case_id)
                except Exception as e:  # noqa: BLE001 - one bad case must not stop the others
                    result.failed[case.case_id] = _one_line(e, case)
                    _say(result.failed[case.case_id])

        refill()
        bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not progress, dynamic_ncols=True)
        while ahead:
            case, future = ahead.popleft()
            refill()
            try:
                prepared = future.result()
                probabilities = [_predict_probabilities(model, inputs, dev, amp_dtype, mirror, step)
                                 for model, inputs in zip(models, prepared)]
            except Exception as e:  # noqa: BLE001 - reported per case; the run goes on
                result.failed[case.case_id] = _one_line(e, case)
                _say(result.failed[case.case_id])
                bar.update()
                continue
            del future
            collect(workers - 1)  # bounded: at most `workers` finished cases wait in memory
            exporting.append((case, writers.submit(_export, case, prepared, probabilities, models, postprocessing,
                                                   output_dir, save_probabilities)))
            del prepared, probabilities
            bar.update()
        collect(0)
        bar.close()
    write_json_atomic(output_dir / SUMMARY_FILE, {
        "configuration": " + ".join(m.configuration for m in models), "folds": models[0].folds,
        "mirroring": mirror, "step": step,
        "written": sorted(result.written), "skipped": sorted(result.skipped),
        "failed": dict(sorted(result.failed.items()))})
    return result


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: Exception, case: InputCase) -> str:
    if isinstance(error, AutosegError):
        return str(error)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{case.files[0]}: prediction failed ({type(error).__name__}{': ' + detail[:200] if detail else ''})"


def load_models(models_dir, configuration: str | None, folds, device) -> tuple[list[TrainedModel], Postprocessing | None]:
    """The model(s) to predict with and the postprocessing to apply.

    Without --config, find-best's choice (models/inference.json: one configuration or an ensemble, and
    its postprocessing) when there is one; else one configuration with its own saved postprocessing.
    """
    models_dir = Path(models_dir)
    choice = read_inference_choice(models_dir) if configuration is None else None
    if choice is None:
        model = load_trained_model(models_dir, configuration, folds, device)
        return [model], model.postprocessing
    configurations, postprocessing = choice
    return [load_trained_model(models_dir, c, folds, device) for c in configurations], postprocessing


def _prepare(case: InputCase, models: list[TrainedModel]) -> list[_Prepared]:
    data, header = read_input_case(case, models[0].num_channels)
    prepared = []
    for model in models:
        image, _, props = preprocess_case(data, model.plan, model.configuration, file_format=case.ending,
                                          nifti_header=header)
        previous = None
        if model.previous_stage is not None:
            stage = model.previous_stage
            low_image, _, low_props = preprocess_case(data, stage.plan, stage.configuration,
                                                      file_format=case.ending, nifti_header=header)
            previous = (low_image, low_props)
        prepared.append(_Prepared(image, props, previous))
    return prepared


def _network_probabilities(model: TrainedModel, image: np.ndarray, dev, amp_dtype, mirror: bool,
                           step: float) -> torch.Tensor:
    config = model.plan.configurations[model.configuration]
    mirror_axes = tuple(range(config.ndim)) if mirror else ()
    logits = predict_logits(model.networks, image, config.patch_size, len(model.plan.labels), dev, mirror_axes,
                            amp_dtype, step)
    return softmax_(logits)


def cascade_channels(low_probabilities: torch.Tensor, low_props: CaseProperties, props: CaseProperties,
                     stage: TrainedModel) -> np.ndarray:
    """The low-resolution stage's segmentation on the full-resolution grid, one-hot over foreground
    classes: the extra input channels of a cascade network."""
    segmentation = low_probabilities.argmax(0).numpy().astype(np.uint8)
    segmentation = label_on_grid_of(segmentation, low_props, props, stage.plan)
    return one_hot_channels(segmentation, low_probabilities.shape[0])


def _predict_probabilities(model: TrainedModel, prepared: _Prepared, dev, amp_dtype, mirror: bool,
                           step: float) -> torch.Tensor:
    image = prepared.image
    if model.previous_stage is not None:
        low_image, low_props = prepared.previous
        low = _network_probabilities(model.previous_stage, low_image, dev, amp_dtype, mirror, step)
        image = np.concatenate([image, cascade_channels(low, low_props, prepared.props, model.previous_stage)])
    return _network_probabilities(model, image, dev, amp_dtype, mirror, step)


def _export(case: InputCase, prepared: list[_Prepared], probabilities: list[torch.Tensor],
            models: list[TrainedModel], postprocessing: Postprocessing | None, output_dir: Path,
            save_probabilities: bool) -> None:
    label_path, *extra = output_paths(case, output_dir, save_probabilities)
    props = prepared[0].props
    values = sorted(models[0].plan.labels.values())
    restored = None
    if len(models) == 1:  # class by class: the memory-light path
        segmentation = restore_segmentation(probabilities[0].numpy(), props, models[0].plan)
        if save_probabilities:
            restored = restore_probabilities(probabilities[0].numpy(), props, models[0].plan)
    else:  # an ensemble averages probabilities on the scan's own grid, where all members meet
        for p, model, inputs in zip(probabilities, models, prepared):
            member = restore_probabilities(p.numpy(), inputs.props, model.plan)
            restored = member if restored is None else restored + member
        restored /= len(models)
        segmentation = np.asarray(values).astype(np.uint8 if max(values) < 256 else np.int16)[restored.argmax(0)]
    if postprocessing is not None and not postprocessing.is_identity:
        segmentation = apply_postprocessing(segmentation, postprocessing)
    if save_probabilities:
        save_probabilities_file(extra[0], restored, values)
        write_like_source(normalized_entropy(restored), props, extra[1])
    write_like_source(segmentation, props, label_path)  # last: its presence marks the case finished
