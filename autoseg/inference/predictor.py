"""The Python API of prediction: load a model (package or training folder) once, segment many scans.

    from autoseg import Predictor
    predictor = Predictor.load("model.autoseg", device="cpu")
    seg = predictor.predict("scan.nii.gz")                 # -> nibabel image with the scan's header
    seg = predictor.predict(sitk_image)                    # -> SimpleITK.Image with the scan's geometry
    seg = predictor.predict(nib_image)                     # -> nibabel image, same header
    seg = predictor.predict(array, spacing=(3, 1, 1))      # (z, y, x) or (C, z, y, x) -> (z, y, x) uint8 array
    seg, report = predictor.predict(image, report=True)    # + the per-case CaseReport

Thread safety: one Predictor may be shared by threads. Reading, preprocessing, restoring and writing
run in the calling thread; the networks run one case at a time per Predictor (a lock), because a
second concurrent forward pass on the same device only competes for the same cores or GPU memory.
`autoseg predict` and `autoseg serve` are built on this class.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoseg.allocator import retain_freed_memory
from autoseg.dataset.image_io import Geometry, file_ending
from autoseg.dataset.orientation import reorient, reorientation
from autoseg.dataset.validation import CaseData
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase, read_any_case, read_input_case
from autoseg.inference.report import (CaseReport, InputFile, ModelInfo, instance_records, label_statistics,
                                      sha256_file)
from autoseg.instances import InstanceRule, instance_map
from autoseg.model.device import resolve_device
from autoseg.model.input_checks import check_scan
from autoseg.model.package import load_package
from autoseg.model.precision import autocast_dtype
from autoseg.model.prediction import (STEP, InferenceSettings, OutputFiles, PreparedInput, Restored,
                                      case_logits, restore, restore_and_write)
from autoseg.model.trained import ModelSet, load_models, prune
from autoseg.postprocessing import ScanIntensities
from autoseg.preprocessing.case import preprocess_case
from autoseg.preprocessing.normalize import normalize_scan

@dataclass
class PreparedCase:
    """A scan read, checked and preprocessed for every model; what the network step needs."""

    name: str  # the first input file, or "<memory>", for messages
    data: CaseData  # the scan as read, in its own geometry and orientation (for the report's statistics)
    file_format: str
    nifti_header: bytes | None
    inputs: list[PreparedInput]
    warnings: list[str]
    files: tuple[Path, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


def load_model_set(model, *, configuration: str | None = None, folds=None,
                   device: torch.device = torch.device("cpu")) -> ModelSet:
    """A model package (one file) or a training folder's models/ folder."""
    path = Path(model)
    if not path.is_file():
        return load_models(path, configuration, folds, device)
    models = load_package(path, device)
    if configuration is not None:
        chosen = [m for m in models.models if m.configuration == configuration]
        if not chosen:
            raise AutosegError(f"{path}: the package has no configuration {configuration} "
                               f"(it has {', '.join(m.configuration for m in models.models)})")
        models.models = chosen
    if folds is not None:
        folds = [str(f) for f in folds]
        for model in models.models:
            missing = [f for f in folds if f not in model.folds]
            if missing:
                raise AutosegError(f"{path}: {model.configuration} has no fold {missing[0]} "
                                   f"(packaged folds: {', '.join(model.folds)})")
            _keep_folds(model, folds)
    return models


def _keep_folds(model, folds: list[str]) -> None:
    keep = [model.folds.index(f) for f in folds]
    model.networks = [model.networks[i] for i in keep]
    model.folds = folds
    if model.previous_stage is not None:
        _keep_folds(model.previous_stage, folds)


class Predictor:
    """Loaded once, used for many scans; see the module docstring."""

    def __init__(self, models: ModelSet, settings: InferenceSettings, *, precision: str = "auto",
                 strict: bool = False):
        self.models = models
        self.settings = settings
        self.precision = precision
        self.strict = strict
        self._network_lock = threading.Lock()

    @classmethod
    def load(cls, model, *, device: str = "auto", configuration: str | None = None, folds=None,
             mirror: bool = True, step: float = STEP, precision: str = "auto", strict: bool = False,
             prune_depth: int | None = None) -> "Predictor":
        """model: a package file or a training folder's models/ folder. strict: input-check warnings fail the case.
        prune_depth: predict with a UNet++'s shallower sub-network (autoseg.model.trained.prune)."""
        if not 0 < step <= 1:
            raise AutosegError(f"--step must be in (0, 1], got {step}")
        dev = resolve_device(device)
        if dev.type == "cpu":
            retain_freed_memory()
        models = load_model_set(model, configuration=configuration, folds=folds, device=dev)
        if prune_depth is not None:
            prune(models.models, prune_depth)
        settings = InferenceSettings(dev, autocast_dtype(precision, dev), mirror, step)
        return cls(models, settings, precision=precision, strict=strict)

    @property
    def num_channels(self) -> int:
        return self.models.num_channels

    @property
    def label_names(self) -> dict[str, int]:
        return dict(self.models.plan.labels)

    # ------------------------------------------------------------------------------------ the steps

    @property
    def channel_names(self) -> list[str]:
        names = self.models.plan.channel_names
        return [names[k] for k in sorted(names, key=int)]

    def prepare_files(self, case) -> PreparedCase:
        """An InputCase (image files) or a DicomCase read, checked and preprocessed."""
        start = time.perf_counter()
        data, header, warnings = read_any_case(case, self.channel_names)
        read_s = time.perf_counter() - start
        prepared = self.prepare(data, header, case.ending, str(case.files[0]), warnings=warnings)
        prepared.files = case.files
        prepared.timings["read_s"] = read_s
        return prepared

    def prepare(self, data: CaseData, nifti_header: bytes | None, file_format: str, name: str, *,
                warnings: list[str] = ()) -> PreparedCase:
        """Input checks (`warnings`: the reader's own), then preprocessing for every model (and cascade first
        stage)."""
        start = time.perf_counter()
        warnings = list(warnings)
        if self.models.training_summary is not None:
            moved = reorientation(data.geometry.direction, self.models.plan.orientation)
            spacing = [data.geometry.spacing[a] for a in moved.permutation]
            warnings += check_scan(reorient(data.image, moved), spacing, self.models.training_summary, name=name)
        if warnings and self.strict:
            more = f" (and {len(warnings) - 1} more warning(s))" if len(warnings) > 1 else ""
            raise AutosegError(f"{warnings[0]}{more}; refused under --strict")
        inputs = []
        for model in self.models.models:
            image, _, props = preprocess_case(data, model.plan, model.configuration, file_format=file_format,
                                              nifti_header=nifti_header)
            previous = None
            if model.previous_stage is not None:
                stage = model.previous_stage
                low_image, _, low_props = preprocess_case(data, stage.plan, stage.configuration,
                                                          file_format=file_format, nifti_header=nifti_header)
                previous = PreparedInput(low_image, low_props)
            inputs.append(PreparedInput(image, props, previous))
        return PreparedCase(name, data, file_format, nifti_header, inputs, warnings,
                            timings={"preprocess_s": time.perf_counter() - start})

    def infer(self, prepared: PreparedCase) -> list[np.ndarray]:
        """Logits of every model on its preprocessed grid; one case at a time per Predictor."""
        start = time.perf_counter()
        with self._network_lock:
            out = [case_logits(model, inputs, self.settings).numpy()
                   for model, inputs in zip(self.models.models, prepared.inputs)]
        prepared.timings["network_s"] = time.perf_counter() - start
        return out

    def restore(self, prepared: PreparedCase, logits: list[np.ndarray], *,
                keep_probabilities: bool = False) -> Restored:
        """Back to the scan's own grid and orientation, postprocessed; nothing written."""
        members = [(p, inputs.props, model.plan)
                   for p, inputs, model in zip(logits, prepared.inputs, self.models.models)]
        return restore(members, postprocessing=self.models.postprocessing, keep_probabilities=keep_probabilities,
                       scan=self._scan_intensities(prepared))

    def _scan_intensities(self, prepared: PreparedCase) -> ScanIntensities | None:
        """The normalised scan on its own grid, when the postprocessing has a CRF step that looks at it."""
        postprocessing = self.models.postprocessing
        if postprocessing is None or postprocessing.crf is None:
            return None
        image = normalize_scan(prepared.data.image[:1], self.models.plan.normalization[:1])[0]
        return ScanIntensities(image, tuple(float(s) for s in prepared.data.geometry.spacing))

    def finish(self, prepared: PreparedCase, logits: list[np.ndarray], files: OutputFiles | None, *,
               report: bool = True, case_id: str = "") -> tuple[np.ndarray, CaseReport | None]:
        """Restore to the scan's grid, postprocess, write (when files are given); the label map and report."""
        start = time.perf_counter()
        members = [(p, inputs.props, model.plan)
                   for p, inputs, model in zip(logits, prepared.inputs, self.models.models)]
        segmentation = restore_and_write(members, files, postprocessing=self.models.postprocessing,
                                         scan=self._scan_intensities(prepared))
        prepared.timings["restore_write_s"] = time.perf_counter() - start
        if not report:
            return segmentation, None
        return segmentation, self.case_report(prepared, segmentation, case_id,
                                              str(files.label_map) if files is not None else "")

    def case_report(self, prepared: PreparedCase, segmentation: np.ndarray, case_id: str,
                    output: str) -> CaseReport:
        plan = self.models.plan
        spacing = list(prepared.data.geometry.spacing)
        labels = label_statistics(segmentation, prepared.data.image, spacing, plan.labels, self.channel_names)
        model_info = ModelInfo(source=self.models.source, package_sha256=self.models.package_sha256,
                               configurations=[m.configuration for m in self.models.models],
                               folds=list(self.models.models[0].folds), mirroring=self.settings.mirror,
                               step=self.settings.step, device=str(self.settings.device),
                               precision="float32" if self.settings.amp_dtype is None
                               else str(self.settings.amp_dtype).replace("torch.", ""))
        inputs = [InputFile(str(p), sha256_file(p)) for p in prepared.files]
        timings = {k: round(v, 4) for k, v in prepared.timings.items()}
        return CaseReport(case_id=case_id, inputs=inputs, model=model_info,
                          shape=list(segmentation.shape), spacing=spacing, labels=labels, timings_s=timings,
                          warnings=list(prepared.warnings), output=output)

    def instances(self, prepared: PreparedCase, segmentation: np.ndarray, rule: InstanceRule):
        """(the instance map, the report's list of instances) of a restored label map (autoseg.instances)."""
        plan = self.models.plan
        values = [v for v in plan.labels.values() if int(v) != 0 and int(v) != plan.ignore_label]
        numbered, found = instance_map(segmentation, prepared.data.geometry.spacing, values, rule)
        return numbered, instance_records(found, prepared.data.geometry, plan.labels)

    # ------------------------------------------------------------------------------------ public

    def predict_case_files(self, case: InputCase, files: OutputFiles, *, report: bool = True):
        """Read a case's files, predict, write `files`; returns (label map, report or None)."""
        start = time.perf_counter()
        prepared = self.prepare_files(case)
        logits = self.infer(prepared)
        segmentation, case_report = self.finish(prepared, logits, files, report=False)
        prepared.timings["total_s"] = time.perf_counter() - start
        if report:
            case_report = self.case_report(prepared, segmentation, case.case_id, str(files.label_map))
        return segmentation, case_report

    def predict(self, image, *, report: bool = False, output=None, spacing=None, origin=None, direction=None):
        """Segment one scan given as a path, SimpleITK.Image, nibabel image, or numpy array (+ geometry).

        Returns the same kind of object with the input's geometry: a path input returns a nibabel image
        (NIfTI) or SimpleITK.Image (other formats), or, with `output`, writes there and returns its Path.
        A numpy array is (z, y, x) or (C, z, y, x) in SimpleITK's axis order, with spacing in the same
        order (default 1 mm), origin and direction (row-major 3x3) in ITK's physical convention.
        """
        start = time.perf_counter()
        kind, data, header, file_format, name, files = _as_case(image, self.num_channels, spacing, origin,
                                                                direction)
        prepared = self.prepare(data, header, file_format, name)
        prepared.files = files
        logits = self.infer(prepared)
        output_files = OutputFiles(Path(output)) if output is not None else None
        segmentation, _ = self.finish(prepared, logits, output_files, report=False)
        prepared.timings["total_s"] = time.perf_counter() - start
        case_report = self.case_report(prepared, segmentation, _case_id_of(name),
                                       str(output) if output is not None else "") if report else None
        result = Path(output) if output is not None else _like_input(kind, image, segmentation, data.geometry)
        return (result, case_report) if report else result


def _case_id_of(name: str) -> str:
    if name == "<memory>":
        return "image"
    path = Path(name)
    ending = file_ending(path) or ""
    return path.name[:len(path.name) - len(ending)] if ending else path.stem


def _as_case(image, num_channels: int, spacing, origin, direction):
    """(kind, CaseData, NIfTI header, file format, name, files) for any accepted input."""
    import nibabel as nib
    import SimpleITK as sitk

    if isinstance(image, (str, Path)):
        path = Path(image)
        if file_ending(path) is None:
            raise AutosegError(f"{path}: not an image file this tool reads")
        case = InputCase(_case_id_of(str(path)), (path,), True)
        data, header = read_input_case(case, num_channels)
        return "path", data, header, case.ending, str(path), (path,)
    if isinstance(image, sitk.Image):
        array = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(array, -1, 0)
        if image.GetDimension() != 3:
            raise AutosegError(f"<memory>: a {image.GetDimension()}D SimpleITK image; expected 3D")
        geometry = Geometry(tuple(float(s) for s in image.GetSpacing()[::-1]),
                            tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))
        return "sitk", _case_data(array, geometry, num_channels), None, ".nii.gz", "<memory>", ()
    if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        from autoseg.dataset.image_io import geometry_from_affine
        array = np.asanyarray(image.dataobj)
        array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
        return ("nibabel", _case_data(array, geometry_from_affine(image.affine), num_channels),
                image.header.binaryblock, ".nii.gz", "<memory>", ())
    if isinstance(image, np.ndarray):
        geometry = Geometry(tuple(float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0))),
                            tuple(float(o) for o in (origin if origin is not None else (0.0, 0.0, 0.0))),
                            tuple(float(d) for d in (direction if direction is not None else np.eye(3).ravel())))
        return "numpy", _case_data(image, geometry, num_channels), None, ".nii.gz", "<memory>", ()
    raise AutosegError(f"cannot predict a {type(image).__name__}: give a path, SimpleITK.Image, nibabel image "
                       f"or numpy array")


def _case_data(array: np.ndarray, geometry: Geometry, num_channels: int) -> CaseData:
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != num_channels:
        raise AutosegError(f"<memory>: image of shape {array.shape}; the model expects {num_channels} channel(s) "
                           f"as (z, y, x) or (C, z, y, x)")
    if len(geometry.spacing) != 3 or not all(np.isfinite(geometry.spacing)) or min(geometry.spacing) <= 0:
        raise AutosegError(f"<memory>: spacing {geometry.spacing} must be three positive numbers")
    image = np.asarray(array, dtype=np.float32)
    if not np.isfinite(image).all():
        raise AutosegError(f"<memory>: {int((~np.isfinite(image)).sum())} NaN/Inf voxel(s)")
    return CaseData("image", image, None, geometry)


def _like_input(kind: str, image, segmentation: np.ndarray, geometry: Geometry):
    import nibabel as nib
    import SimpleITK as sitk

    if kind == "sitk":
        out = sitk.GetImageFromArray(segmentation)
        out.SetSpacing(image.GetSpacing())
        out.SetOrigin(image.GetOrigin())
        out.SetDirection(image.GetDirection())
        return out
    if kind in ("nibabel", "path") and (kind == "nibabel" or file_ending(image) in (".nii", ".nii.gz")):
        if kind == "path":
            image = nib.load(str(image))
        header = image.header.copy()
        header.set_data_dtype(segmentation.dtype)
        header.set_slope_inter(1.0, 0.0)
        out = type(image)(np.ascontiguousarray(segmentation.transpose(2, 1, 0)), image.affine, header)
        # keep the qform/sform codes and matrices exactly as the scan had them
        out.set_qform(image.get_qform(), int(image.header["qform_code"]))
        out.set_sform(image.get_sform(), int(image.header["sform_code"]))
        return out
    if kind == "path":
        out = sitk.GetImageFromArray(segmentation)
        out.SetSpacing([float(s) for s in geometry.spacing[::-1]])
        out.SetOrigin([float(o) for o in geometry.origin])
        out.SetDirection([float(d) for d in geometry.direction])
        return out
    return segmentation
