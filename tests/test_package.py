"""Model packages, the Python API, per-case reports, input checks at prediction and --part shares."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.inference.predict import PredictOptions, predict
from autoseg import Predictor
from autoseg.inference.report import load_case_report
from autoseg.model.package import MANIFEST, read_package, sha256_bytes

from conftest import REPO, run_autoseg, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("package"), 1, ["0", "1"], validate=True)


@pytest.fixture(scope="module")
def package(trained) -> Path:
    path = trained.parent / "model.autoseg"
    run_autoseg("export", trained, "-o", path, "--description", "tiny synthetic model")
    return path


@pytest.fixture(scope="module")
def scans(trained) -> Path:
    return Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _same_file_content(a: Path, b: Path) -> bool:
    x, y = nib.load(str(a)), nib.load(str(b))
    return x.header.binaryblock == y.header.binaryblock and np.array_equal(np.asanyarray(x.dataobj),
                                                                            np.asanyarray(y.dataobj))


# --- export, info, predict from the one file -----------------------------------------------------------


def test_package_alone_in_an_empty_folder_predicts_like_the_training_folder(trained, package, scans, tmp_path):
    from_folder = tmp_path / "from_folder"
    run_autoseg("predict", "-i", scans, "-o", from_folder, "-m", trained / "models", "-q", "--device", "cpu")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    copy = shutil.copy(package, empty / "model.autoseg")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}  # no AUTOSEG_* or anything else
    proc = subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(scans), "-o", "out", "-m",
                           "model.autoseg", "-q", "--device", "cpu"], cwd=empty, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (empty / "out").glob("case_*.nii.gz"))
    assert len(written) == 6
    for name in written:
        assert _same_file_content(empty / "out" / name, from_folder / name), name
    report = load_case_report(empty / "out" / "case_000_report.json")
    assert report.model.package_sha256 == sha256_bytes(Path(copy).read_bytes())
    assert report.model.configurations == ["3d_fullres"] and report.model.folds == ["0", "1"]


def test_package_holds_what_prediction_needs_and_a_card(package):
    contents = read_package(package)
    names = set(contents.members)
    assert {"package.json", "plans/3d_fullres.json", "weights/3d_fullres/fold_0.pt", "weights/3d_fullres/fold_1.pt",
            "training_summary.json", "model_card.json", "model_card.md"} <= names
    assert not any(n.endswith(("checkpoint_final.pt", "checkpoint_latest.pt")) for n in names)
    card = contents.card
    assert card.num_training_cases == 6 and card.description == "tiny synthetic model"
    assert card.labels == {"background": 0, "a": 1, "b": 2} and card.folds == ["0", "1"]
    dice = card.cross_validation_dice["3d_fullres"]
    assert set(dice) == {"a", "b"} and all(v is None or 0 <= v <= 1 for v in dice.values())
    info = run_autoseg("info", package).stdout
    assert "tiny synthetic model" in info and "| 3d_fullres |" in info and contents.sha256 in info


def test_half_package_is_smaller_and_predicts(trained, package, scans, tmp_path):
    half = tmp_path / "half.autoseg"
    run_autoseg("export", trained, "-o", half, "--half", "--folds", "0")
    full_one_fold = tmp_path / "full.autoseg"
    run_autoseg("export", trained, "-o", full_one_fold, "--folds", "0")
    assert half.stat().st_size < 0.7 * full_one_fold.stat().st_size
    assert read_package(half).card.weights_dtype == "float16"
    out = tmp_path / "out"
    run_autoseg("predict", "-i", scans / "case_000_0000.nii.gz", "-o", out, "-m", half, "-q", "--device", "cpu")
    assert _labels(out / "case_000.nii.gz").shape == nib.load(str(scans / "case_000_0000.nii.gz")).shape


def _rewrite(source: Path, target: Path, change) -> Path:
    """Copy a package, letting `change(members)` edit the member dict (name -> bytes)."""
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _reseal(members: dict) -> None:
    """Recompute the manifest, as an attacker who knows the format would."""
    manifest = json.loads(members[MANIFEST])
    manifest["members"] = {n: sha256_bytes(d) for n, d in members.items() if n != MANIFEST}
    members[MANIFEST] = json.dumps(manifest).encode()


class _Payload:
    """Unpickling this would run code (create a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _damaged_packages(package: Path, folder: Path, marker: Path):
    data = package.read_bytes()
    yield "truncated at half", _write(folder / "half.autoseg", data[:len(data) // 2]), "truncated"
    yield "truncated near the end", _write(folder / "end.autoseg", data[:-40]), "truncated"
    flipped = bytearray(data)
    at = data.index(b"PK\x03\x04", data.index(b"weights/")) - 200  # inside a weights member's bytes
    flipped[at] ^= 0x01
    yield "one flipped bit", _write(folder / "bit.autoseg", bytes(flipped)), "package"
    yield "not a zip", _write(folder / "text.autoseg", b"hello, I am not a model\n"), "not a model package"
    yield "foreign zip", _rewrite(package, folder / "foreign.autoseg",
                                  lambda m: m.pop(MANIFEST)), "not an autoseg model package"

    def add_member(m):
        m["extra.py"] = b"print('hi')"
    yield "extra member", _rewrite(package, folder / "extra.autoseg", add_member), "extra.py is not in the manifest"

    def swap_weights(m):
        m["weights/3d_fullres/fold_0.pt"] = m["weights/3d_fullres/fold_1.pt"]
    yield "swapped weights", _rewrite(package, folder / "swap.autoseg", swap_weights), "does not match its checksum"

    def future_format(m):
        manifest = json.loads(m[MANIFEST])
        manifest["format_version"] = 99
        m[MANIFEST] = json.dumps(manifest).encode()
    yield "future format", _rewrite(package, folder / "future.autoseg", future_format), "package format 99"

    def code_in_weights(m):
        m["weights/3d_fullres/fold_0.pt"] = pickle.dumps({"w": _Payload(str(marker))})
        _reseal(m)
    yield "pickled code, resealed", _rewrite(package, folder / "code.autoseg", code_in_weights), \
        "not a plain weights file"

    def escaping_member(m):
        m["../escape.json"] = b"{}"
        _reseal(m)
    yield "escaping member", _rewrite(package, folder / "escape.autoseg", escaping_member), "would escape"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_damaged_or_tampered_packages_fail_with_one_line(package, scans, tmp_path, capsys):
    from autoseg.cli import main

    marker = tmp_path / "code_ran"
    for what, path, message in _damaged_packages(package, tmp_path, marker):
        for command in (["info", path], ["predict", "-i", scans / "case_000_0000.nii.gz", "-o", tmp_path / "o",
                                         "-m", path, "-q"]):
            code = main([str(c) for c in command])  # in-process: any exception but a one-line error fails here
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 1, (what, lines)
            assert len(lines) == 1, (what, lines)
            assert str(path) in lines[0] and message in lines[0], (what, lines[0])
    assert not marker.exists(), "a package executed code"
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.nii.gz"))


# --- the Python API ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(package) -> Predictor:
    return Predictor.load(package, device="cpu")


def test_api_returns_the_kind_it_was_given_with_the_input_geometry(predictor, package, scans, tmp_path):
    scan = scans / "case_001_0000.nii.gz"
    cli = tmp_path / "cli"
    run_autoseg("predict", "-i", scan, "-o", cli, "-m", package, "-q", "--device", "cpu")
    expected = _labels(cli / "case_001.nii.gz")

    from_path = predictor.predict(scan)
    assert isinstance(from_path, nib.Nifti1Image)
    assert np.array_equal(np.asanyarray(from_path.dataobj), expected)
    assert np.array_equal(from_path.affine, nib.load(str(scan)).affine)

    written = predictor.predict(scan, output=tmp_path / "api.nii.gz")
    assert written == tmp_path / "api.nii.gz" and _same_file_content(written, cli / "case_001.nii.gz")

    image = sitk.ReadImage(str(scan))
    from_sitk = predictor.predict(image)
    assert isinstance(from_sitk, sitk.Image)
    assert np.array_equal(sitk.GetArrayFromImage(from_sitk), expected.transpose(2, 1, 0))
    assert from_sitk.GetSpacing() == image.GetSpacing() and from_sitk.GetOrigin() == image.GetOrigin()
    assert from_sitk.GetDirection() == image.GetDirection()

    nifti = nib.load(str(scan))
    from_nib = predictor.predict(nifti)
    assert isinstance(from_nib, nib.Nifti1Image) and np.array_equal(from_nib.affine, nifti.affine)
    assert np.array_equal(np.asanyarray(from_nib.dataobj), expected)

    array = sitk.GetArrayFromImage(image).astype(np.float32)
    from_numpy = predictor.predict(array, spacing=image.GetSpacing()[::-1], origin=image.GetOrigin(),
                                   direction=image.GetDirection())
    assert isinstance(from_numpy, np.ndarray) and np.array_equal(from_numpy, expected.transpose(2, 1, 0))

    seg, report = predictor.predict(scan, report=True)
    counts = np.bincount(np.asanyarray(seg.dataobj).ravel(), minlength=3)
    assert [(s.name, s.voxels) for s in report.labels] == [("a", counts[1]), ("b", counts[2])]


def test_api_is_thread_safe(predictor, scans):
    paths = [scans / f"case_{k:03d}_0000.nii.gz" for k in range(4)]
    alone = [np.asanyarray(predictor.predict(p).dataobj) for p in paths]
    together = [None] * len(paths)

    def work(k):
        together[k] = np.asanyarray(predictor.predict(paths[k]).dataobj)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_api_refuses_bad_inputs_with_one_line(predictor):
    with pytest.raises(AutosegError, match="channel"):
        predictor.predict(np.zeros((2, 8, 8, 8), np.float32))
    with pytest.raises(AutosegError, match="NaN"):
        predictor.predict(np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(AutosegError, match="spacing"):
        predictor.predict(np.zeros((8, 8, 8), np.float32), spacing=(0.0, 1.0, 1.0))
    with pytest.raises(AutosegError, match="cannot predict a list"):
        predictor.predict([1, 2, 3])


# --- reports, previews, input checks --------------------------------------------------------------------


def test_report_values_hand_checked(package, tmp_path):
    """A scan whose predicted label map is replaced by a known one: the report must describe that one."""
    from autoseg.inference.predictor import Predictor as P

    predictor = P.load(package, device="cpu")
    spacing = (2.0, 0.5, 1.0)
    image = np.zeros((10, 12, 14), np.float32)
    image[1:, 1:, 1:] = 100.0
    image[2:4, 2:4, 2:4] = 10.0  # label 1, first component: 8 voxels of 10
    image[6:8, 6:8, 6:8] = 30.0  # label 1, second component: 8 voxels of 30
    image[2:5, 8:11, 9:12] = 50.0  # label 2: 27 voxels of 50
    known = np.zeros(image.shape, np.uint8)
    known[2:4, 2:4, 2:4] = 1
    known[6:8, 6:8, 6:8] = 1
    known[2:5, 8:11, 9:12] = 2
    data, header, file_format, name = _memory_case(image, spacing)
    prepared = predictor.prepare(data, header, file_format, name)
    report = predictor.case_report(prepared, known, "hand", "")
    a, b = report.labels
    assert (a.name, a.voxels, a.components) == ("a", 16, 2)
    assert (b.name, b.voxels, b.components) == ("b", 27, 1)
    assert a.volume_mm3 == pytest.approx(16 * 1.0) and a.volume_ml == pytest.approx(0.016)
    assert b.volume_mm3 == pytest.approx(27.0)
    assert a.channels[0].mean == pytest.approx(20.0) and b.channels[0].mean == pytest.approx(50.0)
    assert a.channels[0].p50 == pytest.approx(20.0) and a.channels[0].std == pytest.approx(10.0)
    assert report.spacing == list(spacing) and report.shape == [10, 12, 14]


def _memory_case(image, spacing):
    from autoseg.dataset.image_io import Geometry
    from autoseg.dataset.validation import CaseData

    return CaseData("hand", image[None], None, Geometry(spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))), \
        None, ".nii.gz", "<memory>"


def test_predict_writes_reports_csv_and_previews(package, scans, tmp_path):
    out = tmp_path / "out"
    run_autoseg("predict", "-i", scans, "-o", out, "-m", package, "-q", "--device", "cpu", "--preview")
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("case_id,output,a_voxels")
    for k in range(6):
        case = f"case_{k:03d}"
        report = load_case_report(out / f"{case}_report.json")
        labels = _labels(out / f"{case}.nii.gz")
        assert [s.voxels for s in report.labels] == [int((labels == 1).sum()), int((labels == 2).sum())]
        assert report.inputs[0].sha256 == sha256_bytes((scans / f"{case}_0000.nii.gz").read_bytes())
        assert {"read_s", "preprocess_s", "network_s", "total_s"} <= set(report.timings_s)
        from PIL import Image
        with Image.open(out / f"{case}_preview.png") as picture:
            assert picture.format == "PNG" and min(picture.size) >= 200


def _with_spacing(source: Path, target: Path, factor: float) -> Path:
    image = nib.load(str(source))
    affine = image.affine @ np.diag([1.0, 1.0, factor, 1.0])
    moved = nib.Nifti1Image(np.asanyarray(image.dataobj), affine)
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(moved, str(target))
    return target


def test_input_checks_warn_in_the_report_and_fail_under_strict(package, scans, tmp_path):
    odd = _with_spacing(scans / "case_002_0000.nii.gz", tmp_path / "in" / "thick_0000.nii.gz", 5.0)
    out = tmp_path / "out"
    run_autoseg("predict", "-i", odd.parent, "-o", out, "-m", package, "-q", "--device", "cpu")
    warnings = load_case_report(out / "thick_report.json").warnings
    assert len(warnings) == 1 and str(odd) in warnings[0] and "spacing" in warnings[0]
    assert "thick" in (out / "predictions.csv").read_text().splitlines()[1]
    strict = run_autoseg("predict", "-i", odd.parent, "-o", tmp_path / "strict", "-m", package, "-q",
                         "--device", "cpu", "--strict", check=False)
    assert strict.returncode == 1 and "refused under --strict" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "strict" / "thick.nii.gz").exists()


# --- many machines ------------------------------------------------------------------------------------------


def test_parts_split_the_cases_and_together_cover_them(package, scans, tmp_path):
    out = tmp_path / "out"
    done = []
    for k in (1, 2, 3):
        result = predict(scans, out, package, PredictOptions(device="cpu", progress=False, part=(k, 3)))
        done.append(set(result.written))
    assert all(len(d) == 2 for d in done) and set.union(*done) == {f"case_{k:03d}" for k in range(6)}
    assert not set.intersection(*done)
    assert len((out / "predictions.csv").read_text().strip().splitlines()) == 1 + 6
    assert {p.name for p in out.glob("prediction_summary.part*.json")} == \
        {f"prediction_summary.part{k}of3.json" for k in (1, 2, 3)}
    again = predict(scans, out, package, PredictOptions(device="cpu", progress=False, skip_existing=True))
    assert not again.written and len(again.skipped) == 6
    bad = run_autoseg("predict", "-i", scans, "-o", out, "-m", package, "--part", "4/3", check=False)
    assert bad.returncode == 1 and "--part '4/3'" in bad.stderr


def test_torchrun_ranks_take_their_share_without_a_flag(package, scans, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = predict(scans, tmp_path / "out", package, PredictOptions(device="cpu", progress=False))
    assert sorted(result.written) == ["case_001", "case_003", "case_005"]


def test_api_loads_a_models_folder_too(trained, package, scans):
    folder_predictor = Predictor.load(trained / "models", device="cpu", folds=["0"])
    assert folder_predictor.models.package_sha256 is None and folder_predictor.models.training_summary is not None
    seg = folder_predictor.predict(scans / "case_000_0000.nii.gz")
    assert seg.shape == nib.load(str(scans / "case_000_0000.nii.gz")).shape
    with pytest.raises(AutosegError, match="no fold 7"):
        Predictor.load(package, device="cpu", folds=["7"])


def test_export_killed_at_any_moment_leaves_no_package_or_a_whole_one(trained, tmp_path):
    """kill -9 during `autoseg export`: the path holds nothing or a package that verifies, never a partial one,
    and the next export replaces whatever temp file was left."""
    import random
    import signal
    import time

    package = tmp_path / "model.autoseg"
    rng = random.Random(7)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "autoseg", "export", str(trained), "-o", str(package)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if package.exists():
            read_package(package)  # raises on a partial or damaged file
        package.unlink(missing_ok=True)
    run_autoseg("export", trained, "-o", package)
    read_package(package)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], list(tmp_path.iterdir())
