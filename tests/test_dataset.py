"""Reading both dataset layouts and reporting every validation problem as one line naming the file."""
import gzip
import json
import shutil

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.dataset import load_dataset, read_case
from autoseg.errors import DatasetInvalid
from autoseg.fingerprint import compute_fingerprint
from conftest import write_image, write_msd_dataset, write_nnunet_dataset


def run_plan(capsys, dataset, tmp_path):
    out = tmp_path / "out"
    rc = main(["plan", str(dataset), "-o", str(out), "-q", "--workers", "1"])
    captured = capsys.readouterr()
    return rc, captured.err, out


def assert_rejected(capsys, dataset, tmp_path, *expected):
    """Non-zero exit, no traceback, nothing written, and each expected fragment on a line of its own."""
    rc, err, out = run_plan(capsys, dataset, tmp_path)
    assert rc != 0
    assert "Traceback" not in err
    assert not out.exists(), "nothing may be written when validation fails"
    lines = err.strip().splitlines()
    for fragment in expected:
        assert any(fragment in line for line in lines), f"{fragment!r} not in:\n{err}"
    return lines


@pytest.fixture
def good(tmp_path):
    return write_nnunet_dataset(tmp_path / "ds", n_cases=3)


def test_valid_dataset_plans(capsys, good, tmp_path):
    rc, err, out = run_plan(capsys, good, tmp_path)
    assert rc == 0, err
    assert (out / "plan.json").is_file() and (out / "fingerprint.json").is_file()


def test_missing_image_file(capsys, good, tmp_path):
    (good / "imagesTr" / "case_001_0000.nii.gz").unlink()
    assert_rejected(capsys, good, tmp_path, "case_001_0000.nii.gz: missing image file")


def test_missing_label_file(capsys, good, tmp_path):
    (good / "labelsTr" / "case_002.nii.gz").unlink()
    assert_rejected(capsys, good, tmp_path, "case_002.nii.gz: missing label file")


def test_channel_count_mismatch_extra_file(capsys, good, tmp_path):
    shutil.copy(good / "imagesTr" / "case_000_0000.nii.gz", good / "imagesTr" / "case_000_0001.nii.gz")
    assert_rejected(capsys, good, tmp_path, "case_000_0001.nii.gz: channel 1 not declared")


def test_channel_count_mismatch_msd_4d(capsys, tmp_path):
    ds = write_msd_dataset(tmp_path / "msd", n_cases=2, n_channels=2)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["modality"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert_rejected(capsys, ds, tmp_path, "case_000.nii.gz: has 2 channels but dataset.json declares 3")


def test_shape_mismatch(capsys, good, tmp_path):
    write_image(good / "labelsTr" / "case_000.nii.gz", np.zeros((12, 16, 13), np.uint8), (2.0, 1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_000.nii.gz: shape (12, 16, 13) differs from image shape")


@pytest.mark.parametrize("kwargs, what", [
    ({"spacing": (2.5, 1.0, 1.0)}, "spacing"),
    ({"spacing": (2.0, 1.0, 1.0), "origin": (5.0, 0.0, 0.0)}, "origin"),
    ({"spacing": (2.0, 1.0, 1.0), "direction": (0, 1, 0, 1, 0, 0, 0, 0, 1)}, "direction"),
])
def test_geometry_mismatch(capsys, good, tmp_path, kwargs, what):
    label = np.zeros((12, 16, 14), np.uint8)
    write_image(good / "labelsTr" / "case_001.nii.gz", label, **kwargs)
    lines = assert_rejected(capsys, good, tmp_path, "case_001.nii.gz: geometry differs from the image")
    assert any(what in line for line in lines)


def test_undeclared_label_value(capsys, good, tmp_path):
    label = np.zeros((12, 16, 14), np.uint8)
    label[3, 3, 3] = 7
    write_image(good / "labelsTr" / "case_001.nii.gz", label, (2.0, 1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_001.nii.gz: label value(s) 7 not declared in dataset.json")


def test_non_integer_label(capsys, good, tmp_path):
    label = np.zeros((12, 16, 14), np.float32)
    label[3, 3, 3] = 0.5
    write_image(good / "labelsTr" / "case_001.nii.gz", label, (2.0, 1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_001.nii.gz: label map has non-integer values")


def test_integer_valued_float_label_is_accepted(good):
    label = np.zeros((12, 16, 14), np.float32)
    label[3:5, 3:5, 3:5] = 2.0
    write_image(good / "labelsTr" / "case_001.nii.gz", label, (2.0, 1.0, 1.0))
    ds = load_dataset(good)
    data, problems = read_case(ds, ds.cases[1])
    assert problems == [] and data.label.dtype == np.uint8 and data.label.max() == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_voxels(capsys, good, tmp_path, bad):
    img = np.ones((12, 16, 14), np.float32)
    img[2, 2, 2] = bad
    img[4, 4, 4] = bad
    write_image(good / "imagesTr" / "case_002_0000.nii.gz", img, (2.0, 1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_002_0000.nii.gz: 2 NaN/Inf voxel(s)")


def test_2d_file_where_3d_expected(capsys, good, tmp_path):
    write_image(good / "imagesTr" / "case_000_0000.nii.gz", np.ones((16, 14), np.float32), (1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_000_0000.nii.gz: is 2D, expected a 3D image")


def test_4d_file_in_nnunet_layout(capsys, good, tmp_path):
    write_image(good / "imagesTr" / "case_000_0000.nii.gz", np.ones((2, 12, 16, 14), np.float32), (2.0, 1.0, 1.0))
    assert_rejected(capsys, good, tmp_path, "case_000_0000.nii.gz: is 4D, expected a 3D image")


def test_truncated_file(capsys, good, tmp_path):
    path = good / "imagesTr" / "case_001_0000.nii.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    assert_rejected(capsys, good, tmp_path, "case_001_0000.nii.gz: unreadable or truncated file")


def test_garbage_file(capsys, good, tmp_path):
    (good / "labelsTr" / "case_001.nii.gz").write_bytes(b"not an image at all")
    assert_rejected(capsys, good, tmp_path, "case_001.nii.gz: unreadable or truncated file")


def test_empty_dataset(capsys, good, tmp_path):
    for d in ("imagesTr", "labelsTr"):
        for f in (good / d).iterdir():
            f.unlink()
    meta = json.loads((good / "dataset.json").read_text())
    meta.pop("numTraining")
    (good / "dataset.json").write_text(json.dumps(meta))
    assert_rejected(capsys, good, tmp_path, "empty dataset")


def test_missing_or_broken_dataset_json(capsys, good, tmp_path):
    (good / "dataset.json").write_text("{not json")
    assert_rejected(capsys, good, tmp_path, "dataset.json: not valid JSON")
    (good / "dataset.json").unlink()
    assert_rejected(capsys, good, tmp_path, "dataset.json: missing")


def test_every_problem_reported_at_once(capsys, good, tmp_path):
    (good / "labelsTr" / "case_000.nii.gz").unlink()
    label = np.zeros((12, 16, 14), np.uint8)
    label[1, 1, 1] = 9
    write_image(good / "labelsTr" / "case_001.nii.gz", label, (2.0, 1.0, 1.0))
    write_image(good / "imagesTr" / "case_002_0000.nii.gz", np.full((12, 16, 14), np.nan, np.float32), (2.0, 1.0, 1.0))
    # a missing file does not hide the voxel problems of the other cases: all three at once, sorted by file
    lines = assert_rejected(capsys, good, tmp_path, "case_000.nii.gz: missing label file",
                            "case_001.nii.gz: label value(s) 9", "case_002_0000.nii.gz: 2688 NaN/Inf")
    problems = lines[:-1]
    assert len(problems) == 3 and problems == sorted(problems)
    assert lines[-1].startswith("autoseg: error:") and "3 problem(s)" in lines[-1]


def test_msd_and_nnunet_layouts_read_identically(tmp_path):
    nn = write_nnunet_dataset(tmp_path / "nn", n_cases=3, n_channels=2, seed=7)
    msd = write_msd_dataset(tmp_path / "msd", n_cases=3, n_channels=2, seed=7)
    a, b = load_dataset(nn), load_dataset(msd)
    assert (a.layout, b.layout) == ("nnunet", "msd")
    assert a.channel_names == b.channel_names and a.labels == b.labels
    assert [c.case_id for c in a.cases] == [c.case_id for c in b.cases]
    for ca, cb in zip(a.cases, b.cases):
        da, _ = read_case(a, ca)
        db, _ = read_case(b, cb)
        np.testing.assert_array_equal(da.image, db.image)
        np.testing.assert_array_equal(da.label, db.label)
        assert da.geometry == db.geometry
    fa, fb = compute_fingerprint(a, workers=1, progress=False), compute_fingerprint(b, workers=1, progress=False)
    assert fa.cases == fb.cases and fa.foreground_intensity == fb.foreground_intensity


@pytest.mark.parametrize("ending", [".nii", ".nrrd", ".mha"])
def test_other_formats_read_like_nifti_gz(tmp_path, ending):
    ref = load_dataset(write_nnunet_dataset(tmp_path / "gz", n_cases=2, seed=3))
    other = load_dataset(write_nnunet_dataset(tmp_path / ending.strip("."), n_cases=2, seed=3, ending=ending))
    for ca, cb in zip(ref.cases, other.cases):
        da, _ = read_case(ref, ca)
        db, _ = read_case(other, cb)
        np.testing.assert_array_equal(da.image, db.image)
        np.testing.assert_array_equal(da.label, db.label)
        assert da.geometry.spacing == db.geometry.spacing == (2.0, 1.0, 1.0)


def test_load_dataset_raises_with_all_header_problems(good):
    (good / "labelsTr" / "case_000.nii.gz").unlink()
    (good / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(DatasetInvalid) as info:
        load_dataset(good)
    assert len(info.value.problems) == 2


def test_nifti_geometry_matches_itk_for_oblique_and_flipped_directions(tmp_path):
    """nibabel reads NIfTI; its geometry must equal SimpleITK's (the convention of every other format)."""
    from scipy.spatial.transform import Rotation

    from autoseg.dataset.image_io import _read_itk, read_image

    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    flips = np.diag([-1.0, 1.0, -1.0])
    for i, matrix in enumerate([np.eye(3), flips, Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix(),
                                np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)]):
        path = write_image(tmp_path / f"g{i}.nii.gz", array, spacing=(3.0, 0.7, 0.8), origin=(10.0, -20.5, 33.0),
                           direction=matrix.ravel())
        a, g = read_image(path)
        b, h = _read_itk(path)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(g.spacing, h.spacing, atol=1e-6)
        np.testing.assert_allclose(g.origin, h.origin, atol=1e-4)
        np.testing.assert_allclose(g.direction, h.direction, atol=1e-6)
