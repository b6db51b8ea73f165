"""Lesion instances (autoseg.instances): numbering, volumes, centroids and boxes on synthetic lesions counted
by hand, the matching rule and lesion-wise metrics worked out by hand, the components against
connected-components-3d, and `autoseg evaluate --instances`."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.instances import InstanceRule, instance_map, match_instances

from conftest import REPO, run_autoseg

SPACING = (2.0, 1.0, 1.0)  # mm per array axis: a voxel is 2 mm^3


def _lesions() -> np.ndarray:
    seg = np.zeros((10, 12, 12), np.uint8)
    seg[1:3, 1:4, 1:4] = 1  # 18 voxels, 36 mm^3
    seg[3, 4, 4] = 1  # touches the first only at a corner: 26-connected, so the same lesion (19 voxels)
    seg[6:8, 8:10, 8:10] = 1  # 8 voxels, 16 mm^3
    seg[9, 0, 11] = 1  # 1 voxel, 2 mm^3
    seg[5:7, 1:3, 8:11] = 2  # 12 voxels of class 2
    return seg


def test_instances_are_full_connectivity_components_numbered_class_by_class():
    numbered, found = instance_map(_lesions(), SPACING, [1, 2])
    assert [(i.id, i.label, i.voxels, i.volume_mm3) for i in found] == [
        (1, 1, 19, 38.0), (2, 1, 8, 16.0), (3, 1, 1, 2.0), (4, 2, 12, 24.0)]
    assert found[1].box_start == [6, 8, 8] and found[1].box_stop == [8, 10, 10]
    assert found[1].centroid == [6.5, 8.5, 8.5]
    assert found[0].centroid == pytest.approx([(1 * 9 + 2 * 9 + 3) / 19, (6 * (1 + 2 + 3) + 4) / 19,
                                               (6 * (1 + 2 + 3) + 4) / 19])
    for instance in found:
        assert int((numbered == instance.id).sum()) == instance.voxels
    assert set(np.unique(numbered)) == {0, 1, 2, 3, 4}
    _, kept = instance_map(_lesions(), SPACING, [1, 2], InstanceRule(min_volume_mm3=16.0))
    assert [(i.id, i.voxels) for i in kept] == [(1, 19), (2, 8), (3, 12)]  # the 2 mm^3 speck is not a lesion


def test_components_equal_connected_components_3d():
    cc3d = pytest.importorskip("cc3d", reason="connected-components-3d is in the test extra (pip install -e .[test])")
    rng = np.random.default_rng(3)
    seg = (rng.random((20, 24, 22)) < 0.12).astype(np.uint8) * rng.integers(1, 3, (20, 24, 22)).astype(np.uint8)
    numbered, found = instance_map(seg, (1.0, 1.0, 1.0), [1, 2])
    for label in (1, 2):
        theirs = cc3d.connected_components(seg == label, connectivity=26)
        ours = np.where(seg == label, numbered, 0)
        assert len([i for i in found if i.label == label]) == int(theirs.max())
        pairs = {(int(a), int(b)) for a, b in zip(ours[seg == label], theirs[seg == label])}
        assert len(pairs) == int(theirs.max())  # the same partition: one-to-one between the numberings


def _pair():
    reference = np.zeros((8, 20, 20), bool)
    prediction = np.zeros_like(reference)
    reference[1:3, 1:5, 1:5] = True  # A: 32 voxels, predicted exactly
    prediction[1:3, 1:5, 1:5] = True
    reference[1:3, 8:13, 1:5] = True  # B: 40 voxels; predicted 2x4x4 = 32 of them: IoU 0.8, Dice 64/72
    prediction[1:3, 8:12, 1:5] = True
    reference[5:7, 1:5, 10:14] = True  # C: 32 voxels; a prediction covering 8 of them plus 12 outside
    prediction[5:7, 1:2, 10:14] = True
    prediction[5:7, 5:7, 10:13] = True  # the 12 outside, joined to the 8 through no voxel: a separate lesion
    prediction[6, 15:18, 15:18] = True  # D: 9 voxels where the reference has nothing
    return prediction, reference


def test_matching_counts_and_lesion_metrics_by_hand():
    prediction, reference = _pair()
    counts = match_instances(prediction, reference, (1.0, 1.0, 1.0))
    # A and B match; C's 8-voxel piece has IoU 8/32 = 0.25 and the rest none: C is missed; 3 predictions unmatched
    assert (counts.tp, counts.fp, counts.fn) == (2, 3, 1)
    m = counts.metrics()
    assert m["precision"] == pytest.approx(2 / 5) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 8)  # 2TP / (2TP + FP + FN)
    assert m["lesion_dice"] == pytest.approx((1.0 + 64 / 72) / 2)
    assert m["sq"] == pytest.approx((1.0 + 0.8) / 2) and m["pq"] == pytest.approx(0.9 * 0.5)
    # at 10 mm^3 the 8-voxel piece of C and the 9-voxel D are no lesions: one false positive is left
    assert match_instances(prediction, reference, (1.0, 1.0, 1.0), InstanceRule(10.0)).fp == 1
    empty = match_instances(np.zeros_like(reference), np.zeros_like(reference), (1.0, 1.0, 1.0)).metrics()
    assert np.isnan(empty["pq"]) and np.isnan(empty["f1"])
    missed = match_instances(np.zeros_like(reference), reference, (1.0, 1.0, 1.0)).metrics()
    assert missed["fn"] == 3 and missed["pq"] == 0.0 and missed["recall"] == 0.0


def _write(path, array):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))


def test_evaluate_instances_from_the_cli(tmp_path):
    prediction, reference = _pair()
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    _write(tmp_path / "pred" / "case_a.nii.gz", prediction)
    _write(tmp_path / "ref" / "case_a.nii.gz", reference)
    _write(tmp_path / "pred" / "case_b.nii.gz", reference)  # a perfect second case: 3 more true positives
    _write(tmp_path / "ref" / "case_b.nii.gz", reference)
    proc = run_autoseg("evaluate", tmp_path / "pred", tmp_path / "ref", "--instances", "--workers", "1", "-q")
    assert "lesion-wise" in proc.stdout
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    lesions = summary["instances"]["per_class"]["1"]
    assert (lesions["tp"], lesions["fp"], lesions["fn"]) == (5, 3, 1)
    assert lesions["f1"] == pytest.approx(10 / 14)
    assert summary["instances"]["match_iou"] == 0.5 and summary["instances"]["connectivity"] == "full"
    per_case = {c["case"]: c["instances"]["1"] for c in summary["cases"]}
    assert per_case["case_b"]["pq"] == 1.0
    rows = list(csv.DictReader((tmp_path / "pred" / "instances.csv").open()))
    assert [(r["case"], r["tp"], r["fp"], r["fn"]) for r in rows] == [("case_a", "2", "3", "1"),
                                                                     ("case_b", "3", "0", "0")]
    refused = run_autoseg("evaluate", tmp_path / "pred", tmp_path / "ref", "--min-instance-volume", "5", "-q",
                          check=False)
    assert refused.returncode == 1 and "add --instances" in refused.stderr


def test_lesion_metrics_equal_panopticas():
    """plans/reference/panoptica: cases and panoptica's numbers for them (benchmarks/panoptica_reference.py)."""
    from autoseg.instances import MATCH_IOU

    folder = REPO / "plans" / "reference" / "panoptica"
    cases = np.load(folder / "cases.npz")
    reference = json.loads((folder / "metrics.json").read_text())["cases"]
    assert len(reference) == 9 and MATCH_IOU == 0.5
    for name, theirs in reference.items():
        ours = match_instances(cases[f"{name}_pred"], cases[f"{name}_ref"], (1.0, 1.0, 1.0)).metrics()
        assert (ours["tp"], ours["fp"], ours["fn"]) == (theirs["tp"], theirs["fp"], theirs["fn"]), name
        for mine, key in (("precision", "precision"), ("recall", "recall"), ("f1", "rq"), ("sq", "sq"),
                          ("lesion_dice", "sq_dsc"), ("pq", "pq")):
            if np.isnan(ours[mine]):
                assert theirs[key] in (0.0, None) or np.isnan(theirs[key]), (name, key)
            else:
                assert ours[mine] == pytest.approx(theirs[key], abs=1e-9), (name, key)
