"""Bad scans and bad situations at prediction: each bad case fails alone with one line naming its file,
the good ones are still written, nothing half-written stays, and reruns trust nothing they did not check."""
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.cli import main

from conftest import run_autoseg, train_tiny

CORPUS_STAGE = "predict"
CORPUS_CLASSES = {
    "bad-scan": "a scan that cannot be used fails alone with one line naming it (exit 1); the other scans are "
                "predicted and written",
    "bad-model-path": "a model path that is missing or not a model fails before anything is written, one line",
    "continue-verifies": "--continue re-predicts an output that is truncated, damaged or inconsistent with its "
                         "report instead of skipping it",
    "own-input-folder": "predicting into the input folder is refused up front (its outputs would be read as "
                        "scans next time); a subfolder works every time",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("hostile_predict"), 1, ["0"])


@pytest.fixture(scope="module")
def good_scan(trained) -> Path:
    return Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr" / \
        "case_000_0000.nii.gz"


def _nifti(path: Path, array: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _not_an_image(path: Path, good: Path) -> None:
    path.write_bytes(gzip.compress(b"this is a text file, not a scan\n" * 20))


def _nan(path: Path, good: Path) -> None:
    image = nib.load(str(good))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def _inf(path: Path, good: Path) -> None:
    image = nib.load(str(good))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[..., 0] = np.inf
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def _two_channels(path: Path, good: Path) -> None:
    image = nib.load(str(good))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), image.affine), str(path))


def _two_d(path: Path, good: Path) -> None:
    _nifti(path, np.ones((20, 18), np.float32))


def _five_d(path: Path, good: Path) -> None:
    _nifti(path, np.ones((4, 4, 4, 2, 2), np.float32))


def _directory(path: Path, good: Path) -> None:
    path.mkdir()


def _wrong_magic(path: Path, good: Path) -> None:
    data = bytearray(gzip.decompress(good.read_bytes()))
    data[344:348] = b"xxxx"  # the NIfTI magic
    path.write_bytes(gzip.compress(bytes(data)))


def _header_only(path: Path, good: Path) -> None:
    data = gzip.decompress(good.read_bytes())
    path.write_bytes(gzip.compress(data[:352]))


BAD_SCANS = [
    pytest.param(_truncated, "truncated", id="bad-scan/truncated-gzip"),
    pytest.param(_empty, "", id="bad-scan/empty-file"),
    pytest.param(_not_an_image, "", id="bad-scan/gzip-of-text"),
    pytest.param(_nan, "NaN", id="bad-scan/nan-voxel"),
    pytest.param(_inf, "NaN/Inf", id="bad-scan/inf-slice"),
    pytest.param(_two_channels, "channel", id="bad-scan/two-channels-for-one"),
    pytest.param(_two_d, "2D", id="bad-scan/two-dimensional"),
    pytest.param(_five_d, "", id="bad-scan/five-dimensional"),
    pytest.param(_wrong_magic, "", id="bad-scan/wrong-nifti-magic"),
    pytest.param(_header_only, "", id="bad-scan/header-without-voxels"),
]


@pytest.mark.parametrize("make, words", BAD_SCANS)
def test_a_bad_scan_fails_alone_with_one_line(trained, good_scan, tmp_path, capsys, make, words):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(good_scan, inputs / "good_0000.nii.gz")
    bad = inputs / "bad_0000.nii.gz"
    make(bad, good_scan)
    out = tmp_path / "out"
    code = main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(trained / "models"), "-q",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    problem_lines = [line for line in err if not line.startswith("autoseg: error:")]
    assert code == 1
    assert len(problem_lines) == 1 and str(bad) in problem_lines[0] and words in problem_lines[0], err
    assert err[-1].startswith("autoseg: error: 1 case(s) failed: bad")
    assert (out / "good.nii.gz").is_file() and not (out / "bad.nii.gz").exists()
    assert not list(out.glob(".tmp-*"))


def test_a_bad_scan_through_a_real_process_shows_no_traceback(trained, good_scan, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _truncated(inputs / "bad_0000.nii.gz", good_scan)
    proc = run_autoseg("predict", "-i", inputs, "-o", tmp_path / "out", "-m", trained / "models", "-q", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2


@pytest.mark.parametrize("model", [
    pytest.param("missing", id="bad-model-path/missing"),
    pytest.param("textfile", id="bad-model-path/text-file"),
    pytest.param("emptydir", id="bad-model-path/empty-folder"),
])
def test_a_bad_model_path_fails_before_anything_is_written(good_scan, tmp_path, capsys, model):
    path = tmp_path / model
    if model == "textfile":
        path.write_text("not a model")
    elif model == "emptydir":
        path.mkdir()
    out = tmp_path / "out"
    code = main(["predict", "-i", str(good_scan), "-o", str(out), "-m", str(path), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(path) in lines[0], lines
    assert not out.exists()


def _damage_truncate(label: Path, report: Path) -> None:
    label.write_bytes(label.read_bytes()[:-30])


def _damage_flip(label: Path, report: Path) -> None:
    data = bytearray(label.read_bytes())
    data[len(data) // 2] ^= 0xFF
    label.write_bytes(bytes(data))


def _damage_report(label: Path, report: Path) -> None:
    report.write_text("{ not json")


def _damage_shape(label: Path, report: Path) -> None:
    data = json.loads(report.read_text())
    data["shape"] = [1, 2, 3]
    report.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [
    pytest.param(_damage_truncate, id="continue-verifies/truncated-label-map"),
    pytest.param(_damage_flip, id="continue-verifies/corrupted-label-map"),
    pytest.param(_damage_report, id="continue-verifies/unreadable-report"),
    pytest.param(_damage_shape, id="continue-verifies/report-disagrees"),
])
def test_continue_redoes_damaged_outputs(trained, good_scan, tmp_path, capsys, damage):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        shutil.copy(good_scan, inputs / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    args = ["predict", "-i", str(inputs), "-o", str(out), "-m", str(trained / "models"), "-q", "--device", "cpu"]
    assert main(args) == 0
    reference = np.asanyarray(nib.load(str(out / "a.nii.gz")).dataobj).copy()
    damage(out / "a.nii.gz", out / "a_report.json")
    capsys.readouterr()
    assert main([*args, "--continue"]) == 0
    captured = capsys.readouterr()
    assert "predicted 1 case(s), 1 already done" in captured.out
    assert "predicting a again" in captured.err and str(out / "a.nii.gz") in captured.err
    assert np.array_equal(np.asanyarray(nib.load(str(out / "a.nii.gz")).dataobj), reference)
    assert json.loads((out / "a_report.json").read_text())["shape"] == list(reference.shape[::-1])


@pytest.mark.parametrize("case", [pytest.param(None, id="own-input-folder/same-folder-then-subfolder")])
def test_predicting_into_the_input_folder_is_refused_and_a_subfolder_works_repeatedly(trained, good_scan, tmp_path,
                                                                                      capsys, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(good_scan, inputs / "a_0000.nii.gz")
    before = sorted(inputs.iterdir())
    code = main(["predict", "-i", str(inputs), "-o", str(inputs), "-m", str(trained / "models"), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "is the input folder" in lines[0]
    assert sorted(inputs.iterdir()) == before
    for _ in range(2):
        assert main(["predict", "-i", str(inputs), "-o", str(inputs / "pred"), "-m", str(trained / "models"),
                     "-q", "--device", "cpu"]) == 0
    assert (inputs / "pred" / "a.nii.gz").is_file()
