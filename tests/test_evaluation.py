"""Metrics against hand-computed values and independent computations; evaluate, postprocessing decision, find-best."""
import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from autoseg.evaluation.metrics import class_metrics, image_diagonal_mm, surface

from conftest import run_autoseg, write_image, write_nnunet_dataset


# --- hand-computed -------------------------------------------------------------------------------------

def test_overlap_counts_and_volumes_by_hand():
    pred = np.zeros((6, 6, 6), bool)
    ref = np.zeros((6, 6, 6), bool)
    pred[1:3, 1:3, 1:3] = True  # 8 voxels
    ref[1:3, 1:3, 1:4] = True  # 12 voxels, 8 shared
    m = class_metrics(pred, ref, spacing=(2.0, 1.0, 1.0))
    assert (m.tp, m.fp, m.fn) == (8, 0, 4)
    assert m.dice == pytest.approx(16 / 20) and m.iou == pytest.approx(8 / 12)
    assert m.pred_volume_mm3 == 16.0 and m.ref_volume_mm3 == 24.0


@pytest.mark.parametrize("spacing,expected", [((1.0, 1.0, 2.0), 6.0), ((2.0, 1.0, 1.0), 3.0),
                                              ((1.0, 0.5, 0.5), 1.5)])
def test_voxel_distances_follow_anisotropic_spacing(spacing, expected):
    pred = np.zeros((5, 5, 6), bool)
    ref = np.zeros((5, 5, 6), bool)
    pred[2, 2, 1] = True
    ref[2, 2, 4] = True  # 3 voxels apart along the last axis
    # a relative 1e-6 below the distance still counts (float32 spacing): 1e-5 below does not
    m = class_metrics(pred, ref, spacing, tolerance_mm=expected * (1 - 1e-5), surface_convention="voxels")
    assert m.hd95 == pytest.approx(expected)
    assert m.nsd == 0.0
    assert class_metrics(pred, ref, spacing, tolerance_mm=expected, surface_convention="voxels").nsd == 1.0
    assert class_metrics(pred, ref, spacing, tolerance_mm=expected * (1 - 5e-7), surface_convention="voxels").nsd == 1.0


def test_voxel_surface_dice_counts_both_surfaces():
    ref = np.zeros((12, 12), bool)
    pred = np.zeros((12, 12), bool)
    ref[3:7, 3:7] = True  # 4x4: 12 surface pixels
    pred[3:7, 3:8] = True  # 4x5: 14 surface pixels; its column 7 lies 1 mm beyond ref's column 6
    assert surface(ref).sum() == 12 and surface(pred).sum() == 14
    # on each other's surface: pred 10 of 14 (not column 7), ref 10 of 12 (not rows 4-5 of column 6)
    exact = class_metrics(pred, ref, (1.0, 1.0), tolerance_mm=0.5, surface_convention="voxels")
    assert exact.nsd == pytest.approx(20 / 26)
    assert class_metrics(pred, ref, (1.0, 1.0), tolerance_mm=1.0, surface_convention="voxels").nsd == 1.0
    assert exact.hd95 == pytest.approx(1.0)


@pytest.mark.parametrize("convention", ["elements", "voxels"])
def test_empty_mask_conventions(convention):
    empty = np.zeros((4, 5, 6), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    both = class_metrics(empty, empty, (1.0, 2.0, 3.0), surface_convention=convention)
    assert all(math.isnan(v) for v in (both.dice, both.iou, both.hd95, both.nsd))
    assert (both.tp, both.fp, both.fn) == (0, 0, 0)
    for pred, ref in ((empty, some), (some, empty)):
        m = class_metrics(pred, ref, (1.0, 2.0, 3.0), surface_convention=convention)
        assert (m.dice, m.iou, m.nsd) == (0.0, 0.0, 0.0)
        assert m.hd95 == pytest.approx(image_diagonal_mm((4, 5, 6), (1.0, 2.0, 3.0)))
        assert m.hd95 == pytest.approx(math.sqrt(3 ** 2 + 8 ** 2 + 15 ** 2))


# --- against independent computations on random shapes -------------------------------------------------

def _random_blob(rng, shape):
    from scipy import ndimage
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    mask = noise > np.percentile(noise, 80)
    mask[:2] = mask[-2:] = False  # keep away from the border, where contour conventions differ
    mask[:, :2] = mask[:, -2:] = False
    mask[:, :, :2] = mask[:, :, -2:] = False
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxel_metrics_match_simpleitk_and_a_kd_tree(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (20, 24, 22), (2.5, 0.8, 1.1)
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    m = class_metrics(pred, ref, spacing, tolerance_mm=2.0, surface_convention="voxels")

    images = []
    for mask in (pred, ref):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(spacing[::-1])
        images.append(image)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(images[1], images[0])
    assert m.dice == pytest.approx(overlap.GetDiceCoefficient())
    assert m.iou == pytest.approx(overlap.GetJaccardCoefficient())

    # surfaces from SimpleITK's face-connected contour, distances by brute-force nearest neighbours
    points = []
    for image in images:
        contour = sitk.GetArrayFromImage(sitk.BinaryContour(image, fullyConnected=False, backgroundValue=0,
                                                            foregroundValue=1)).astype(bool)
        points.append(np.argwhere(contour) * np.asarray(spacing))
    d_pred = cKDTree(points[1]).query(points[0])[0]
    d_ref = cKDTree(points[0]).query(points[1])[0]
    assert m.hd95 == pytest.approx(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))
    assert m.nsd == pytest.approx(((d_pred <= 2.0).sum() + (d_ref <= 2.0).sum()) / (d_pred.size + d_ref.size))


# --- autoseg evaluate -------------------------------------------------------------------------------------

def _label_pair(folder_pred, folder_ref, name, rng, spacing=(2.0, 1.0, 1.0)):
    ref = np.zeros((10, 14, 12), np.uint8)
    ref[2:7, 3:10, 3:9] = 1
    ref[2:7, 3:10, 6:9] = 2
    pred = ref.copy()
    pred[rng.integers(2, 7), rng.integers(3, 10), rng.integers(3, 9)] = 0
    write_image(folder_ref / name, ref, spacing)
    write_image(folder_pred / name, pred, spacing)
    return pred, ref


def test_evaluate_writes_summary_csv_and_boxplots(tmp_path):
    rng = np.random.default_rng(0)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for k in range(4):
        _label_pair(pred_dir, ref_dir, f"case{k}.nii.gz", rng)
    proc = run_autoseg("evaluate", pred_dir, ref_dir, "--workers", "2", "-q")
    assert "fg mean" in proc.stdout
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["num_cases"] == 4 and summary["labels"] == [1, 2]
    assert summary["surface_convention"] == "elements" and "surface elements" in proc.stdout
    assert 0.9 < summary["mean"]["1"]["dice"] <= 1.0
    assert summary["mean"]["1"]["ref_volume_mm3"] == 5 * 7 * 3 * 2.0
    case0 = summary["cases"][0]["metrics"]["2"]
    assert case0["tp"] + case0["fn"] == 5 * 7 * 3
    rows = list(csv.DictReader((pred_dir / "cases.csv").open()))
    assert len(rows) == 8 and set(rows[0]) >= {"case", "label", "dice", "hd95", "nsd", "tp"}
    assert (pred_dir / "boxplots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_names_a_case_whose_geometry_differs(tmp_path):
    rng = np.random.default_rng(1)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    _label_pair(pred_dir, ref_dir, "good.nii.gz", rng)
    pred, _ = _label_pair(pred_dir, ref_dir, "shifted.nii.gz", rng)
    write_image(pred_dir / "shifted.nii.gz", pred, (2.0, 1.0, 1.0), origin=(5.0, 0.0, 0.0))
    proc = run_autoseg("evaluate", pred_dir, ref_dir, "-q", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "shifted.nii.gz: geometry differs from the reference (origin" in proc.stderr
    assert not (pred_dir / "summary.json").exists()
    (pred_dir / "good.nii.gz").unlink()
    proc = run_autoseg("evaluate", pred_dir, ref_dir, "-q", check=False)
    assert proc.returncode == 1 and "good.nii.gz: no prediction for this reference" in proc.stderr


# --- postprocessing decision --------------------------------------------------------------------------------

def _pp_pairs(tmp_path, spurious: bool):
    from autoseg.evaluation.postprocessing_decision import decide_postprocessing
    from autoseg.label_scheme import LabelScheme
    pairs = []
    for k in range(3):
        ref = np.zeros((12, 16, 16), np.uint8)
        ref[2:6, 2:7, 2:7] = 1
        if not spurious:
            ref[8:11, 10:14, 10:14] = 1  # a real second component of class 1
        pred = ref.copy()
        pred[3:5, 3:6, 3:6] = 2  # class 2 inside the first blob
        ref[3:5, 3:6, 3:6] = 2
        if spurious:
            pred[9:11, 11:14, 11:14] = 1  # a false blob far away
        pp, ref_p = tmp_path / f"p{k}.nii.gz", tmp_path / f"r{k}.nii.gz"
        write_image(pp, pred)
        write_image(ref_p, ref)
        pairs.append((f"c{k}", pp, ref_p))
    return decide_postprocessing(pairs, LabelScheme({"background": 0, "a": 1, "b": 2}), workers=1, progress=False)


def test_postprocessing_removes_a_spurious_blob(tmp_path):
    decision, report = _pp_pairs(tmp_path, spurious=True)
    assert decision.largest_component_of_foreground
    assert report["dice_foreground_largest_component"]["1"] > report["dice_without"]["1"]


def test_postprocessing_keeps_real_second_components(tmp_path):
    decision, _ = _pp_pairs(tmp_path, spurious=False)
    assert not decision.largest_component_of_foreground
    assert decision.largest_component_of_classes == []


# --- find-best ------------------------------------------------------------------------------------------

def test_find_best_end_to_end_and_predict_follows_it(tmp_path):
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.training.loop import train
    from autoseg.training.options import TrainOptions

    data = write_nnunet_dataset(tmp_path / "Dataset001_Syn", n_cases=6, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "planned"
    plan_dataset(data, out, workers=1, configurations=("2d", "3d_fullres"), progress=False)
    preprocess_dataset(out, workers=1, progress=False)
    options = TrainOptions(epochs=1, iterations_per_epoch=3, precision="fp32", width=0.25)  # a quarter: faster
    for configuration in ("2d", "3d_fullres"):
        for fold in ("0", "1"):
            train(out, fold, configuration, options, device="cpu", workers=0, progress=False)

    proc = run_autoseg("find-best", out, "--workers", "1", "-q")
    choice = json.loads((out / "models/inference.json").read_text())
    assert len(choice["candidates"]) == 3 and choice["folds"] == ["0", "1"]
    names = {" + ".join(c["configurations"]) for c in choice["candidates"]}
    assert names == {"2d", "3d_fullres", "2d + 3d_fullres"}
    best = choice["candidates"][0]
    assert best["configurations"] == choice["configurations"]
    assert all((best["foreground_mean_dice"] or 0) >= (c["foreground_mean_dice"] or 0) for c in choice["candidates"])
    assert "chosen:" in proc.stdout and "2d + 3d_fullres" in proc.stdout
    crf = choice["postprocessing_dice"]["crf"]  # the CRF was tried on the winner's probabilities, every setting
    assert len(crf["tried"]) == 8 and set(crf["dice_without"]) == {"1", "2"}
    assert (choice["postprocessing"]["crf"] is None) == (crf["chosen"] is None)
    ensemble = out / "models/ensembles/2d__3d_fullres/crossval"
    splits = json.loads((out / "splits.json").read_text())
    validated = sorted(splits[0]["val"] + splits[1]["val"])
    assert sorted(p.name[:-7] for p in ensemble.glob("*.nii.gz")) == validated
    assert json.loads((ensemble / "summary.json").read_text())["num_cases"] == len(validated)

    pred = tmp_path / "pred"
    run_autoseg("predict", "-i", data / "imagesTr", "-o", pred, "-m", out / "models", "--no-tta", "-q")
    summary = json.loads((pred / "prediction_summary.json").read_text())
    assert summary["configuration"] == " + ".join(choice["configurations"])

    # an ensemble choice is followed too
    choice.update(configurations=["2d", "3d_fullres"])
    (out / "models/inference.json").write_text(json.dumps(choice))
    ens = tmp_path / "ens"
    run_autoseg("predict", "-i", data / "imagesTr", "-o", ens, "-m", out / "models", "--no-tta", "-q")
    assert json.loads((ens / "prediction_summary.json").read_text())["configuration"] == "2d + 3d_fullres"
    assert len(list(ens.glob("*.nii.gz"))) == 6


def test_find_best_compares_network_families_planned_side_by_side(tmp_path):
    """`plan --families deeplab` adds 3d_fullres@deeplab on the same preprocessed data; find-best ranks it, its
    ensemble with the plain network, and predict follows a family's choice."""
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.training.loop import train
    from autoseg.training.options import TrainOptions

    data = write_nnunet_dataset(tmp_path / "Dataset002_Fam", n_cases=5, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "planned"
    plan_dataset(data, out, workers=1, configurations=("3d_fullres",), progress=False, families=("deeplab",))
    plan = json.loads((out / "plan.json").read_text())
    assert list(plan["configurations"]) == ["3d_fullres", "3d_fullres@deeplab"]
    assert plan["configurations"]["3d_fullres@deeplab"]["data_identifier"] == "3d_fullres"
    result = preprocess_dataset(out, workers=1, progress=False)
    assert sorted(p.name for p in (out / "preprocessed").iterdir()) == ["3d_fullres"]
    options = TrainOptions(epochs=1, iterations_per_epoch=3, precision="fp32", batch_size=2, width=0.25)
    for configuration in ("3d_fullres", "3d_fullres@deeplab"):
        train(out, "0", configuration, options, device="cpu", workers=0, progress=False)
    assert result.processed == 5

    run_autoseg("find-best", out, "--workers", "1", "--no-crf", "-q")
    choice = json.loads((out / "models/inference.json").read_text())
    names = {" + ".join(c["configurations"]) for c in choice["candidates"]}
    assert names == {"3d_fullres", "3d_fullres@deeplab", "3d_fullres + 3d_fullres@deeplab"}
    assert choice["postprocessing_dice"]["crf"] == "not tried: disabled"

    choice.update(configurations=["3d_fullres@deeplab"])
    (out / "models/inference.json").write_text(json.dumps(choice))
    pred = tmp_path / "pred"
    run_autoseg("predict", "-i", data / "imagesTr", "-o", pred, "-m", out / "models", "--no-tta", "-q")
    assert json.loads((pred / "prediction_summary.json").read_text())["configuration"] == "3d_fullres@deeplab"
    # and packed into one file, it predicts the same
    run_autoseg("export", out, "-o", tmp_path / "family.autoseg")
    packed = tmp_path / "packed"
    run_autoseg("predict", "-i", data / "imagesTr", "-o", packed, "-m", tmp_path / "family.autoseg", "--no-tta", "-q")
    for path in sorted(pred.glob("*.nii.gz")):
        assert np.array_equal(np.asarray(nib.load(str(path)).dataobj),
                              np.asarray(nib.load(str(packed / path.name)).dataobj))
