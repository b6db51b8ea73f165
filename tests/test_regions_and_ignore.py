"""Region-based training (nested targets, sigmoid per region) and sparse labels (the ignore label): dataset.json
rules, loss, sampler, metrics, and the whole path from planning to predicted label maps on nested shapes."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.dataset import load_dataset
from autoseg.errors import DatasetInvalid
from autoseg.fingerprint import compute_fingerprint
from autoseg.label_scheme import LabelScheme, Region, Target
from autoseg.overlap import dice_per_target
from autoseg.preprocessing.crop import OUTSIDE
from autoseg.training.loss import Objective, dice_bce_loss
from autoseg.training.sampler import Case, PatchSampler

from conftest import run_autoseg, write_image

FAST = ["--precision", "fp32", "--workers", "0", "-q", "--recipe", "standard"]
BRATS_LABELS = {"background": 0, "whole": [1, 2], "core": 2}


def _nested_case(rng, shape=(16, 20, 18)):
    """A sphere (label 1) with a smaller sphere inside it (label 2): regions whole = {1, 2}, core = {2}."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = np.array(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 5.5] = 1
    label[r < 3] = 2
    image = rng.normal(100, 5, shape).astype(np.float32) + 60 * (label == 1) + 120 * (label == 2)
    image[:1] = 0
    return image, label


def _dataset(root: Path, labels: dict, n_cases=6, *, sparse_every: int | None = None, **extra) -> Path:
    """Nested-sphere cases; sparse_every=k keeps every k-th slice annotated and marks the rest 3 (ignore)."""
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        image, label = _nested_case(rng)
        if sparse_every:
            label[[z for z in range(label.shape[0]) if z % sparse_every]] = 3
        write_image(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_image(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz",
        **extra}))
    return root


# ---- dataset.json: nnU-Net's conventions, and each mistake one line ----

def test_brats_style_regions_and_an_ignore_label_read_as_nnunet_writes_them(tmp_path):
    dataset = load_dataset(_dataset(tmp_path / "d", {**BRATS_LABELS, "ignore": 3}, n_cases=1, sparse_every=2,
                                    regions_class_order=[1, 2]))
    scheme = LabelScheme.of(dataset)
    assert scheme.labels == {"background": 0, "whole": 1, "core": 2}
    assert scheme.regions == [Region("whole", [1, 2]), Region("core", [2])]
    assert scheme.ignore_label == 3 and scheme.output_channels == 2
    assert scheme.annotated_values == [0, 1, 2, 3] and scheme.foreground_values == [1, 2]
    assert [t.key for t in scheme.targets] == ["1+2", "2"]


@pytest.mark.parametrize("labels, extra, message", [
    (BRATS_LABELS, {}, 'labels: regions (labels given as lists of values) need "regions_class_order"'),
    (BRATS_LABELS, {"regions_class_order": [1]}, "regions_class_order: 1 values for 2 regions (whole, core)"),
    (BRATS_LABELS, {"regions_class_order": [1, 1]}, "regions_class_order: [1, 1] writes two regions as the same"),
    ({"background": 0, "core": 2, "whole": [1, 2]}, {"regions_class_order": [2, 1]},
     'region "core" [2] lies inside "whole" [1, 2], which comes after it'),
    ({"background": 0, "whole": [0, 1]}, {"regions_class_order": [1]}, "a region cannot contain background (0)"),
    ({"background": 0, "a": 1, "b": 2}, {"regions_class_order": [1, 2]}, "given, but no label is a region"),
    ({"background": 0, "a": 2, "ignore": 1}, {}, "the ignore label must be the highest value, got 1"),
    ({"background": 0, "a": 1, "ignore": [2]}, {}, 'labels["ignore"]: expected an integer label value, got a list'),
])
def test_a_wrong_regions_definition_is_one_line_naming_dataset_json(tmp_path, labels, extra, message):
    root = _dataset(tmp_path / "d", labels, n_cases=1, **extra)
    with pytest.raises(DatasetInvalid) as caught:
        load_dataset(root)
    assert any(str(root / "dataset.json") in p and message in p for p in caught.value.problems), caught.value.problems
    proc = run_autoseg("plan", root, "-o", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and message in proc.stderr


def test_label_values_outside_the_regions_are_refused_per_case(tmp_path):
    root = _dataset(tmp_path / "d", {"background": 0, "whole": [1]}, n_cases=1, regions_class_order=[1])
    with pytest.raises(DatasetInvalid) as caught:
        compute_fingerprint(root, workers=1, progress=False)
    assert any("case_000.nii.gz: label value(s) 2 not declared" in p for p in caught.value.problems)


def test_unannotated_voxels_are_not_foreground_in_the_fingerprint(tmp_path):
    fingerprint = compute_fingerprint(_dataset(tmp_path / "d", {"background": 0, "outer": 1, "inner": 2, "ignore": 3},
                                               n_cases=2, sparse_every=3), workers=1, progress=False)
    assert all(set(c.quality.label_voxels) <= {"1", "2"} for c in fingerprint.cases)
    assert fingerprint.foreground_intensity[0].mean > 150  # spheres only (160, 220), not the 100 background


# ---- the pieces: label maps, loss, sampler, metrics ----

def test_regions_are_written_in_order_and_later_ones_overwrite():
    scheme = LabelScheme({"background": 0, "kidney": 1, "masses": 3, "tumour": 2},
                         [Region("kidney", [1, 2, 3]), Region("masses", [2, 3]), Region("tumour", [2])])
    logits = np.full((3, 4), -5.0)
    logits[0, 1:] = 5  # kidney in voxels 1..3
    logits[1, 2:] = 5  # masses in 2..3
    logits[2, 3] = 5  # tumour in 3
    assert scheme.label_map(logits).tolist() == [0, 1, 3, 2]
    assert scheme.label_map(1 / (1 + np.exp(-logits)), probabilities=True).tolist() == [0, 1, 3, 2]
    assert LabelScheme({"background": 0, "a": 1, "b": 2}).label_map(np.eye(3)[:, [2, 0, 1]]).tolist() == [2, 0, 1]


def test_region_loss_skips_outside_voxels_and_is_small_when_right():
    target = torch.tensor([[[[0, 1, 2, 2], [1, 1, 2, 0]]]])  # (B=1, 1, 2, 4)
    regions = ((1, 2), (2,))
    right = torch.stack([torch.isin(target, torch.tensor(v)) for v in regions], 1).float() * 20 - 10
    assert dice_bce_loss(right, target, regions, False).item() < 1e-3
    masked = target.clone()
    masked[..., 0] = OUTSIDE
    changed = right.clone()
    changed[..., 0] = -changed[..., 0]  # wrong, but only where the target is OUTSIDE
    assert dice_bce_loss(changed, masked, regions, False).item() == pytest.approx(
        dice_bce_loss(right, masked, regions, False).item(), abs=1e-6)
    assert dice_bce_loss(changed, target, regions, False).item() > 0.1


def test_objective_counts_regions_for_pseudo_dice():
    target = torch.tensor([[[[0, 1, 2, OUTSIDE]]]])
    logits = torch.tensor([[[[[-1.0, 1.0, 1.0, 1.0]]], [[[-1.0, -1.0, 1.0, 1.0]]]]]).squeeze(2)
    objective = Objective((1.0,), False, ((1, 2), (2,)), (1, 2))
    (whole_p, whole_r), (core_p, core_r) = objective.foreground(logits, target)
    assert whole_p.flatten().tolist() == [False, True, True, False]  # the OUTSIDE voxel is not counted
    assert core_r.flatten().tolist() == [False, False, True, False]
    assert objective.label_map(logits).flatten().tolist() == [0, 1, 2, 2]


def test_sampler_centres_on_regions_never_on_ignored_voxels():
    rng = np.random.default_rng(0)
    label = np.full((20, 20, 20), 3, np.int8)  # unannotated everywhere...
    label[::5] = 0  # ...but every fifth slice,
    label[10, 4, 4] = 2  # where one core voxel
    label[15, 15, 15] = 1  # and one whole-only voxel lie
    locations = {1: np.array([[15, 15, 15]]), 2: np.array([[10, 4, 4]])}  # what preprocessing stores (no ignore)
    groups = ((1, 2), (2,))
    case = Case(np.zeros((1, 20, 20, 20), np.float32), label,
                {g: np.concatenate([locations[v] for v in values]) for g, values in enumerate(groups)})
    sampler = PatchSampler([case], (4, 4, 4), (4, 4, 4))
    centres = set()
    for _ in range(40):
        _, patch = sampler.sample(rng, case, force_foreground=True)
        centres.add(int(patch[0, 2, 2, 2]))
    assert centres == {1, 2}


def test_dice_leaves_ignored_voxels_out():
    reference = np.array([0, 1, 1, 3, 3, 0])
    prediction = np.array([0, 1, 1, 1, 1, 1])  # right where annotated but the last voxel, anything where ignored
    scores = dice_per_target(prediction, reference, [Target("a", (1,))], ignore_label=3)
    assert scores["1"] == pytest.approx(2 * 2 / (3 + 2))
    assert dice_per_target(prediction, reference, [Target("a", (1,))])["1"] == pytest.approx(2 * 2 / (5 + 2))


def test_evaluate_scores_regions_and_skips_the_ignore_label(tmp_path):
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1:5, 1:5, 1:5] = 1
    reference[2:4, 2:4, 2:4] = 2
    prediction = reference.copy()
    reference[0] = 3  # unannotated slice; the prediction has foreground there
    prediction[0, 2:4, 2:4] = 1
    write_image(tmp_path / "ref" / "c.nii.gz", reference)
    write_image(tmp_path / "pred" / "c.nii.gz", prediction)
    proc = run_autoseg("evaluate", tmp_path / "pred", tmp_path / "ref", "--labels", "1,2", "2",
                       "--ignore-label", "3", "-q")
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["labels"] == [[1, 2], [2]] and summary["ignore_label"] == 3
    assert summary["mean"]["1+2"]["dice"] == pytest.approx(1.0) and summary["mean"]["2"]["dice"] == pytest.approx(1.0)
    assert "1+2" in proc.stdout
    run_autoseg("evaluate", tmp_path / "pred", tmp_path / "ref", "--labels", "1,2", "-o", tmp_path / "s.json", "-q")
    assert json.loads((tmp_path / "s.json").read_text())["mean"]["1+2"]["dice"] < 1.0


# ---- end to end ----

def _train(tmp_path, root: Path, *flags) -> Path:
    out = tmp_path / "planned"
    run_autoseg("plan", root, "-o", out, "--configs", "3d_fullres", "--preprocess", "--workers", "1", "-q")
    run_autoseg("train", out, "--fold", "0", "--epochs", "3", "--iterations-per-epoch", "6", *FAST, *flags)
    return out


def test_region_model_on_sparse_labels_trains_predicts_and_exports_probabilities_per_region(tmp_path):
    root = _dataset(tmp_path / "Dataset010_Nested", {**BRATS_LABELS, "ignore": 3}, regions_class_order=[1, 2],
                    sparse_every=2)
    out = _train(tmp_path, root)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["regions"] == [{"name": "whole", "values": [1, 2]}, {"name": "core", "values": [2]}]
    assert plan["ignore_label"] == 3
    fold = out / "models" / "3d_fullres" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert checkpoint["num_classes"] == 2  # one sigmoid per region, no background output
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["pseudo_dice"]) == {"whole", "core"}
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean_dice"]) == {"whole", "core"}

    run_autoseg("find-best", out, "-q")
    choice = json.loads((out / "models" / "inference.json").read_text())
    assert set(choice["candidates"][0]["mean_dice"]) == {"1+2", "2"}  # scored per region
    assert choice["postprocessing"]["largest_component_of_classes"] == []  # not tried on regions
    run_autoseg("export", out, "-o", tmp_path / "nested.autoseg")
    pred = tmp_path / "pred"
    run_autoseg("predict", "-i", root / "imagesTr" / "case_000_0000.nii.gz", "-o", pred, "-m",
                tmp_path / "nested.autoseg", "--no-tta", "--save-probabilities", "-q")
    segmentation = nib.load(pred / "case_000.nii.gz").get_fdata()
    assert set(np.unique(segmentation).tolist()) <= {0, 1, 2}
    with np.load(pred / "case_000_probabilities.npz") as saved:
        probabilities, values = saved["probabilities"], saved["labels"]
    assert values.tolist() == [1, 2] and probabilities.shape[0] == 2
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    # the label map is the region rule applied to the exported probabilities (no argmax, no softmax)
    rule = np.zeros(probabilities.shape[1:], np.uint8)
    rule[probabilities[0] > 0.5] = 1
    rule[probabilities[1] > 0.5] = 2
    assert np.mean(rule == np.asarray(segmentation).transpose(2, 1, 0)) > 0.999
    info = run_autoseg("info", tmp_path / "nested.autoseg").stdout
    assert "whole = values [1, 2], written as 1, core = values [2], written as 2" in info


def test_sparse_labels_train_and_predict_dense_maps(tmp_path):
    root = _dataset(tmp_path / "Dataset011_Sparse", {"background": 0, "outer": 1, "inner": 2, "ignore": 3},
                    sparse_every=3)
    out = _train(tmp_path, root)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ignore_label"] == 3 and plan["labels"] == {"background": 0, "outer": 1, "inner": 2}
    fold = out / "models" / "3d_fullres" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert checkpoint["num_classes"] == 3  # background and two classes: the ignore label is no output
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["train_loss"]) for m in metrics)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    for case in summary["cases"]:
        predicted = nib.load(fold / "validation" / f"{case['case']}.nii.gz").get_fdata()
        assert 3 not in np.unique(predicted)  # dense: no voxel is predicted "unannotated"
    stored = json.loads(next((out / "preprocessed").rglob("case_000.json")).read_text())
    assert set(stored["class_locations"]) <= {"1", "2"}  # the sampler is never given ignored voxels
