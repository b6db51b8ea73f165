"""Is this scan like the ones the model was trained on? Cheap checks run on every scan at prediction.

A trained model travels with a `TrainingSummary` (what its training scans looked like, measured from
the fingerprint and the plan). Before predicting, `check_scan` compares a scan with it and returns
one line per problem, each starting with the scan's file name and saying what was found and what
was expected. The caller writes the lines into the case's report; with `--strict` any line fails
the case. Nothing is refused silently, and nothing here refuses anything by itself.

Frame: spacings and sizes are per array axis in the fingerprint's frame, i.e. the scan after it
has been brought into the plan's orientation (`autoseg.dataset.orientation`) and before the plan's
`transpose_forward`. Arrays are (C, z, y, x); spacing is (z, y, x) in mm.

Rules, with their thresholds and why:

Channels
  * The scan's channel count differs from the model's. The caller treats this as an error too;
    a line is still returned so the report says why. Intensity checks are then skipped (which
    channel is which is unknown); geometry checks still run.

Geometry (per axis)
  * Spacing outside [smallest training spacing / 2, largest training spacing * 2] (the bounds
    themselves pass). The scan is resampled to the model's spacing either way, but beyond a factor
    of two the network sees structures at a resolution it never trained on (a 5 mm slab where
    training had 1 mm slices blurs small structures; much finer scans cost memory and time).
    A spacing that is not a positive number is always flagged.
  * Size in voxels below a quarter of the smallest or above four times the largest training size:
    probably a different body region or field of view (a head-and-neck scan for an abdominal
    model, a single-slab localiser). Any axis under 4 voxels is flagged on its own (a 2D slice
    or a broken series), unless training scans were that thin too (a dataset of single slices).

Every channel
  * NaN or infinite values (dataset validation refuses them in training data).
  * Constant channel (every voxel equal): an empty or failed export.
  * More than 99.9 % of voxels exactly 0: nearly empty (a blank series, a mask saved as an image).
  Further intensity rules for a channel are skipped after one of these fires.

CT channels (plan scheme "ct": the network was trained on Hounsfield units clipped to the training
foreground's 0.5/99.5 percentiles, so the absolute scale matters). Real CT: air about -1000 (some
scanners clip at -1024), fat -100, soft tissue 0-100, bone up to about 3000, metal clipped at 3071
or, on extended scales, higher in a small fraction of voxels; outside the reconstructed field of
view exporters write padding such as -1024, -2000, -3024 or -32768. The rules are conservative so
that they do not fire on any of that:
  * Padding: values below -1100 HU cannot be tissue or air, so they are padding. Padding filling
    more than half of the scan is flagged ("padding value"): the body is a small part of the scan,
    or an integer overflow/padding convention went wrong. Less than half is normal (the corners
    outside a round field of view) and is then ignored by the rules below.
  * Range: padding aside, all values within 20 HU of each other (e.g. [0, 1] or a z-scored image):
    a normalised or rescaled image, not HU. (Any real CT has noise and tissue contrast far above
    20 HU.) The two rules below are skipped then.
  * No air: padding aside, no voxel below -200 HU. Air outside the body, in the lungs or the bowel
    is below -900 in any CT that is not cropped inside the body; without it the image is most
    likely an MR, or a CT stored without its DICOM rescale intercept (air near 0, water near 1024).
    A CT deliberately cropped inside the body would also trigger this; the line says so.
  * Too bright: 99.5th percentile above 4000 HU. Dense bone stays below about 3000 and metal on an
    extended scale fills far less than 0.5 % of a scan; a higher percentile means scaled values or
    another unit.

Non-CT channels ("zscore", "rescale_0_1": normalised per scan, which absorbs any scale and offset,
so a scan brighter or darker than the training scans is not flagged)
  * Integer-limit padding: at least 0.1 % of voxels at -32768 or -2147483648 (the int16/int32
    minimum, a common padding or overflow value). Per-scan normalisation includes them, and even a
    few such voxels drag the mean and std far from the tissue's.
  * Negative values: only for "zscore" channels normalised over the nonzero mask (the plan's
    `use_nonzero_mask`), when no training foreground voxel was negative and at least 1 % of the
    scan's voxels are. The model then treats exact zeros as background; negative values suggest the
    scan was already normalised or shifted, so its background is not 0 and the mask (and so the
    normalisation) differs from training. Without the mask, negatives are harmless and not flagged.
  * Scheme "none" (no normalisation, the network sees raw values): the scan's robust range (0.5 and
    99.5 percentiles of its nonzero voxels) not overlapping the training foreground's 0.5-99.5
    percentile range at all: the values are on another scale.

Speed: minimum, maximum and the count of zeros are exact passes over each channel; percentiles and
fractions use a strided subsample of at most about 2 million voxels, so a 512x512x300 CT is checked
in a fraction of a second.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoseg.errors import AutosegError
from autoseg.fingerprint import Fingerprint
from autoseg.jsonio import from_dict
from autoseg.planning.plan_types import Plan

SUMMARY_VERSION = 1

SPACING_FACTOR = 2.0  # spacing allowed within [min / 2, max * 2] of training
SHAPE_FACTOR = 4.0  # size allowed within [min / 4, max * 4] of training
MIN_AXIS_VOXELS = 4  # fewer voxels along an axis than this is flagged (unless training was as thin)
NEARLY_EMPTY_ZERO_FRACTION = 0.999
MAX_SAMPLE_VOXELS = 2_000_000

CT_PADDING_BELOW = -1100.0  # HU; nothing physical (air is -1000) lies below
CT_MAX_PADDING_FRACTION = 0.5
CT_MIN_RANGE = 20.0  # HU spanned by the non-padding voxels
CT_AIR_BELOW = -200.0  # a CT of a body in air has voxels below this
CT_MAX_P99_5 = 4000.0  # HU

INT_LIMIT_VALUES = (-32768.0, -2147483648.0)
MIN_INT_LIMIT_FRACTION = 0.001
MIN_NEGATIVE_FRACTION = 0.01

AXIS_NAMES = ("z", "y", "x")
_REL_TOL = 1e-9  # bounds are inclusive: 2x the largest spacing passes despite float rounding


@dataclass
class ChannelIntensity:
    """Foreground (label > 0) intensities of one channel over the training cases."""

    percentile_00_5: float
    percentile_99_5: float
    mean: float
    std: float
    min: float
    max: float


@dataclass
class TrainingSummary:
    """What the training scans looked like, for checking scans at prediction (fingerprint frame)."""

    version: int
    num_channels: int
    channel_names: list[str]
    channel_schemes: list[str]  # the plan's normalization scheme per channel; "ct": Hounsfield units
    channel_nonzero_mask: list[bool]  # the plan's use_nonzero_mask per channel
    spacing_min: list[float]  # mm per axis
    spacing_max: list[float]
    spacing_median: list[float]
    shape_min: list[int]  # voxels per axis, before cropping
    shape_max: list[int]
    num_training_cases: int
    foreground_intensity: list[ChannelIntensity]


def training_summary(fingerprint: Fingerprint, plan: Plan) -> TrainingSummary:
    """Summarise the training scans from the dataset's fingerprint and the plan made from it."""
    if not fingerprint.cases:
        raise AutosegError(f"fingerprint of {fingerprint.dataset_name} has no cases")
    n = len(plan.normalization)
    if n != len(fingerprint.foreground_intensity):
        raise AutosegError(f"the plan normalizes {n} channel(s) but the fingerprint has "
                           f"{len(fingerprint.foreground_intensity)}")
    spacings = fingerprint.spacings
    shapes = np.array([c.shape_before_crop for c in fingerprint.cases], dtype=np.int64)
    return TrainingSummary(
        version=SUMMARY_VERSION, num_channels=n,
        channel_names=[rule.channel for rule in plan.normalization],
        channel_schemes=[rule.scheme for rule in plan.normalization],
        channel_nonzero_mask=[bool(rule.use_nonzero_mask) for rule in plan.normalization],
        spacing_min=[float(s) for s in spacings.min(axis=0)],
        spacing_max=[float(s) for s in spacings.max(axis=0)],
        spacing_median=[float(s) for s in np.median(spacings, axis=0)],
        shape_min=[int(s) for s in shapes.min(axis=0)],
        shape_max=[int(s) for s in shapes.max(axis=0)],
        num_training_cases=len(fingerprint.cases),
        foreground_intensity=[ChannelIntensity(float(s.percentile_00_5), float(s.percentile_99_5), float(s.mean),
                                               float(s.std), float(s.min), float(s.max))
                              for s in fingerprint.foreground_intensity])


def summary_from_dict(data: dict, where: str = "training summary") -> TrainingSummary:
    """Inverse of jsonio.to_dict, refusing other summary versions."""
    found = data.get("version") if isinstance(data, dict) else None
    if found != SUMMARY_VERSION:
        raise AutosegError(f"{where}: TrainingSummary version {found!r} is not supported (expected {SUMMARY_VERSION})")
    return from_dict(TrainingSummary, data, where)


def check_scan(image: np.ndarray, spacing: Sequence[float], summary: TrainingSummary, *, name: str) -> list[str]:
    """One line per way the scan differs from the training scans (empty when it looks like them).

    image: (C, z, y, x); spacing: mm per array axis; both in the fingerprint's frame (see module doc).
    name: the scan's file, starting every line.
    """
    ndim = len(summary.spacing_min)
    if image.ndim != ndim + 1:
        raise ValueError(f"{name}: expected a (C, {ndim} axes) array, got shape {image.shape}")
    if len(spacing) != ndim:
        raise ValueError(f"{name}: expected {ndim} spacings, got {len(spacing)}")
    lines: list[str] = []
    channels_match = image.shape[0] == summary.num_channels
    if not channels_match:
        lines.append(f"{name}: the scan has {image.shape[0]} channel(s); the model was trained on "
                     f"{summary.num_channels} ({', '.join(summary.channel_names)})")
    lines += [f"{name}: {m}" for m in _spacing_problems(spacing, summary)]
    lines += [f"{name}: {m}" for m in _shape_problems(image.shape[1:], summary)]
    if channels_match:
        for c in range(image.shape[0]):
            label = f"channel {c} ({summary.channel_names[c]})"
            lines += [f"{name}: {label}: {m}" for m in _channel_problems(image[c], c, summary)]
    return lines


def _axis(a: int, ndim: int) -> str:
    names = AXIS_NAMES[-ndim:] if ndim <= len(AXIS_NAMES) else ()
    return f"axis {a} ({names[a]})" if names else f"axis {a}"


def _g(value: float) -> str:
    return f"{value:.3g}"


def _spacing_problems(spacing: Sequence[float], summary: TrainingSummary) -> list[str]:
    out = []
    ndim = len(spacing)
    for a, s in enumerate(spacing):
        s = float(s)
        lo, hi = summary.spacing_min[a], summary.spacing_max[a]
        allowed = f"expected {_g(lo / SPACING_FACTOR)} to {_g(hi * SPACING_FACTOR)} mm"
        if not math.isfinite(s) or s <= 0:
            out.append(f"spacing {s!r} along {_axis(a, ndim)} is not a positive number; {allowed}")
        elif s > hi * SPACING_FACTOR * (1 + _REL_TOL):
            out.append(f"spacing {_g(s)} mm along {_axis(a, ndim)} is {s / hi:.2g}x the largest training "
                       f"spacing ({_g(hi)} mm); {allowed}")
        elif s < lo / SPACING_FACTOR * (1 - _REL_TOL):
            out.append(f"spacing {_g(s)} mm along {_axis(a, ndim)} is {s / lo:.2g}x the smallest training "
                       f"spacing ({_g(lo)} mm); {allowed}")
    return out


def _shape_problems(shape: Sequence[int], summary: TrainingSummary) -> list[str]:
    out = []
    ndim = len(shape)
    for a, n in enumerate(shape):
        lo, hi = summary.shape_min[a], summary.shape_max[a]
        trained = f"training scans had {lo} to {hi}"
        if n < MIN_AXIS_VOXELS and lo >= MIN_AXIS_VOXELS:
            out.append(f"only {n} voxel(s) along {_axis(a, ndim)}, too thin for a 3D scan; {trained}")
        elif n * SHAPE_FACTOR < lo:
            out.append(f"{n} voxels along {_axis(a, ndim)} is under 1/{SHAPE_FACTOR:g} of the smallest training "
                       f"size ({lo}); {trained} (another body region or field of view?)")
        elif n > hi * SHAPE_FACTOR:
            out.append(f"{n} voxels along {_axis(a, ndim)} is {n / hi:.2g}x the largest training size ({hi}); "
                       f"{trained} (another body region or field of view?)")
    return out


def _subsample(channel: np.ndarray, max_voxels: int = MAX_SAMPLE_VOXELS) -> np.ndarray:
    """A strided, evenly spread subsample of at most max_voxels values, as float64."""
    if channel.size <= max_voxels:
        return channel.astype(np.float64).ravel()
    step = max(1, int((channel.size / max_voxels) ** (1.0 / channel.ndim)))
    while math.prod(-(-s // step) for s in channel.shape) > max_voxels:
        step += 1
    return channel[(slice(None, None, step),) * channel.ndim].astype(np.float64).ravel()


def _channel_problems(channel: np.ndarray, c: int, summary: TrainingSummary) -> list[str]:
    lo, hi = float(channel.min()), float(channel.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ["contains NaN or infinite values (training scans had none)"]
    if lo == hi:
        return [f"is constant (every voxel is {_g(lo)}): an empty or failed export"]
    nonzero = int(np.count_nonzero(channel))
    if nonzero < (1.0 - NEARLY_EMPTY_ZERO_FRACTION) * channel.size:
        return [f"all but {nonzero} of {channel.size} voxels are 0 (over {100 * NEARLY_EMPTY_ZERO_FRACTION:g}%): "
                f"nearly empty (expected an image; training foreground averaged "
                f"{_g(summary.foreground_intensity[c].mean)})"]
    sample = _subsample(channel)
    if summary.channel_schemes[c] == "ct":
        return _ct_problems(sample, lo)
    return _other_problems(sample, c, summary)


def _ct_problems(sample: np.ndarray, minimum: float) -> list[str]:
    valid = sample[sample >= CT_PADDING_BELOW]
    out = []
    padding = 1.0 - valid.size / sample.size
    if padding > CT_MAX_PADDING_FRACTION:
        out.append(f"padding value {_g(minimum)} (below {CT_PADDING_BELOW:g} HU, not tissue or air) fills "
                   f"about {100 * padding:.0f}% of the scan; expected under {100 * CT_MAX_PADDING_FRACTION:.0f}% "
                   f"(check the field of view, or an integer overflow in the export)")
    if valid.size == 0:
        return out
    vmin, vmax = float(valid.min()), float(valid.max())
    if vmax - vmin < CT_MIN_RANGE:
        out.append(f"values span only {_g(vmin)} to {_g(vmax)}: not Hounsfield units (a CT spans air near -1000 "
                   f"to soft tissue 0-100 and bone); looks like a normalised or rescaled image")
        return out
    if vmin > CT_AIR_BELOW:
        out.append(f"no voxel below {CT_AIR_BELOW:g} HU (minimum {_g(vmin)}, median {_g(float(np.median(valid)))}): "
                   f"a CT in Hounsfield units has air near -1000; looks like an MR, or a CT stored without its "
                   f"rescale intercept (ignore if the scan is a CT cropped inside the body)")
    p995 = float(np.percentile(valid, 99.5))
    if p995 > CT_MAX_P99_5:
        out.append(f"99.5th percentile {_g(p995)} is above {CT_MAX_P99_5:g} HU (bone reaches about 3000): "
                   f"values look scaled or not in Hounsfield units")
    return out


def _other_problems(sample: np.ndarray, c: int, summary: TrainingSummary) -> list[str]:
    out = []
    scheme = summary.channel_schemes[c]
    train = summary.foreground_intensity[c]
    at_limit = np.isin(sample, INT_LIMIT_VALUES)
    limit_fraction = float(at_limit.mean())
    if limit_fraction >= MIN_INT_LIMIT_FRACTION:
        value = float(sample[at_limit][0])
        out.append(f"{100 * limit_fraction:.2g}% of voxels are {value:.0f} (an integer limit): padding value or "
                   f"integer overflow; the scan's normalisation includes them (training foreground "
                   f"{_g(train.min)} to {_g(train.max)})")
    if scheme == "zscore" and summary.channel_nonzero_mask[c] and train.min >= 0 and not out:
        negative = float((sample < 0).mean())
        if negative >= MIN_NEGATIVE_FRACTION:
            out.append(f"{100 * negative:.2g}% of voxels are negative (minimum {_g(float(sample.min()))}) but no "
                       f"training foreground voxel was (minimum {_g(train.min)}); the model normalises this "
                       f"channel over nonzero voxels only, so a background that is not 0 changes the "
                       f"normalisation: was the scan already normalised or shifted?")
    if scheme == "none":
        nonzero = sample[sample != 0]
        if nonzero.size:
            p005, p995 = (float(v) for v in np.percentile(nonzero, [0.5, 99.5]))
            if p995 < train.percentile_00_5 or p005 > train.percentile_99_5:
                out.append(f"intensities {_g(p005)} to {_g(p995)} (0.5-99.5 percentiles) do not overlap the "
                           f"training foreground's {_g(train.percentile_00_5)} to {_g(train.percentile_99_5)}; "
                           f"this channel is not normalised, so the values are on another scale")
    return out
