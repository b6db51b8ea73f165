"""Bad input to train, evaluate, export and info: one line naming the file, exit 1, nothing written."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.cli import main

from conftest import train_tiny

CORPUS_STAGE = "train / evaluate / export"
CORPUS_CLASSES = {
    "train-input": "training without what it needs (plan, preprocessed data, a planned configuration, an intact "
                   "checkpoint to resume) stops before training with one line naming the missing or damaged file",
    "evaluate-input": "evaluation with a missing, unreadable or mismatched prediction or reference stops with one "
                      "line naming the case's file; no summary is written",
    "export-input": "exporting what is not a finished, intact model stops with one line naming the file; no "
                    "package (and no temporary file) is left",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("hostile_commands"), 1, ["0"])


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    return out


def _run(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


# --- train --------------------------------------------------------------------------------------------


def _no_plan(out: Path) -> Path:
    (out / "plan.json").unlink()
    return out / "plan.json"


def _no_preprocessed(out: Path) -> Path:
    shutil.rmtree(out / "preprocessed")
    return out / "preprocessed"


def _empty_preprocessed(out: Path) -> Path:
    folder = next((out / "preprocessed").iterdir())
    for f in folder.iterdir():
        f.unlink()
    return folder


def _plan_not_json(out: Path) -> Path:
    (out / "plan.json").write_text("{ this is not json")
    return out / "plan.json"


def _damaged_checkpoint(out: Path) -> Path:
    path = out / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    path.write_bytes(path.read_bytes()[:100])
    return path


def _fingerprint_missing(out: Path) -> Path:
    (out / "fingerprint.json").unlink()
    (out / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").unlink()
    return out / "fingerprint.json"


TRAIN = [
    pytest.param(_no_plan, [], id="train-input/no-plan"),
    pytest.param(_plan_not_json, [], id="train-input/plan-not-json"),
    pytest.param(_no_preprocessed, [], id="train-input/no-preprocessed-data"),
    pytest.param(_empty_preprocessed, [], id="train-input/empty-preprocessed-folder"),
    pytest.param(_damaged_checkpoint, [], id="train-input/truncated-checkpoint"),
    pytest.param(lambda out: out / "plan.json", ["--config", "2d"], id="train-input/configuration-not-planned"),
]


@pytest.mark.parametrize("damage, extra", TRAIN)
def test_train_refuses_in_one_line(trained, tmp_path, capsys, damage, extra):
    out = _copy(trained, tmp_path)
    named = damage(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, lines = _run(capsys, "train", out, "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "1",
                       "--precision", "fp32", "--workers", "0", "-q", "--no-validation", *extra)
    assert code == 1 and len(lines) == 1, lines
    assert str(named) in lines[0], lines
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --- evaluate ------------------------------------------------------------------------------------------


def _label(path: Path, array: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4) if affine is None else affine), str(path))


def _pairs(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        array = (rng.random((8, 9, 10)) > 0.7).astype(np.uint8)
        _label(pred / f"{case}.nii.gz", array)
        _label(ref / f"{case}.nii.gz", array)
    return pred, ref


def _missing_prediction(pred: Path, ref: Path) -> Path:
    (pred / "b.nii.gz").unlink()
    return pred / "b.nii.gz"


def _truncated_prediction(pred: Path, ref: Path) -> Path:
    data = (pred / "b.nii.gz").read_bytes()
    (pred / "b.nii.gz").write_bytes(data[:len(data) // 2])
    return pred / "b.nii.gz"


def _other_grid(pred: Path, ref: Path) -> Path:
    _label(pred / "b.nii.gz", np.zeros((8, 9, 11)))
    return pred / "b.nii.gz"


def _other_spacing(pred: Path, ref: Path) -> Path:
    _label(pred / "b.nii.gz", np.zeros((8, 9, 10)), np.diag([2.0, 1.0, 1.0, 1.0]))
    return pred / "b.nii.gz"


def _fractional_labels(pred: Path, ref: Path) -> Path:
    nib.save(nib.Nifti1Image(np.full((8, 9, 10), 0.5, np.float32), np.eye(4)), str(pred / "b.nii.gz"))
    return pred / "b.nii.gz"


def _no_references(pred: Path, ref: Path) -> Path:
    for f in ref.iterdir():
        f.unlink()
    return ref


def _reference_folder_missing(pred: Path, ref: Path) -> Path:
    shutil.rmtree(ref)
    return ref


EVALUATE = [
    pytest.param(_missing_prediction, id="evaluate-input/missing-prediction"),
    pytest.param(_truncated_prediction, id="evaluate-input/truncated-prediction"),
    pytest.param(_other_grid, id="evaluate-input/prediction-on-another-grid"),
    pytest.param(_other_spacing, id="evaluate-input/prediction-with-other-spacing"),
    pytest.param(_fractional_labels, id="evaluate-input/fractional-label-values"),
    pytest.param(_no_references, id="evaluate-input/no-reference-files"),
    pytest.param(_reference_folder_missing, id="evaluate-input/reference-folder-missing"),
]


@pytest.mark.parametrize("damage", EVALUATE)
def test_evaluate_refuses_in_one_line(tmp_path, capsys, damage):
    pred, ref = _pairs(tmp_path)
    named = damage(pred, ref)
    code, lines = _run(capsys, "evaluate", pred, ref, "--workers", "1", "-q")
    problems = [line for line in lines if not line.startswith("autoseg: error:")] or lines
    assert code == 1 and len(problems) == 1, lines
    assert str(named) in problems[0], lines
    assert not (pred / "summary.json").exists() and not list(pred.glob(".tmp-*"))


# --- export and info -------------------------------------------------------------------------------------


def _no_models(out: Path) -> Path:
    shutil.rmtree(out / "models")
    return out


def _unfinished_fold(out: Path) -> Path:
    fold = out / "models" / "3d_fullres" / "fold_0"
    (fold / "checkpoint_final.pt").rename(fold / "checkpoint_latest.pt")
    return fold


def _export_damaged_checkpoint(out: Path) -> Path:
    return _damaged_checkpoint(out)


def _fold_plan_missing(out: Path) -> Path:
    path = out / "models" / "3d_fullres" / "fold_0" / "plan.json"
    path.unlink()
    return path


def _bad_inference_choice(out: Path) -> Path:
    path = out / "models" / "inference.json"
    path.write_text(json.dumps({"configurations": ["../../etc"], "postprocessing": {}}))
    return path


EXPORT = [
    pytest.param(_no_models, [], id="export-input/no-models-folder"),
    pytest.param(_unfinished_fold, [], id="export-input/fold-still-training"),
    pytest.param(_export_damaged_checkpoint, [], id="export-input/truncated-checkpoint"),
    pytest.param(_fold_plan_missing, [], id="export-input/fold-plan-missing"),
    pytest.param(_bad_inference_choice, [], id="export-input/inference-choice-escapes"),
    pytest.param(lambda out: out / "models" / "3d_fullres" / "fold_3", ["--folds", "3"],
                 id="export-input/fold-not-trained"),
]


@pytest.mark.parametrize("damage, extra", EXPORT)
def test_export_refuses_in_one_line(trained, tmp_path, capsys, damage, extra):
    out = _copy(trained, tmp_path)
    named = damage(out)
    package = tmp_path / "model.autoseg"
    code, lines = _run(capsys, "export", out, "-o", package, *extra)
    assert code == 1 and len(lines) == 1, lines
    assert str(named) in lines[0], lines
    assert not package.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("what", [pytest.param("folder", id="export-input/info-on-a-folder"),
                                  pytest.param("missing", id="export-input/info-on-a-missing-file")])
def test_info_refuses_in_one_line(tmp_path, capsys, what):
    path = tmp_path / "thing"
    if what == "folder":
        path.mkdir()
    code, lines = _run(capsys, "info", path)
    assert code == 1 and len(lines) == 1 and str(path) in lines[0], lines
