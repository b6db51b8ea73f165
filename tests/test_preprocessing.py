"""Preprocessing forward and its inverse: round trips, geometry bit-exactness, normalization, resumability."""
import itertools
import json
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from autoseg.cli import main
from autoseg.dataset import load_dataset, read_case
from autoseg.dataset.image_io import nifti_header_bytes
from autoseg.fingerprint import compute_fingerprint
from autoseg.planning import load_plan, plan_experiment
from autoseg.planning.plan_types import ChannelNormalization
from autoseg.preprocessing import preprocess_case, restore_label, restore_probabilities, write_like_source
from autoseg.preprocessing.crop import OUTSIDE, crop_to_nonzero
from autoseg.preprocessing.normalize import normalize_channel
from autoseg.preprocessing.resample import resample_label
from autoseg.preprocessing.storage import load_case
from conftest import REPO, write_image, write_nnunet_dataset


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------- normalization, hand-computed ----------

def test_ct_normalization_clips_then_uses_dataset_statistics():
    rule = ChannelNormalization("CT", "ct", False, clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    x = np.array([[[-1000.0, -100.0, 0.0, 50.0, 200.0, 3000.0]]], np.float32)
    np.testing.assert_allclose(normalize_channel(x, rule, None), [[[-6.0, -6.0, -2.0, 0.0, 6.0, 6.0]]])


def test_zscore_normalization_whole_image():
    rule = ChannelNormalization("MRI", "zscore", False)
    x = np.array([[[0.0, 2.0, 4.0, 6.0]]], np.float32)  # mean 3, std sqrt(5)
    np.testing.assert_allclose(normalize_channel(x, rule, None), (x - 3) / np.sqrt(5), rtol=1e-6)


def test_zscore_normalization_masked():
    rule = ChannelNormalization("MRI", "zscore", True)
    x = np.array([[[0.0, 0.0, 10.0, 20.0, 30.0]]], np.float32)
    mask = x > 0  # inside: mean 20, std sqrt(200/3)
    expected = np.where(mask, (x - 20) / np.sqrt(200 / 3), 0)
    np.testing.assert_allclose(normalize_channel(x, rule, mask), expected, rtol=1e-6)


def test_crop_marks_background_outside_nonzero_region():
    image = np.zeros((1, 6, 6, 6), np.float32)
    image[0, 1:5, 1:5, 1:4] = 5
    image[0, 2, 2, 2] = 0  # a hole: filled, so inside
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2] = 1
    img, lab, mask, bbox = crop_to_nonzero(image, label)
    assert bbox == [[1, 5], [1, 5], [1, 4]] and img.shape == (1, 4, 4, 3)
    assert mask.all() and (lab != OUTSIDE).all()
    image[0, 1, 1, 1] = 0  # corner of the box, not a hole: outside
    _, lab, mask, _ = crop_to_nonzero(image, label)
    assert lab[0, 0, 0] == OUTSIDE and (lab == OUTSIDE).sum() == 1


# ---------- round trips ----------

def test_hippocampus_label_round_trip_is_exact(hippocampus_dir):
    ds = load_dataset(hippocampus_dir)
    plan = plan_experiment(compute_fingerprint(ds, progress=False))
    for case in ds.cases:
        data, problems = read_case(ds, case)
        assert not problems
        _, label, props = preprocess_case(data, plan, "3d_fullres")
        assert props.shape_after_resampling == props.shape_after_crop  # 1 mm everywhere: no resampling
        np.testing.assert_array_equal(restore_label(label, props, plan), data.label, err_msg=case.case_id)


def _anisotropic_case(tmp_path):
    """One case at 3.6 x 0.7 x 0.7 mm in a dataset whose median spacing is finer: it must be resampled."""
    rng = np.random.default_rng(0)
    root = tmp_path / "aniso"
    shapes = {"big": ((14, 80, 72), (3.6, 0.7, 0.7)), "a": ((20, 90, 90), (2.5, 0.5, 0.5)),
              "b": ((20, 90, 90), (2.5, 0.5, 0.5))}
    for name, (shape, spacing) in shapes.items():
        zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
        centre = [n * s / 2 for n, s in zip(shape, spacing)]
        r = np.sqrt(((zz - centre[0]) / 1.6) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        label = np.zeros(shape, np.uint8)
        label[r < 17] = 1
        label[(r < 10) & (xx > centre[2])] = 2
        image = (rng.normal(100, 5, shape) + 40 * label).astype(np.float32)
        write_image(root / "imagesTr" / f"{name}_0000.nii.gz", image, spacing)
        write_image(root / "labelsTr" / f"{name}.nii.gz", label, spacing)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": 3, "file_ending": ".nii.gz"}))
    return root


def test_resampled_round_trip_keeps_dice_above_098(tmp_path):
    ds = load_dataset(_anisotropic_case(tmp_path))
    plan = plan_experiment(compute_fingerprint(ds, workers=1, progress=False))
    case = next(c for c in ds.cases if c.case_id == "big")
    data, _ = read_case(ds, case)
    image, label, props = preprocess_case(data, plan, "3d_fullres")
    assert props.shape_after_resampling != props.shape_after_crop and image.shape[1:] == label.shape
    back = restore_label(label, props, plan)
    assert back.shape == data.label.shape
    for value in (1, 2):
        assert dice(back == value, data.label == value) >= 0.98
    # probabilities take the same way back
    onehot = np.stack([(label == v).astype(np.float32) for v in (0, 1, 2)])
    probs = restore_probabilities(onehot, props, plan)
    assert probs.shape == (3,) + data.label.shape
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    for value in (1, 2):
        assert dice(probs.argmax(0) == value, data.label == value) >= 0.98


def test_label_resampling_never_invents_labels():
    label = np.zeros((10, 10, 10), np.int8)
    label[2:5, 2:5, 2:5] = 1
    label[5:8, 5:8, 5:8] = 3
    out = resample_label(label, (17, 13, 7), ["linear"] * 3)
    assert set(np.unique(out)) <= {0, 1, 3}


# ---------- geometry: bit-identical write-back ----------

def _geometry_fields(path):
    h = nib.load(str(path)).header
    return {k: h[k].tobytes() for k in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                                        "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z",
                                        "pixdim", "xyzt_units", "dim")}


def _round_trip_file(tmp_path, name, affine, qform=None):
    """Write image+label with this affine, plan and preprocess the one-case dataset, restore, write back."""
    root = tmp_path / name
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(1)
    shape = (9, 7, 5)
    label = np.zeros(shape, np.uint8)
    label[2:6, 1:5, 1:4] = 1
    label[3:5, 2:4, 2] = 2
    image = (rng.normal(50, 5, shape) + 30 * label).astype(np.float32)
    for arr, path in ((image, root / "imagesTr" / "c_0000.nii.gz"), (label, root / "labelsTr" / "c.nii.gz")):
        img = nib.Nifti1Image(arr, affine)
        img.set_sform(affine, code=2)
        img.set_qform(qform if qform is not None else affine, code=1)
        nib.save(img, str(path))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    ds = load_dataset(root)
    plan = plan_experiment(compute_fingerprint(ds, workers=1, progress=False))
    data, problems = read_case(ds, ds.cases[0])
    assert not problems
    _, seg, props = preprocess_case(data, plan, "3d_fullres", nifti_header=nifti_header_bytes(ds.cases[0].image_files[0]))
    out = tmp_path / f"{name}_out.nii.gz"
    write_like_source(restore_label(seg, props, plan), props, out)
    src = root / "imagesTr" / "c_0000.nii.gz"
    return src, out, root / "labelsTr" / "c.nii.gz"


def test_geometry_bit_identical_for_all_48_axis_permutations_and_flips(tmp_path):
    spacing = np.array([0.8, 1.1, 2.5])
    n = 0
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs)):
                matrix[row, col] = sign * spacing[col]
            affine = np.eye(4)
            affine[:3, :3] = matrix
            affine[:3, 3] = [12.5, -7.25, 30.0]
            src, out, label_path = _round_trip_file(tmp_path, f"p{n}", affine)
            assert _geometry_fields(out) == _geometry_fields(src), f"perm {perm} signs {signs}"
            np.testing.assert_array_equal(nib.load(str(out)).get_fdata(), nib.load(str(label_path)).get_fdata())
            n += 1
    assert n == 48


def test_geometry_bit_identical_for_oblique_direction_with_distinct_qform(tmp_path):
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", [17, -23, 41], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 3.0])
    affine[:3, 3] = [-88.1, 12.7, 5.5]
    qform = affine.copy()
    qform[:3, 3] += 0.5  # a qform that differs from the sform must survive too
    src, out, label_path = _round_trip_file(tmp_path, "oblique", affine, qform)
    assert _geometry_fields(out) == _geometry_fields(src)
    np.testing.assert_array_equal(nib.load(str(out)).get_fdata(), nib.load(str(label_path)).get_fdata())


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_geometry_of_itk_formats_round_trips(tmp_path, ending):
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    direction = Rotation.from_euler("xyz", [10, 20, -30], degrees=True).as_matrix().ravel()
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, ending=ending)
    for path in list((root / "imagesTr").iterdir()) + list((root / "labelsTr").iterdir()):
        img = sitk.ReadImage(str(path))
        img.SetDirection(direction.tolist())
        img.SetOrigin((3.5, -2.25, 100.0))
        sitk.WriteImage(img, str(path))
    ds = load_dataset(root)
    plan = plan_experiment(compute_fingerprint(ds, workers=1, progress=False))
    data, _ = read_case(ds, ds.cases[0])
    _, seg, props = preprocess_case(data, plan, "3d_fullres", file_format=ending)
    out = tmp_path / f"out{ending}"
    write_like_source(restore_label(seg, props, plan), props, out)
    a, b = sitk.ReadImage(str(out)), sitk.ReadImage(str(ds.cases[0].label_file))
    if ending == ".mha":  # stores spacing and direction separately: bit-identical
        assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    else:  # NRRD stores their product, so ITK's own write/read cycle moves the last bit
        for x, y in ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection())):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


# ---------- dataset-level step ----------

def test_preprocess_cli_writes_loadable_cases_and_skips_on_rerun(tmp_path, capsys):
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=4)
    out = tmp_path / "out"
    assert main(["plan", str(ds), "-o", str(out), "-q", "--preprocess", "--workers", "2"]) == 0
    assert "preprocessed 4 case(s), 0 already up to date" in capsys.readouterr().out
    plan = load_plan(out / "plan.json")
    for name in plan.configurations:
        image, label, props = load_case(out / "preprocessed" / name, "case_000")
        assert isinstance(image, np.memmap) and image.dtype == np.float32 and image.shape[1:] == label.shape
        assert set(props.class_locations) == {"1", "2"}
        coords = np.array(props.class_locations["1"]).reshape(-1, 3)
        assert (label[tuple(coords.T)] == 1).all()
    assert main(["preprocess", str(out), "-q"]) == 0
    assert "preprocessed 0 case(s), 4 already up to date" in capsys.readouterr().out
    # a changed source file is redone, the others are not
    write_image(ds / "labelsTr" / "case_002.nii.gz", np.zeros((12, 16, 14), np.uint8), (2.0, 1.0, 1.0))
    assert main(["preprocess", str(out), "-q"]) == 0
    assert "preprocessed 1 case(s), 3 already up to date" in capsys.readouterr().out
    assert main(["preprocess", str(out), "-q", "--force", "--configs", "2d"]) == 0
    assert "preprocessed 4 case(s), 0 already up to date" in capsys.readouterr().out


def test_preprocess_errors_are_one_line(tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "plan.json: file not found" in err and "Traceback" not in err
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=2)
    assert main(["plan", str(ds), "-o", str(tmp_path / "o"), "-q", "--configs", "2d"]) == 0
    assert main(["preprocess", str(tmp_path / "o"), "--configs", "3d_fullres"]) == 1
    assert "no configuration 3d_fullres" in capsys.readouterr().err


def test_killed_run_resumes_without_truncated_files(tmp_path):
    ds = write_nnunet_dataset(tmp_path / "ds", n_cases=40, shape=(40, 64, 64))
    out = tmp_path / "out"
    assert main(["plan", str(ds), "-o", str(out), "-q", "--configs", "3d_fullres"]) == 0
    folder = out / "preprocessed" / "3d_fullres"
    cmd = [sys.executable, "-m", "autoseg", "preprocess", str(out), "-q", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(folder.glob("*.json"))) < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(folder.glob("*.json")))
    assert 5 <= done < 40, "the kill must land part-way"
    # whatever is on disk now is either complete or absent: every .npy that exists loads fully
    for path in folder.glob("*.npy"):
        if not path.name.startswith(".tmp-"):
            np.load(path)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"preprocessed {40 - done} case(s), {done} already up to date" in result.stdout
    assert not list(folder.glob(".tmp-*"))
    for i in range(40):
        image, label, props = load_case(folder, f"case_{i:03d}", mmap=False)
        assert image.shape[1:] == label.shape == tuple(props.shape_after_resampling)
