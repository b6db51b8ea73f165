"""autoseg predict on tiny trained models: geometry round trips, channels, TTA, folds, failures, --continue."""
import gzip
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.model.sliding_window import mirror_flips, predict_logits
from autoseg.postprocessing import Postprocessing, apply_postprocessing, save_postprocessing

from conftest import REPO, run_autoseg, train_tiny, write_nifti

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict1"), 1, ["0", "1"])


@pytest.fixture(scope="module")
def trained_two_channels(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict2"), 2, ["0"])


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, sign) in enumerate(zip(perm, signs)):
                m[row, col] = sign
            yield m


# --- sliding window ----------------------------------------------------------------------------------

class _Constant(torch.nn.Module):
    """Logits that are the same everywhere: any weighting mistake shows as a deviation."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, x):
        shape = (x.shape[0], len(self.values), *x.shape[2:])
        return self.values.view(1, -1, *[1] * (x.ndim - 2)).expand(shape).clone()


@pytest.mark.parametrize("shape,patch", [((30, 41, 23), (8, 16, 12)), ((5, 9, 7), (8, 16, 12)),
                                         ((6, 33, 20), (16, 12))])
def test_weighting_normalizes_to_the_network_output(shape, patch):
    out = predict_logits(_Constant([1.5, -2.0, 0.25]), np.ones((1, *shape), np.float32), patch, 3,
                         torch.device("cpu"), mirror_axes=(0, 1, 2), step=0.5)
    assert tuple(out.shape) == (3, *shape)
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(np.array([1.5, -2.0, 0.25])[:, None, None, None],
                                                             out.shape), rtol=1e-5)


def test_mirroring_and_folds_average_logits():
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(1, 2, 3, padding=1) for _ in range(2)]
    image = np.random.default_rng(0).normal(size=(1, 8, 10, 12)).astype(np.float32)
    patch = (8, 10, 12)  # one tile: the Gaussian weight divides out exactly
    dev = torch.device("cpu")
    plain = [predict_logits(n, image, patch, 2, dev) for n in nets]
    both = predict_logits(nets, image, patch, 2, dev)
    np.testing.assert_allclose(both.numpy(), ((plain[0] + plain[1]) / 2).numpy(), rtol=1e-5, atol=1e-6)
    mirrored = predict_logits(nets[0], image, patch, 2, dev, mirror_axes=(1,))
    flipped = predict_logits(nets[0], image[:, :, ::-1].copy(), patch, 2, dev).flip(2)
    np.testing.assert_allclose(mirrored.numpy(), ((plain[0] + flipped) / 2).numpy(), rtol=1e-5, atol=1e-6)
    assert len(mirror_flips(3, (0, 1, 2))) == 8 and len(mirror_flips(2, (0, 1, 2))) == 4


# --- postprocessing ------------------------------------------------------------------------------------

def test_largest_component_steps():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[1:5, 1:5, 1:5] = 1
    seg[1:3, 6:8, 6:8] = 2  # touches nothing: a separate foreground component
    seg[8, 8, 8] = 1  # a stray voxel of class 1
    out = apply_postprocessing(seg, Postprocessing(largest_component_of_foreground=True))
    assert out[8, 8, 8] == 0 and (out == 2).sum() == 0 and (out == 1).sum() == 64
    out = apply_postprocessing(seg, Postprocessing(largest_component_of_classes=[1]))
    assert out[8, 8, 8] == 0 and (out == 2).sum() == 8 and (out == 1).sum() == 64


# --- end to end ----------------------------------------------------------------------------------------

def test_predicts_every_case_in_its_own_geometry(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    out = tmp_path / "pred"
    proc = run_autoseg("predict", "-i", images, "-o", out, "-m", trained / "models", "--device", "cpu", "-q")
    assert "predicted 6 case(s)" in proc.stdout
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert summary["folds"] == ["0", "1"] and summary["failed"] == {} and len(summary["written"]) == 6
    for source in sorted(images.glob("*_0000.nii.gz")):
        case = source.name[:-len("_0000.nii.gz")]
        written, original = nib.load(str(out / f"{case}.nii.gz")), nib.load(str(source))
        assert written.shape == original.shape
        assert np.array_equal(written.affine, original.affine)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}


def test_orientation_round_trip_is_bit_identical(trained, tmp_path):
    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    expected = {}
    for k, rotation in enumerate(_signed_permutations()):
        affine = np.eye(4)
        affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 1.3])
        affine[:3, 3] = rng.uniform(-50, 50, 3)
        path = write_nifti(inputs / f"perm{k:02d}.nii.gz", rng.normal(100, 10, (14, 17, 15)).astype(np.float32), affine)
        expected[path.name] = nib.load(str(path)).header
    angle = 0.3
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = oblique @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [12.5, -7.25, 3.0]
    path = write_nifti(inputs / "oblique.nii.gz", rng.normal(100, 10, (18, 16, 9)).astype(np.float32), affine)
    expected[path.name] = nib.load(str(path)).header
    itk = sitk.GetImageFromArray(rng.normal(100, 10, (9, 16, 18)).astype(np.float32))
    itk.SetSpacing((0.7, 0.8, 2.5))
    itk.SetOrigin((1.5, -2.0, 30.0))
    itk.SetDirection(tuple(oblique.ravel()))
    sitk.WriteImage(itk, str(inputs / "oblique_itk.mha"))
    assert len(expected) == 49

    out = tmp_path / "out"
    run_autoseg("predict", "-i", inputs, "-o", out, "-m", trained / "models", "--folds", "0", "--no-tta", "-q")
    for name, header in expected.items():
        written = nib.load(str(out / name)).header
        for field in ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                      "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
            assert np.array_equal(written[field], header[field]), (name, field)
    back = sitk.ReadImage(str(out / "oblique_itk.mha"))
    assert back.GetSize() == itk.GetSize() and back.GetSpacing() == itk.GetSpacing()
    assert back.GetOrigin() == itk.GetOrigin() and back.GetDirection() == itk.GetDirection()


def test_multichannel_input_by_suffix_and_as_4d(trained_two_channels, tmp_path):
    images = Path(json.loads((trained_two_channels / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    by_suffix, as_4d = tmp_path / "suffix", tmp_path / "4d"
    by_suffix.mkdir()
    for c in (0, 1):
        shutil.copy(images / f"case_000_{c:04d}.nii.gz", by_suffix)
    channels = [nib.load(str(images / f"case_000_{c:04d}.nii.gz")) for c in (0, 1)]
    stacked = np.stack([np.asarray(c.dataobj) for c in channels], axis=-1)
    write_nifti(as_4d / "case_000.nii.gz", stacked, channels[0].affine)
    models = trained_two_channels / "models"
    for folder in (by_suffix, as_4d):
        run_autoseg("predict", "-i", folder, "-o", tmp_path / f"out_{folder.name}", "-m", models, "-q")
    a = nib.load(str(tmp_path / "out_suffix/case_000.nii.gz"))
    b = nib.load(str(tmp_path / "out_4d/case_000.nii.gz"))
    assert a.shape == b.shape == channels[0].shape
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert np.array_equal(b.affine, channels[0].affine)


def test_probabilities_and_entropy_in_source_geometry(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    source = images / "case_001_0000.nii.gz"
    out = tmp_path / "out"
    run_autoseg("predict", "-i", source, "-o", out, "-m", trained / "models", "--save-probabilities", "-q")
    label = nib.load(str(out / "case_001.nii.gz"))
    saved = np.load(out / "case_001_probabilities.npz")
    probs = saved["probabilities"]
    assert probs.shape == (3, *label.shape[::-1]) and list(saved["labels"]) == [0, 1, 2]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(probs.argmax(0).transpose(2, 1, 0), np.asarray(label.dataobj))
    entropy = nib.load(str(out / "case_001_entropy.nii.gz"))
    assert np.array_equal(entropy.affine, label.affine)
    values = np.asarray(entropy.dataobj)
    assert values.min() >= 0 and values.max() <= 1 + 1e-5


def test_corrupt_inputs_fail_alone_with_one_line_each(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("case_000", "case_001"):
        shutil.copy(images / f"{case}_0000.nii.gz", inputs)
    good = nib.load(str(images / "case_002_0000.nii.gz"))
    raw = gzip.decompress((images / "case_002_0000.nii.gz").read_bytes())
    (inputs / "truncated_0000.nii.gz").write_bytes(gzip.compress(raw[:len(raw) // 2]))
    nan = np.asarray(good.dataobj).astype(np.float32)
    nan[3, 4, 5] = np.nan
    write_nifti(inputs / "nan_0000.nii.gz", nan, good.affine)
    write_nifti(inputs / "twochannels.nii.gz", np.stack([nan, nan], -1), good.affine)
    proc = run_autoseg("predict", "-i", inputs, "-o", tmp_path / "out", "-m", trained / "models", "-q", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any("truncated_0000.nii.gz" in line and "unreadable or truncated" in line for line in lines)
    assert any("nan_0000.nii.gz" in line and "NaN" in line for line in lines)
    assert any("twochannels.nii.gz" in line and "the model expects 1" in line for line in lines)
    assert "3 case(s) failed: nan, truncated, twochannels" in lines[-1]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz"]
    summary = json.loads((tmp_path / "out/prediction_summary.json").read_text())
    assert sorted(summary["failed"]) == ["nan", "truncated", "twochannels"]


def test_missing_channel_file_and_channels_on_different_grids_are_named(trained_two_channels, tmp_path):
    images = Path(json.loads((trained_two_channels / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(images / "case_000_0000.nii.gz", inputs)
    shutil.copy(images / "case_001_0000.nii.gz", inputs)
    moved = nib.load(str(images / "case_001_0001.nii.gz"))
    shifted = moved.affine.copy()
    shifted[0, 3] += 4.0
    write_nifti(inputs / "case_001_0001.nii.gz", np.asarray(moved.dataobj), shifted)
    proc = run_autoseg("predict", "-i", inputs, "-o", tmp_path / "out", "-m", trained_two_channels / "models", "-q",
                    check=False)
    assert proc.returncode == 1 and "case_000_0001.nii.gz: missing" in proc.stderr
    assert "case_001_0001.nii.gz: geometry differs from channel 0 (origin" in proc.stderr


def test_never_overwrites_an_input(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(images / "case_000_0000.nii.gz", folder / "scan.nii.gz")
    before = (folder / "scan.nii.gz").read_bytes()
    proc = run_autoseg("predict", "-i", folder / "scan.nii.gz", "-o", folder, "-m", trained / "models", "-q",
                       check=False)
    assert proc.returncode == 1 and "would overwrite an input scan" in proc.stderr
    assert (folder / "scan.nii.gz").read_bytes() == before


def test_continue_after_a_kill_finishes_the_rest(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(16):
        shutil.copy(images / f"case_{k % 6:03d}_0000.nii.gz", inputs / f"scan{k:02d}_0000.nii.gz")
    out = tmp_path / "out"
    args = ["predict", "-i", inputs, "-o", out, "-m", trained / "models", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("scan*.nii.gz"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("scan*.nii.gz")}
    assert 3 <= len(finished) < 16, "the kill should land mid-run"
    rerun = run_autoseg(*args, "--continue")
    assert f"{len(finished)} already done" in rerun.stdout
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was predicted again"
    assert len(list(out.glob("scan*.nii.gz"))) == 16
    assert not list(out.glob(".tmp-*"))
    for path in out.glob("scan*.nii.gz"):
        assert nib.load(str(path)).get_fdata().shape == (18, 20, 16)


def test_saved_postprocessing_is_applied(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    plain = tmp_path / "plain"
    run_autoseg("predict", "-i", images, "-o", plain, "-m", models, "--no-tta", "-q")
    save_postprocessing(Postprocessing(largest_component_of_foreground=True), models / "3d_fullres")
    post = tmp_path / "post"
    run_autoseg("predict", "-i", images, "-o", post, "-m", models, "--no-tta", "-q")
    from scipy import ndimage
    for path in sorted(post.glob("*.nii.gz")):
        after = np.asarray(nib.load(str(path)).dataobj)
        before = np.asarray(nib.load(str(plain / path.name)).dataobj)
        assert ndimage.label(after > 0)[1] <= 1
        assert np.array_equal(after, apply_postprocessing(before, Postprocessing(largest_component_of_foreground=True)))


def test_slab_wise_argmax_equals_argmax_of_resampled_volumes(monkeypatch):
    from autoseg.preprocessing import resample
    rng = np.random.default_rng(5)
    volumes = rng.normal(size=(3, 10, 17, 13)).astype(np.float32)
    volumes[1, :3] = volumes[0, :3]  # ties go to the lower class, like argmax
    monkeypatch.setattr(resample, "BLOCK_VOXELS", 900)  # several blocks of output slabs
    for kernels in (["linear"] * 3, ["nearest", "linear", "linear"]):
        expected = np.stack([resample.resample_volume(v, (23, 9, 30), kernels) for v in volumes]).argmax(0)
        assert np.array_equal(resample.resample_argmax(volumes, (23, 9, 30), kernels), expected)
    assert np.array_equal(resample.resample_argmax(volumes, volumes.shape[1:], ["linear"] * 3), volumes.argmax(0))


def test_restore_resamples_logits_then_takes_the_softmax_like_nnunet(trained):
    """nnU-Net resamples logits to the scan's grid and takes the softmax there; interpolating probabilities
    instead moves the argmax near class borders."""
    from autoseg.dataset.image_io import Geometry
    from autoseg.dataset.validation import CaseData
    from autoseg.model.prediction import restore
    from autoseg.planning.plan_types import load_plan
    from autoseg.preprocessing import case as case_module
    from autoseg.preprocessing.resample import resample_volume

    plan = load_plan(trained / "plan.json")
    rng = np.random.default_rng(11)
    image = rng.normal(100, 10, (1, 12, 20, 18)).astype(np.float32)  # nonzero everywhere: the crop is the scan
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0) if plan.orientation == "RAS" else tuple(np.eye(3).ravel())
    data = CaseData("x", image, None, Geometry((1.7, 1.3, 1.0), (0.0, 0.0, 0.0), direction))
    _, _, props = case_module.preprocess_case(data, plan, "3d_fullres")
    assert props.shape_after_resampling != props.shape_after_crop, "the case must be resampled"
    logits = (3 * rng.normal(size=(3, *props.shape_after_resampling))).astype(np.float32)
    restored = restore([(logits, props, plan)], keep_probabilities=True)

    kernels = case_module._kernels(plan, props.target_spacing, props.spacing, "linear")
    resampled = np.stack([resample_volume(c, props.shape_after_crop, kernels) for c in logits])
    expected = np.exp(resampled - resampled.max(0))
    expected /= expected.sum(0)
    back = case_module.Reorientation(tuple(props.reorient_permutation), tuple(props.reorient_flips))
    expected = case_module.undo_reorientation(expected.transpose([0] + [a + 1 for a in plan.transpose_backward]),
                                              back)
    assert np.allclose(restored.probabilities, expected, atol=1e-5)
    assert np.array_equal(restored.segmentation, expected.argmax(0))
    softmax_first = np.exp(logits - logits.max(0))
    softmax_first /= softmax_first.sum(0)
    interpolated = np.stack([resample_volume(c, props.shape_after_crop, kernels) for c in softmax_first]).argmax(0)
    assert (interpolated != resampled.argmax(0)).any(), "this case should tell the two orders apart"


def test_saved_crf_refines_the_restored_probabilities(trained, tmp_path):
    """A CRF step in the saved postprocessing runs on the probabilities on the scan's own grid with the scan's
    first channel normalised as the plan says, before any label-map step; the CLI writes what the API gives."""
    from autoseg.crf import CrfSettings, refine
    from autoseg.inference.inputs import InputCase
    from autoseg.inference.predictor import Predictor
    from autoseg.model.prediction import restore
    from autoseg.preprocessing.normalize import normalize_scan

    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    settings = CrfSettings(bilateral_weight=3.0, spatial_sigma_mm=3.0, intensity_sigma=0.5)
    save_postprocessing(Postprocessing(crf=settings), models / "3d_fullres")
    predictor = Predictor.load(models, device="cpu", mirror=False)
    case = InputCase("case_001", (images / "case_001_0000.nii.gz",), False)
    prepared = predictor.prepare_files(case)
    logits = predictor.infer(prepared)
    members = [(logits[0], prepared.inputs[0].props, predictor.models.plan)]
    plain = restore(members, keep_probabilities=True)
    intensity = normalize_scan(prepared.data.image[:1], predictor.models.plan.normalization[:1])[0]
    expected = refine(plain.probabilities, intensity, prepared.data.geometry.spacing, settings).argmax(0)
    refined = predictor.restore(prepared, logits)
    assert np.array_equal(refined.segmentation, expected)
    out = tmp_path / "out"
    run_autoseg("predict", "-i", images / "case_001_0000.nii.gz", "-o", out, "-m", models, "--no-tta", "-q")
    written = np.asarray(nib.load(str(out / "case_001.nii.gz")).dataobj).transpose(2, 1, 0)
    assert np.array_equal(written, expected)


def test_instances_map_and_report_in_the_scans_geometry(trained, tmp_path):
    images = Path(json.loads((trained / "fingerprint.json").read_text())["dataset_dir"]) / "imagesTr"
    source = images / "case_002_0000.nii.gz"
    out = tmp_path / "out"
    run_autoseg("predict", "-i", source, "-o", out, "-m", trained / "models", "--instances", "-q")
    label = nib.load(str(out / "case_002.nii.gz"))
    numbered = nib.load(str(out / "case_002_instances.nii.gz"))
    assert np.array_equal(numbered.affine, label.affine)
    labels, ids = np.asarray(label.dataobj), np.asarray(numbered.dataobj)
    report = json.loads((out / "case_002_report.json").read_text())
    assert report["instance_map"] == str(out / "case_002_instances.nii.gz")
    instances = report["instances"]
    assert instances and sorted(np.unique(ids[ids > 0]).tolist()) == [i["id"] for i in instances]
    assert ((ids > 0) == (labels > 0)).all()  # every labelled voxel is in one instance (no minimum size)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    for instance in instances:
        inside = ids == instance["id"]
        assert inside.sum() == instance["voxels"] and set(np.unique(labels[inside])) == {instance["value"]}
        ijk = np.argwhere(inside)  # nibabel's array is in file index order (i, j, k)
        assert instance["centroid_voxel"] == pytest.approx(ijk.mean(0).tolist())
        assert instance["box_start"] == ijk.min(0).tolist() and instance["box_stop"] == (ijk.max(0) + 1).tolist()
        world = ras_to_lps @ (label.affine @ np.append(ijk.mean(0), 1.0))[:3]
        assert instance["centroid_mm"] == pytest.approx(world.tolist(), abs=1e-4)
