"""One case through the plan (transpose, crop, normalize, resample) and back again."""
from __future__ import annotations

import base64
import zlib

import numpy as np

from autoseg.dataset.image_write import write_image_like
from autoseg.dataset.orientation import Reorientation, reorient, reorientation, undo_reorientation
from autoseg.dataset.validation import CaseData
from autoseg.planning.plan_types import Plan
from autoseg.preprocessing.crop import OUTSIDE, crop_to_nonzero
from autoseg.preprocessing.normalize import normalize, zscore_mask
from autoseg.preprocessing.properties import PROPERTIES_VERSION, CaseProperties, SourceGeometry
from autoseg.planning.spacing import resampled_shape
from autoseg.preprocessing.resample import (axis_kernels, resample_argmax, resample_image, resample_label,
                                            resample_regions, resample_volume, separate_coarse_axis)

KERNEL_OF_ORDER = {0: "nearest", 1: "linear", 3: "cubic"}
CLASS_LOCATIONS_PER_CLASS = 10_000
LOCATION_SEED = 1234


def configuration_spacing(plan: Plan, configuration: str, spacing) -> list[float]:
    """3D target spacing of a configuration; 2d keeps each case's own spacing along the first axis."""
    target = list(plan.configurations[configuration].spacing)
    return target if len(target) == 3 else [float(spacing[0])] + target


def _kernels(plan: Plan, old_spacing, new_spacing, kernel: str) -> list[str]:
    coarse = separate_coarse_axis(old_spacing, new_spacing, plan.resampling.anisotropy_threshold)
    return axis_kernels(kernel, coarse, KERNEL_OF_ORDER[plan.resampling.coarse_axis_order])


def class_locations(label: np.ndarray, values, case_id: str, cap: int = CLASS_LOCATIONS_PER_CLASS):
    """Up to `cap` random voxel coordinates per foreground class (fixed seed per case), as flat z, y, x triples."""
    rng = np.random.default_rng([LOCATION_SEED, zlib.crc32(case_id.encode())])
    out = {}
    flat = label.ravel()
    for value in values:
        if value <= 0:
            continue
        index = np.flatnonzero(flat == value)
        if index.size > cap:
            index = np.sort(rng.choice(index, cap, replace=False))
        out[str(value)] = np.stack(np.unravel_index(index, label.shape), axis=1).ravel().tolist()
    return out


def preprocess_case(case: CaseData, plan: Plan, configuration: str, signature: str = "",
                    file_format: str = ".nii.gz", nifti_header: bytes | None = None):
    """Returns (image (C, z, y, x) float32, label (z, y, x) int8/int16 or None, CaseProperties).

    The scan is first moved into the plan's orientation (exact: permutations and flips), then transposed."""
    moved = reorientation(case.geometry.direction, plan.orientation)
    forward = [moved.permutation[a] for a in plan.transpose_forward]  # both axis moves in one transpose
    image = reorient(case.image, moved).transpose([0] + [a + 1 for a in plan.transpose_forward])
    label = reorient(case.label, moved).transpose(plan.transpose_forward) if case.label is not None else None
    spacing = [float(case.geometry.spacing[a]) for a in forward]
    shape_before = list(image.shape[1:])
    image, label, mask, bbox = crop_to_nonzero(image, label)
    shape_after_crop = list(image.shape[1:])
    image = normalize(image, plan.normalization, zscore_mask(mask, label))
    target = configuration_spacing(plan, configuration, spacing)
    new_shape = resampled_shape(shape_after_crop, spacing, target)
    order = plan.resampling.image_order
    image = resample_image(image, new_shape, _kernels(plan, spacing, target, KERNEL_OF_ORDER[order]))
    locations = {}
    if label is not None:
        label = resample_label(label, new_shape, _kernels(plan, spacing, target, "linear"))
        locations = class_locations(label, plan.label_scheme.foreground_values, case.case_id)
    g = case.geometry
    source = SourceGeometry(list(case.image.shape[1:]), list(g.spacing), list(g.origin), list(g.direction), file_format,
                            base64.b64encode(nifti_header).decode() if nifti_header else None)
    props = CaseProperties(PROPERTIES_VERSION, case.case_id, configuration, signature, source,
                           list(moved.permutation), list(moved.flips), spacing, target,
                           shape_before, bbox, shape_after_crop, list(new_shape), locations)
    return image, label, props


def _uncrop_and_untranspose(volume: np.ndarray, props: CaseProperties, plan: Plan, fill) -> np.ndarray:
    full = np.full(props.shape_before_crop, fill, dtype=volume.dtype)
    full[tuple(slice(a, b) for a, b in props.bbox)] = volume
    moved = Reorientation(tuple(props.reorient_permutation), tuple(props.reorient_flips))
    return np.ascontiguousarray(undo_reorientation(full.transpose(plan.transpose_backward), moved))


def restore_label(label: np.ndarray, props: CaseProperties, plan: Plan) -> np.ndarray:
    """A label map on the preprocessed grid -> the source scan's (z, y, x) grid."""
    label = np.where(label == OUTSIDE, 0, label).astype(np.uint8 if label.max(initial=0) < 256 else np.int16)
    kernels = _kernels(plan, props.target_spacing, props.spacing, "linear")
    label = resample_label(label, props.shape_after_crop, kernels)
    return _uncrop_and_untranspose(label, props, plan, 0)


def restore_probabilities(scores: np.ndarray, props: CaseProperties, plan: Plan, *,
                          from_logits: bool = False) -> np.ndarray:
    """(C, grid) class (or region) probabilities on the preprocessed grid -> (C, source grid); outside the
    crop: background for classes (1 in channel 0), no region for regions (0 everywhere).

    from_logits: the scores are logits, resampled first and turned into probabilities on the source grid
    (softmax over classes, a sigmoid per region), as nnU-Net does when it exports a prediction."""
    kernels = _kernels(plan, props.target_spacing, props.spacing, "linear")
    cropped = np.empty((len(scores),) + tuple(props.shape_after_crop), np.float32)
    for channel, target in zip(scores, cropped):
        resample_volume(channel, props.shape_after_crop, kernels, out=target)
    regions = plan.label_scheme.uses_regions
    if from_logits and regions:
        np.negative(cropped, out=cropped)  # 1 / (1 + exp(-x)), in place
        np.exp(cropped, out=cropped)
        cropped += 1
        np.reciprocal(cropped, out=cropped)
    elif from_logits:
        cropped -= cropped.max(axis=0, keepdims=True)  # a stable softmax, in place
        np.exp(cropped, out=cropped)
        cropped /= cropped.sum(axis=0, keepdims=True)
    return np.stack([_uncrop_and_untranspose(channel, props, plan, 1.0 if c == 0 and not regions else 0.0)
                     for c, channel in enumerate(cropped)])


def restore_segmentation(scores, props: CaseProperties, plan: Plan) -> np.ndarray:
    """(C, grid) logits on the preprocessed grid -> the label map on the source grid: the argmax over
    classes (ties go to the lower class), or the regions written in order where their logit is above 0.

    Resampled a block of slabs at a time (resample_argmax, resample_regions), so memory stays at one label
    map of the source's size plus a slab per class, whatever the size of the scan.
    """
    kernels = _kernels(plan, props.target_spacing, props.spacing, "linear")
    scheme = plan.label_scheme
    values = np.asarray(scheme.output_values)
    dtype = np.uint8 if values.max() < 256 and values.min() >= 0 else np.int16
    if scheme.uses_regions:
        segmentation = resample_regions(np.asarray(scores), props.shape_after_crop, kernels, values, dtype)
    else:
        segmentation = values.astype(dtype)[resample_argmax(np.asarray(scores), props.shape_after_crop, kernels)]
    return _uncrop_and_untranspose(segmentation, props, plan, 0)


def label_on_grid_of(label: np.ndarray, props: CaseProperties, other: CaseProperties, plan: Plan) -> np.ndarray:
    """A label map on one configuration's preprocessed grid of a case -> another configuration's grid of the
    same case (both grids cover the same crop, at different spacings)."""
    kernels = _kernels(plan, props.target_spacing, other.target_spacing, "linear")
    return resample_label(label, other.shape_after_resampling, kernels)


def write_like_source(array: np.ndarray, props: CaseProperties, path) -> None:
    """Write a (z, y, x) array restored to the source grid with the source's exact geometry."""
    s = props.source
    if list(array.shape) != list(s.shape):
        raise ValueError(f"array shape {array.shape} is not the source shape {tuple(s.shape)}")
    header = base64.b64decode(s.nifti_header_b64) if s.nifti_header_b64 else None
    write_image_like(array, path, s.spacing, s.origin, s.direction, header)
