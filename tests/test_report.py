"""Per-case prediction report (statistics, JSON, schema, CSV, hashing) and the PNG preview."""
import csv
import hashlib
import json
import math

import jsonschema
import numpy as np
import pytest
from PIL import Image

from autoseg.errors import AutosegError
from autoseg.inference.preview import OVERLAY_ALPHA, label_colour, write_preview
from autoseg.inference.report import (REPORT_VERSION, CaseReport, InputFile, LabelStats, ModelInfo,
                                      label_statistics, load_case_report, sha256_file, write_case_report,
                                      write_predictions_csv)
from conftest import REPO

SHAPE, SPACING = (10, 12, 14), (2.0, 0.5, 1.5)  # 1.5 mm3 per voxel
LABELS = {"background": 0, "lesion": 1, "organ": 2, "absent": 3}
CUBE_A = np.s_[1:4, 1:4, 1:4]  # label 1, 27 voxels, x in 1..3
CUBE_B = np.s_[6:8, 1:3, 10:12]  # label 1, 8 voxels, x in 10..11, not touching A even diagonally
# label 2, 125 voxels, x in 1..5, the largest structure; centre of mass (6, 8, 3). Its y range misses
# x = 3 and its x range misses y = 8, so a slice taken along the wrong axis misses it.
CUBE_2 = np.s_[4:9, 6:11, 1:6]


def synthetic_case():
    seg = np.zeros(SHAPE, np.uint8)
    seg[CUBE_A] = 1
    seg[CUBE_B] = 1
    seg[CUBE_2] = 2
    ct = np.zeros(SHAPE, np.float32)
    ct[CUBE_A], ct[CUBE_B], ct[CUBE_2] = 100, 200, -50
    ramp = np.broadcast_to(np.arange(SHAPE[2], dtype=np.float32), SHAPE)  # the x index
    return seg, np.stack([ct, ramp])


def test_label_statistics_match_hand_values():
    seg, image = synthetic_case()
    stats = label_statistics(seg, image, SPACING, LABELS, ["CT", "ramp"])
    assert [(s.name, s.value) for s in stats] == [("lesion", 1), ("organ", 2), ("absent", 3)]
    lesion, organ, absent = stats

    assert (lesion.voxels, lesion.components) == (35, 2)
    assert lesion.volume_mm3 == pytest.approx(35 * 1.5)
    assert lesion.volume_ml == pytest.approx(35 * 1.5 / 1000)
    ct, ramp = lesion.channels
    assert (ct.channel, ramp.channel) == ("CT", "ramp")
    # 27 voxels of 100 and 8 of 200: the 5th and 50th percentiles fall among the 100s, the 95th among the 200s
    assert ct.mean == pytest.approx((27 * 100 + 8 * 200) / 35)
    assert ct.std == pytest.approx(100 * math.sqrt(27 * 8) / 35)
    assert (ct.p05, ct.p50, ct.p95) == pytest.approx((100, 100, 200))
    # x = 1, 2, 3 nine times each, then 10 and 11 four times each: sorted positions 1.7, 17, 32.3 of 35
    assert ramp.mean == pytest.approx((9 * (1 + 2 + 3) + 4 * (10 + 11)) / 35)
    assert (ramp.p05, ramp.p50, ramp.p95) == pytest.approx((1, 2, 11))

    assert (organ.voxels, organ.components) == (125, 1)
    assert organ.volume_mm3 == pytest.approx(187.5)
    ct, ramp = organ.channels
    assert (ct.mean, ct.std, ct.p05, ct.p50, ct.p95) == pytest.approx((-50, 0, -50, -50, -50))
    # x = 1..5, 25 voxels each: mean 3, variance of (-2, -1, 0, 1, 2) is 2; sorted positions 6.2, 62, 117.8
    assert (ramp.mean, ramp.std, ramp.p05, ramp.p50, ramp.p95) == pytest.approx((3, math.sqrt(2), 1, 3, 5))

    assert (absent.voxels, absent.volume_mm3, absent.volume_ml, absent.components) == (0, 0, 0, 0)
    for c in absent.channels:
        assert (c.mean, c.std, c.p05, c.p50, c.p95) == (None,) * 5


def test_components_are_26_connected():
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, 0] = seg[1, 1, 1] = 1  # touching at a corner only
    seg[3, 3, 3] = 1
    (stats,) = label_statistics(seg, np.zeros((1, 4, 4, 4)), (1, 1, 1), {"a": 1}, ["c"])
    assert (stats.voxels, stats.components) == (3, 2)


def test_label_statistics_rejects_mismatched_inputs():
    seg, image = synthetic_case()
    with pytest.raises(AutosegError, match="shape"):
        label_statistics(seg[:-1], image, SPACING, LABELS, ["CT", "ramp"])
    with pytest.raises(AutosegError, match="channel name"):
        label_statistics(seg, image, SPACING, LABELS, ["CT"])


def make_report(case_id="case_001", labels=None, **changes) -> CaseReport:
    if labels is None:
        seg, image = synthetic_case()
        labels = label_statistics(seg, image, SPACING, LABELS, ["CT", "ramp"])
    fields = dict(case_id=case_id,
                  inputs=[InputFile(f"/data/{case_id}_0000.nii.gz", "ab" * 32),
                          InputFile(f"/data/{case_id}_0001.nii.gz", "cd" * 32)],
                  model=ModelInfo(source="/models/m.autoseg", package_sha256="ef" * 32,
                                  configurations=["3d_fullres"], folds=["0", "1"], mirroring=True, step=0.5,
                                  device="cpu", precision="float32"),
                  shape=list(SHAPE), spacing=list(SPACING), labels=labels,
                  timings_s={"predict": 1.25, "total": 2.5}, warnings=["spacing differs from training"],
                  output=f"/out/{case_id}.nii.gz")
    fields.update(changes)
    return CaseReport(**fields)


def test_json_round_trip_and_committed_schema(tmp_path):
    report = make_report()
    path = tmp_path / "case_001.json"
    write_case_report(report, path)
    assert load_case_report(path) == report
    data = json.loads(path.read_text())
    assert data["version"] == REPORT_VERSION
    assert data["labels"][2]["channels"][0]["mean"] is None
    schema = json.loads((REPO / "plans" / "case_report.schema.json").read_text())
    jsonschema.validate(data, schema)
    data["labels"][0]["voxels"] = "35"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_loading_another_version_fails(tmp_path):
    path = tmp_path / "r.json"
    write_case_report(make_report(version=REPORT_VERSION + 1), path)
    with pytest.raises(AutosegError, match="version"):
        load_case_report(path)


def lesion(value, name, voxels):
    return LabelStats(name=name, value=value, voxels=voxels, volume_mm3=voxels * 1.5,
                      volume_ml=voxels * 1.5 / 1000, components=1, channels=[])


def test_predictions_csv_has_one_row_per_case_and_the_union_of_label_columns(tmp_path):
    # The case listed first has the higher label: columns still follow label values.
    second = make_report("case_b", labels=[lesion(1, "liver", 10), lesion(3, "tumour", 4)], warnings=[],
                         timings_s={"predict": 1.0, "export": 0.5})
    first = make_report("case_a", labels=[lesion(1, "liver", 20), lesion(2, "spleen", 6)],
                        warnings=["w1", "w2"], model=make_report().model)
    first.model.package_sha256 = None
    path = tmp_path / "predictions.csv"
    write_predictions_csv([second, first], path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header == ["case_id", "output",
                      "liver_voxels", "liver_volume_ml", "liver_components",
                      "spleen_voxels", "spleen_volume_ml", "spleen_components",
                      "tumour_voxels", "tumour_volume_ml", "tumour_components",
                      "warnings", "inputs", "model_sha256", "total_time_s"]
    assert len(body) == 2
    b, a = (dict(zip(header, row)) for row in body)
    assert (b["case_id"], b["output"]) == ("case_b", "/out/case_b.nii.gz")
    assert (b["liver_voxels"], float(b["liver_volume_ml"]), b["liver_components"]) == ("10", 0.015, "1")
    assert (b["spleen_voxels"], b["spleen_volume_ml"], b["spleen_components"]) == ("", "", "")
    assert (b["tumour_voxels"], b["warnings"]) == ("4", "")
    assert float(b["total_time_s"]) == 1.5  # no "total" recorded: the stages' sum
    assert b["model_sha256"] == "ef" * 32
    assert b["inputs"] == "/data/case_b_0000.nii.gz | /data/case_b_0001.nii.gz"
    assert (a["case_id"], a["spleen_voxels"], a["tumour_voxels"]) == ("case_a", "6", "")
    assert (a["warnings"], a["model_sha256"], float(a["total_time_s"])) == ("w1 | w2", "", 2.5)


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = np.random.default_rng(0).bytes((5 << 20) // 2)  # 2.5 MiB: three chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def pixel_of(panel, row, col):
    left, top, width, height = panel.box
    rows, cols = panel.shape
    if panel.flip_rows:
        row = rows - 1 - row
    return int(left + (col + 0.5) * width / cols), int(top + (row + 0.5) * height / rows)


def test_preview_slices_through_the_largest_structure(tmp_path):
    seg, image = synthetic_case()
    path = tmp_path / "preview.png"
    preview = write_preview(path, image, seg, SPACING, LABELS, "case_001")
    assert preview.centre == (6, 8, 3) and preview.label == 2
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.mode == "RGB"
    assert 3 * 200 < picture.width < 4000 and 256 <= picture.height < 2000
    axial, coronal, sagittal = preview.panels
    assert [(p.axis, p.index) for p in preview.panels] == [(0, 6), (1, 8), (2, 3)]
    for panel in preview.panels:  # square pixels in mm: width/height follows the physical extent
        (rows, cols), (_, _, w, h) = panel.shape, panel.box
        row_mm, col_mm = [(SPACING[1], SPACING[2]), (SPACING[0], SPACING[2]), (SPACING[0], SPACING[1])][panel.axis]
        assert w / h == pytest.approx(cols * col_mm / (rows * row_mm), rel=0.03)
        assert max(w, h) >= 250
    # The organ's intensity (-50) is the window's lower end, so its grey is 0 under the overlay.
    expected = OVERLAY_ALPHA * np.asarray(label_colour(2))
    rgb = np.asarray(picture)
    for panel, (row, col) in [(axial, (8, 3)), (coronal, (6, 3)), (sagittal, (6, 8))]:
        x, y = pixel_of(panel, row, col)
        assert np.abs(rgb[y, x] - expected).max() <= 2, panel.name
    # Background beside the organ in the axial slice stays grey.
    x, y = pixel_of(axial, 1, 8)
    assert len(set(rgb[y, x].tolist())) == 1
    # Every foreground label has a legend swatch in its colour, present or not.
    for value in (1, 2, 3):
        assert (rgb.reshape(-1, 3) == label_colour(value)).all(1).any()


def test_preview_of_an_empty_segmentation_uses_the_volume_centre(tmp_path):
    _, image = synthetic_case()
    path = tmp_path / "sub" / "empty.png"
    preview = write_preview(path, image, np.zeros(SHAPE, np.uint8), SPACING, LABELS, "empty", channel=1)
    assert preview.centre == (5, 6, 7) and preview.label is None
    assert Image.open(path).mode == "RGB"
    assert [p.name for p in path.parent.iterdir()] == ["empty.png"]  # no temp file left behind
