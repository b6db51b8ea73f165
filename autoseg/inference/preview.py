"""A PNG preview of one prediction: three orthogonal slices through its largest structure.

Opening a 3D label map needs a viewer; a preview beside each prediction lets someone
screening a batch see at a glance whether the segmentation sits on the right anatomy.
Pillow only, so the preview needs nothing beyond what reading images already installs.
"""
from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from autoseg.jsonio import atomic_path

OVERLAY_ALPHA = 0.45
WINDOW_PERCENTILES = (0.5, 99.5)
MIN_PANEL_PX = 256  # small volumes (Hippocampus, ~35x50x36 voxels) are upscaled to at least this
TARGET_PANEL_PX = 320
MAX_PANEL_PX = 768
PERCENTILE_SAMPLE = 2_000_000  # voxels; the window of a large CT needs no exact percentile
MARGIN, GAP, FONT_SIZE, TITLE_FONT_SIZE = 12, 10, 14, 16
BACKGROUND, TEXT = (20, 20, 20), (235, 235, 235)
# Distinct on grey (Sasha Trubetskoy's list, greys left out); values beyond it get golden-ratio hues.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128))
AXES = (("axial", "z"), ("coronal", "y"), ("sagittal", "x"))


@dataclass(frozen=True)
class Panel:
    """Where one slice landed in the picture, so callers (and tests) can map voxels to pixels."""

    name: str
    axis: int  # the array axis held fixed
    index: int  # the slice index along it
    box: tuple[int, int, int, int]  # left, top, width, height in pixels
    shape: tuple[int, int]  # rows, columns of the slice in voxels (before resizing)
    flip_rows: bool  # rows drawn bottom-up (z increases upward)


@dataclass(frozen=True)
class Preview:
    centre: tuple[int, int, int]  # (z, y, x) the three slices pass through
    label: int | None  # value of the label owning the largest structure, None without foreground
    panels: tuple[Panel, ...]


def label_colour(value: int) -> tuple[int, int, int]:
    """Fixed colour of a label value, the same in every preview."""
    if 1 <= value <= len(PALETTE):
        return PALETTE[value - 1]
    hue = (value * 0.618033988749895) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _largest_structure(segmentation: np.ndarray, spacing) -> tuple[tuple[int, ...], int | None]:
    """Centre of mass (rounded) of the largest 26-connected component of any single foreground label;
    the volume centre when there is no foreground."""
    seg = segmentation
    if seg.dtype == bool or not np.issubdtype(seg.dtype, np.integer):
        seg = seg.astype(np.int64)
    shape = seg.shape
    max_value = int(seg.max()) if seg.size else 0
    best = (0, None, None, None)  # voxels, value, box, component mask
    if max_value > 0:
        structure = np.ones((3,) * seg.ndim, dtype=bool)
        for value, box in enumerate(ndimage.find_objects(seg, max_label=max_value), start=1):
            if box is None:
                continue
            components, n = ndimage.label(seg[box] == value, structure=structure)
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            sizes[0] = 0
            biggest = int(sizes.argmax())
            if sizes[biggest] > best[0]:
                best = (int(sizes[biggest]), value, box, components == biggest)
    if best[1] is None:
        return tuple(s // 2 for s in shape), None
    _, value, box, mask = best
    local = np.rint(ndimage.center_of_mass(mask)).astype(int)
    if not mask[tuple(local)]:
        # A curved structure's centre of mass can lie outside it; its nearest voxel (in mm) shows it instead.
        coords = np.argwhere(mask)
        dist = (((coords - local) * np.asarray(spacing, dtype=np.float64)) ** 2).sum(1)
        local = coords[dist.argmin()]
    return tuple(int(b.start + i) for b, i in zip(box, local)), value


def _window(channel: np.ndarray) -> tuple[float, float]:
    values = channel.ravel()
    if values.size > PERCENTILE_SAMPLE:
        values = values[:: values.size // PERCENTILE_SAMPLE + 1]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values.astype(np.float64), WINDOW_PERCENTILES)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _grey(slice2d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.nan_to_num(slice2d.astype(np.float32), nan=lo) - lo) / (hi - lo)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _nearest(labels2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Same pixel-centre convention as Pillow's resize, so labels stay aligned with the bilinear image.
    width, height = size
    rows = np.minimum(((np.arange(height) + 0.5) * labels2d.shape[0] / height).astype(int), labels2d.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels2d.shape[1] / width).astype(int), labels2d.shape[1] - 1)
    return labels2d[rows][:, cols]


def _overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    for value in np.unique(labels):
        if value <= 0:
            continue
        inside = labels == value
        colour = np.asarray(label_colour(int(value)), dtype=np.float32)
        rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * colour
        rgb[inside & edge] = colour
    return np.rint(rgb).astype(np.uint8)


def _slices(volume: np.ndarray, centre) -> list[np.ndarray]:
    z, y, x = centre
    return [volume[z], volume[:, y], volume[:, :, x]]


def _panel_sizes(shapes, spacings) -> list[tuple[int, int]]:
    """(width, height) of each panel: one mm-to-pixel scale for all three, so pixels are square in mm and
    the panels compare; raised until the shortest long side reaches MIN_PANEL_PX, capped at MAX_PANEL_PX."""
    extents = [(rows * sr, cols * sc) for (rows, cols), (sr, sc) in zip(shapes, spacings)]
    longest = max(max(e) for e in extents)
    shortest_long = min(max(e) for e in extents)
    scale = max(TARGET_PANEL_PX / longest, MIN_PANEL_PX / shortest_long)
    scale = min(scale, MAX_PANEL_PX / longest)
    return [(max(1, round(w * scale)), max(1, round(h * scale))) for h, w in extents]


def write_preview(path: str | os.PathLike, image: np.ndarray, segmentation: np.ndarray, spacing,
                  labels: dict[str, int], case_id: str, channel: int = 0) -> Preview:
    """Write a PNG with axial, coronal and sagittal slices through the largest structure, atomically.

    `image` is (C, z, y, x) (or (z, y, x)), `segmentation` (z, y, x) on the same grid, `spacing` in mm in
    array order, `labels` name -> value as in dataset.json. The slices pass through the rounded centre of
    mass of the largest connected component of any foreground label (the volume centre without foreground);
    the grey image is windowed at the 0.5/99.5 percentiles of `channel`; labels are blended with a fixed
    colour per value and outlined. Coronal and sagittal panels are drawn with z increasing upward; no
    anatomical orientation is implied beyond that. Returns where everything landed.
    """
    img = np.asarray(image)
    volume = img if img.ndim == 3 else img[channel]
    seg = np.asarray(segmentation)
    if volume.shape != seg.shape or seg.ndim != 3:
        raise ValueError(f"image {volume.shape} and segmentation {seg.shape} must be the same 3D grid")
    centre, owner = _largest_structure(seg, spacing)
    lo, hi = _window(volume)
    sz, sy, sx = (float(s) for s in spacing)
    grey_slices, label_slices = _slices(volume, centre), _slices(seg, centre)
    flips = (False, True, True)
    grey_slices = [s[::-1] if f else s for s, f in zip(grey_slices, flips)]
    label_slices = [s[::-1] if f else s for s, f in zip(label_slices, flips)]
    sizes = _panel_sizes([s.shape for s in label_slices], [(sy, sx), (sz, sx), (sz, sy)])

    font, title_font = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    title_h = probe.textbbox((0, 0), "Ag", font=title_font)[3] + 8
    foreground = sorted((int(v), n) for n, v in labels.items() if int(v) != 0)
    swatch = line_h - 4
    legend_w = max([probe.textlength(f"{v}  {n}", font=font) for v, n in foreground] + [0]) + swatch + 8
    panels_w = sum(w for w, _ in sizes) + GAP * (len(sizes) - 1)
    panels_h = max(h for _, h in sizes)
    # The legend wraps into further columns rather than growing taller than the panels.
    per_column = max(1, (panels_h + line_h) // line_h - 1)
    legend_columns = -(-len(foreground) // per_column) if foreground else 0
    width = int(MARGIN * 2 + panels_w + (GAP * 2 + legend_columns * (legend_w + GAP) if foreground else 0))
    top = MARGIN + title_h + line_h
    height = top + panels_h + MARGIN
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)

    where = f" through the largest structure ({dict((v, n) for v, n in foreground).get(owner, owner)})" \
        if owner is not None else " through the volume centre (no foreground)"
    draw.text((MARGIN, MARGIN), f"{case_id}: axial | coronal | sagittal{where}", fill=TEXT, font=title_font)
    panels, left = [], MARGIN
    for (name, axis_name), grey2d, labels2d, (w, h), flip in zip(AXES, grey_slices, label_slices, sizes, flips):
        axis = "zyx".index(axis_name)
        resized = np.asarray(Image.fromarray(_grey(grey2d, lo, hi), "L").resize((w, h), Image.BILINEAR))
        picture.paste(Image.fromarray(_overlay(resized, _nearest(labels2d, (w, h))), "RGB"), (left, top))
        draw.text((left, top - line_h), f"{name}  {axis_name}={centre[axis]}", fill=TEXT, font=font)
        panels.append(Panel(name, axis, centre[axis], (left, top, w, h), labels2d.shape, flip))
        left += w + GAP
    left += GAP
    for i, (value, name) in enumerate(foreground):
        x = left + (i // per_column) * (legend_w + GAP)
        y = top + (i % per_column) * line_h
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=label_colour(value), outline=TEXT)
        draw.text((x + swatch + 6, y), f"{value}  {name}", fill=TEXT, font=font)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Preview(tuple(int(c) for c in centre), owner, tuple(panels))
