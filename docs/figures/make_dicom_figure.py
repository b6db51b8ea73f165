"""Draws docs/figures/dicom_seg_frames.png: the frames of a DICOM SEG written by `autoseg predict`, rendered from
the SEG file alone over the source slices each frame references.

    .venv/bin/python docs/figures/make_dicom_figure.py MODEL.autoseg [CASE]

A bundled Hippocampus test scan is written as a DICOM series (autoseg.dicom.series_writer), predicted through
the DICOM path, and every frame of the SEG is drawn: its segment's colour over the source slice found by the
frame's ReferencedSOPInstanceUID, captioned with the segment label and the frame's ImagePositionPatient.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, ImageDraw

from autoseg.dataset.geometry import Geometry
from autoseg.dicom.series_writer import SeriesDescription, representable, write_series
from autoseg.inference.predict import PredictOptions, predict

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "autoseg" / "demo" / "Dataset004_Hippocampus24"
SCALE = 4
PER_ROW = 6
COLOURS = {1: (230, 25, 75), 2: (60, 180, 75)}


def render(seg_path: Path, series_folder: Path, out: Path) -> None:
    seg = pydicom.dcmread(seg_path)
    sources = {}
    for path in series_folder.iterdir():
        ds = pydicom.dcmread(path)
        sources[ds.SOPInstanceUID] = ds
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    tiles: dict[int, list[tuple[float, Image.Image]]] = {}
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        segment = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        grey = source.pixel_array.astype(np.float64)
        grey = np.clip((grey - grey.min()) / max(np.ptp(grey), 1e-9) * 255, 0, 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1).astype(np.float64)
        mask = frame.astype(bool)
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(COLOURS.get(segment, (255, 255, 0)))
        tile = Image.fromarray(rgb.astype(np.uint8)).resize((seg.Columns * SCALE, seg.Rows * SCALE), Image.NEAREST)
        position = [float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient]
        label = seg.SegmentSequence[segment - 1].SegmentLabel
        canvas = Image.new("RGB", (tile.width, tile.height + 28), "white")
        canvas.paste(tile, (0, 28))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), f"segment {segment}: {label}", fill="black")
        draw.text((2, 14), "IPP " + ", ".join(f"{v:.0f}" for v in position), fill="black")
        tiles.setdefault(segment, []).append((position[2], canvas))
    rows = [[tile for _, tile in sorted(found, key=lambda t: t[0])] for _, found in sorted(tiles.items())]
    rows = [row[len(row) // 2 - PER_ROW // 2:][:PER_ROW] for row in rows]  # the middle frames of each segment
    width = max(sum(t.width + 4 for t in row) for row in rows)
    height = sum(max(t.height for t in row) + 4 for row in rows)
    figure = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for tile in row:
            figure.paste(tile, (x, y))
            x += tile.width + 4
        y += max(t.height for t in row) + 4
    figure.save(out)


def main() -> None:
    model = Path(sys.argv[1])
    case = sys.argv[2] if len(sys.argv) > 2 else "hippocampus_041"
    image = sitk.ReadImage(str(DEMO / "imagesTs" / f"{case}_0000.nii.gz"))
    geometry = Geometry(image.GetSpacing()[::-1], image.GetOrigin(), image.GetDirection())
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        write_series(representable(sitk.GetArrayFromImage(image)), geometry, series,
                     SeriesDescription(patient_id="DEMO", series_description=case))
        result = predict(series, Path(tmp) / "out", model, PredictOptions(device="cpu", progress=False))
        seg_path = Path(tmp) / "out" / f"{result.written[0]}.seg.dcm"
        out = REPO / "docs" / "figures" / "dicom_seg_frames.png"
        render(seg_path, series, out)
    print(f"{out}: frames of {seg_path.name}")


if __name__ == "__main__":
    main()
