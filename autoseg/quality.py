"""The dataset report `autoseg plan` writes beside the plan: cases worth a look before training.

Informational: the data may be right (a child among adults, a deliberately cropped scan), so nothing is
refused; every finding names its cases. Measured while the fingerprint reads each case
(`fingerprint.CaseQuality`), so the report costs no second pass over the data.

Outliers are robust: a value is flagged when it is far from the median both in median absolute
deviations (|z| > OUTLIER_Z, with z = (x - median) / (1.4826 MAD)) and by a ratio (or, for intensities,
by half the median range), so a homogeneous dataset flags nothing for tiny differences and a
heterogeneous one flags only what stands apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.fingerprint import Fingerprint
from autoseg.jsonio import atomic_path, write_json_atomic

REPORT_VERSION = 1
REPORT_FILE = "dataset_report.json"
OVERVIEW_FILE = "dataset_overview.png"
OUTLIER_Z = 4.0
SPACING_RATIO = 1.5  # and at least this far from the median spacing of its axis
SIZE_RATIO = 2.0  # voxels
VOLUME_RATIO = 3.0  # a label's volume in mm^3
OUTSIDE_SHARE = 0.01  # of a case's foreground voxels lying where the image is 0
RARE_LABEL_SHARE = 0.1  # a label in fewer than this share of the cases
LISTED = 10  # cases named per finding


@dataclass
class Finding:
    kind: str
    cases: list[str]
    message: str  # one line, naming the (first LISTED) cases


@dataclass
class DatasetReport:
    version: int
    dataset_name: str
    num_cases: int
    findings: list[Finding] = field(default_factory=list)
    flagged_cases: list[str] = field(default_factory=list)


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values == median, 0.0, (values - median) / (mad if mad > 0 else 0.0))


def _outliers(values: np.ndarray, ratio: float) -> np.ndarray:
    """Positive values far from their median by robust z and by a factor `ratio` either way."""
    logs = np.log(values)
    return (np.abs(_robust_z(logs)) > OUTLIER_Z) & (np.abs(logs - np.median(logs)) > math.log(ratio))


def _named(cases: list[str]) -> str:
    more = f" and {len(cases) - LISTED} more" if len(cases) > LISTED else ""
    return ", ".join(cases[:LISTED]) + more


def dataset_report(fingerprint: Fingerprint) -> DatasetReport:
    cases = fingerprint.cases
    ids = [c.case_id for c in cases]
    findings: list[Finding] = []

    def add(kind: str, flagged: list[str], text: str) -> None:
        if flagged:
            findings.append(Finding(kind, flagged, f"{text}: {_named(flagged)}"))

    orientations: dict[str, list[str]] = {}
    for c in cases:
        orientations.setdefault(c.orientation, []).append(c.case_id)
    if len(orientations) > 1:
        common = max(orientations, key=lambda o: len(orientations[o]))
        others = sorted(i for o, group in orientations.items() if o != common for i in group)
        stored = ", ".join(f"{o} {len(g)}" for o, g in sorted(orientations.items()))
        add("mixed_orientation", others, f"{len(others)} case(s) stored in another orientation than most ({common}; "
                                         f"{stored}); each is reoriented, but check the conversion")
    spacing = np.array([c.spacing for c in cases], dtype=np.float64)
    for axis, name in enumerate("zyx"):
        flagged = np.flatnonzero(_outliers(spacing[:, axis], SPACING_RATIO))
        add("spacing_outlier", [ids[k] for k in flagged],
            f"spacing outlier along {name} (median {np.median(spacing[:, axis]):.3g} mm)")
    voxels = np.array([np.prod(c.shape_before_crop) for c in cases], dtype=np.float64)
    add("size_outlier", [ids[k] for k in np.flatnonzero(_outliers(voxels, SIZE_RATIO))],
        f"size outlier (median {np.median(voxels) / 1e6:.3g} M voxels)")
    measured = [c for c in cases if c.quality is not None]
    if measured:
        for channel, name in sorted(fingerprint.channel_names.items(), key=lambda kv: int(kv[0])):
            ranges = np.array([c.quality.intensity_range[int(channel)] for c in measured])
            width = float(np.median(ranges[:, 1] - ranges[:, 0])) or 1.0
            far = np.zeros(len(measured), bool)
            for bound in (0, 1):
                far |= (np.abs(_robust_z(ranges[:, bound])) > OUTLIER_Z) & (
                    np.abs(ranges[:, bound] - np.median(ranges[:, bound])) > 0.5 * width)
            add("intensity_outlier", [measured[k].case_id for k in np.flatnonzero(far)],
                f"intensity range outlier in channel {channel} ({name}; median 0.5-99.5th percentile "
                f"{np.median(ranges[:, 0]):.4g} to {np.median(ranges[:, 1]):.4g})")
        for name, value in sorted(fingerprint.labels.items(), key=lambda kv: kv[1]):
            if value == 0:
                continue
            present = [c for c in measured if c.quality.label_voxels.get(str(value), 0) > 0]
            if len(present) < max(2.0, RARE_LABEL_SHARE * len(measured)):
                missing = len(measured) - len(present)
                findings.append(Finding("rare_label", [c.case_id for c in present],
                                        f"label {name} ({value}) is in {len(present)} of {len(measured)} cases "
                                        f"(absent from {missing})"
                                        + (f": {_named([c.case_id for c in present])}" if present else "")))
            if len(present) >= 3:
                volume = np.array([c.quality.label_voxels[str(value)] * np.prod(c.spacing) for c in present])
                add("label_volume_outlier", [present[k].case_id for k in np.flatnonzero(_outliers(volume, VOLUME_RATIO))],
                    f"label {name} volume outlier (median {np.median(volume) / 1000:.3g} ml)")
        add("label_outside_image", [c.case_id for c in measured if c.quality.label_outside_image >
                                    OUTSIDE_SHARE * max(1, sum(c.quality.label_voxels.values()))],
            "label voxels where every image channel is 0 (label and image misaligned, or the scan cropped or "
            "masked after labelling?)")
        digests: dict[str, list[str]] = {}
        for c in measured:
            digests.setdefault(c.quality.image_sha1, []).append(c.case_id)
        for group in sorted(g for g in digests.values() if len(g) > 1):
            findings.append(Finding("duplicate_image", group, f"identical images: {_named(group)}"))
    flagged = sorted({i for f in findings if f.kind != "rare_label" for i in f.cases})
    return DatasetReport(REPORT_VERSION, fingerprint.dataset_name, len(cases), findings, flagged)


def write_dataset_report(report: DatasetReport, fingerprint: Fingerprint, folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    write_json_atomic(folder / REPORT_FILE, report)
    draw_overview(report, fingerprint, folder / OVERVIEW_FILE)
    return folder / REPORT_FILE, folder / OVERVIEW_FILE


# ------------------------------------------------------------------------------------ the overview


PANEL = (420, 300)
MARGIN = 48
GREY, RED, INK = (90, 120, 170), (214, 39, 40), (30, 30, 30)


def _scale(values: np.ndarray, low_px: float, high_px: float, log: bool):
    v = np.log10(values) if log else values
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = (hi - lo) * 0.08 or max(abs(lo) * 0.1, 0.5)
    lo, hi = lo - pad, hi + pad
    return lambda x: low_px + ((np.log10(x) if log else x) - lo) / (hi - lo) * (high_px - low_px), (lo, hi)


def _frame(draw, box, title: str, x_name: str, y_name: str, x_range, y_range, log_x: bool, log_y: bool) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=INK)
    draw.text((x0, y0 - 30), title, fill=INK)
    draw.text((x0, y1 + 20), x_name, fill=INK)
    draw.text((x0 - MARGIN + 4, y0 - 14), y_name, fill=INK)

    def label(value: float, log: bool) -> str:
        return f"{10 ** value:.3g}" if log else f"{value:.3g}"

    draw.text((x0, y1 + 4), label(x_range[0], log_x), fill=INK)
    draw.text((x1 - 36, y1 + 4), label(x_range[1], log_x), fill=INK)
    draw.text((x0 - MARGIN + 4, y1 - 12), label(y_range[0], log_y), fill=INK)
    draw.text((x0 - MARGIN + 4, y0), label(y_range[1], log_y), fill=INK)


def _scatter(draw, origin, title, x_name, y_name, xs, ys, flagged, *, log_x=False, log_y=False) -> None:
    ox, oy = origin
    box = (ox + MARGIN, oy + 40, ox + PANEL[0] - 12, oy + PANEL[1] - 40)
    to_x, x_range = _scale(np.asarray(xs, float), box[0] + 6, box[2] - 6, log_x)
    to_y, y_range = _scale(np.asarray(ys, float), box[3] - 6, box[1] + 6, log_y)
    _frame(draw, box, title, x_name, y_name, x_range, y_range, log_x, log_y)
    for x, y, bad in sorted(zip(xs, ys, flagged), key=lambda t: t[2]):  # flagged on top
        px, py = to_x(x), to_y(y)
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=RED if bad else GREY)


def draw_overview(report: DatasetReport, fingerprint: Fingerprint, path: Path) -> None:
    """One page: spacing and size scatter, intensity range per case (channel 0), label volume per class; cases
    named by any finding in red."""
    from PIL import Image, ImageDraw

    cases = fingerprint.cases
    flagged = set(report.flagged_cases)
    bad = [c.case_id in flagged for c in cases]
    image = Image.new("RGB", (2 * PANEL[0], 2 * PANEL[1] + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), f"{report.dataset_name}: {report.num_cases} cases, {len(report.findings)} finding(s), "
                      f"{len(flagged)} case(s) flagged (red); details in {REPORT_FILE}", fill=INK)
    top = 40
    spacing = np.array([c.spacing for c in cases])
    _scatter(draw, (0, top), "spacing (mm)", "in-plane (mean of y, x)", "z", spacing[:, 1:].mean(1), spacing[:, 0],
             bad, log_x=True, log_y=True)
    shapes = np.array([c.shape_before_crop for c in cases], float)
    _scatter(draw, (PANEL[0], top), "size (voxels)", "in-plane (y*x)", "z", shapes[:, 1] * shapes[:, 2], shapes[:, 0],
             bad, log_x=True, log_y=True)
    measured = [c for c in cases if c.quality is not None]
    if measured:
        ranges = np.array([c.quality.intensity_range[0] for c in measured])
        ox, oy = 0, top + PANEL[1]
        box = (ox + MARGIN, oy + 40, ox + PANEL[0] - 12, oy + PANEL[1] - 40)
        to_y, y_range = _scale(ranges.ravel(), box[3] - 6, box[1] + 6, False)
        _frame(draw, box, f"intensity 0.5-99.5th percentile, channel 0 ({fingerprint.channel_names.get('0', '')})",
               "cases", "", (0, len(measured)), y_range, False, False)
        step = (box[2] - box[0] - 12) / max(1, len(measured))
        for k, c in enumerate(measured):
            x = box[0] + 6 + (k + 0.5) * step
            draw.line((x, to_y(ranges[k, 0]), x, to_y(ranges[k, 1])), fill=RED if c.case_id in flagged else GREY,
                      width=max(1, int(step * 0.6)))
        labels = [(n, v) for n, v in sorted(fingerprint.labels.items(), key=lambda kv: kv[1]) if v != 0]
        volumes = [(k, c.case_id, c.quality.label_voxels.get(str(v), 0) * float(np.prod(c.spacing)))
                   for k, (_, v) in enumerate(labels) for c in measured]
        present = [t for t in volumes if t[2] > 0]
        if present:
            ox, oy = PANEL[0], top + PANEL[1]
            box = (ox + MARGIN, oy + 40, ox + PANEL[0] - 12, oy + PANEL[1] - 40)
            to_y, y_range = _scale(np.array([t[2] for t in present]) / 1000, box[3] - 6, box[1] + 6, True)
            _frame(draw, box, "label volume (ml) per class", ", ".join(n for n, _ in labels)[:60], "ml",
                   (0, len(labels)), y_range, False, True)
            width = (box[2] - box[0]) / len(labels)
            rng = np.random.default_rng(0)
            for k, case_id, volume in present:
                x = box[0] + (k + 0.5) * width + rng.uniform(-0.3, 0.3) * width
                y = to_y(volume / 1000)
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=RED if case_id in flagged else GREY)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
