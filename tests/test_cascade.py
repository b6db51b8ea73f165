"""The cascade end to end on tiny synthetic data: low-resolution folds, their cross-validation
predictions on the full-resolution grid, the second stage trained on them, prediction through both."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError

from conftest import write_nnunet_dataset

CONFIGS = ("3d_fullres", "3d_lowres", "3d_cascade_fullres")


def test_cascade_trains_on_cross_validation_predictions_and_predicts(tmp_path):
    from autoseg.inference.predict import PredictOptions, predict
    from autoseg.model.package import ExportOptions, export_package
    from autoseg.planning.plan_types import load_plan
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.preprocessing.storage import load_case
    from autoseg.training.augmentation import augmentation_settings
    from autoseg.training.batches import TRAIN_STREAM, CaseSource, IndexedBatches
    from autoseg.training.cascade import NEXT_STAGE_DIR, previous_stage_predictions
    from autoseg.training.loop import train
    from autoseg.training.options import TrainOptions

    data = write_nnunet_dataset(tmp_path / "Dataset001_Syn", n_cases=5, shape=(24, 36, 32), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "planned"
    # a tiny memory budget makes the patch small next to the image: the planner adds the cascade
    plan_dataset(data, out, workers=1, gpu_memory_gb=0.01, configurations=CONFIGS, progress=False)
    plan = load_plan(out / "plan.json")
    assert set(plan.configurations) == set(CONFIGS)
    preprocess_dataset(out, workers=1, progress=False)
    options = TrainOptions(epochs=1, iterations_per_epoch=1, precision="fp32")

    with pytest.raises(AutosegError, match="train all folds of 3d_lowres"):
        train(out, "0", "3d_cascade_fullres", options, device="cpu", workers=0, progress=False)

    for fold in range(5):
        train(out, str(fold), "3d_lowres", options, device="cpu", workers=0, progress=False)
    full_folder = out / "preprocessed" / plan.configurations["3d_fullres"].data_identifier
    case_ids = sorted(p.stem for p in full_folder.glob("*.json"))
    previous = previous_stage_predictions(out, plan, "3d_cascade_fullres", case_ids)
    for case_id, path in previous.items():
        assert path.parent.name == NEXT_STAGE_DIR
        _, label, _ = load_case(full_folder, case_id)
        assert np.load(path).shape == label.shape
        assert set(np.unique(np.load(path))) <= {0, 1, 2}

    # unaugmented batches carry the previous stage's segmentation as one-hot channels
    settings = augmentation_settings(plan.configurations["3d_cascade_fullres"].patch_size)
    source = CaseSource(full_folder, tuple(case_ids), previous, 3)
    batch = IndexedBatches(source, settings, 2, 0, TRAIN_STREAM, 0, False)[0]
    assert batch["data"].shape[1] == 1 + 2
    extra = batch["data"][:, 1:]
    assert set(torch.unique(extra).tolist()) <= {0.0, 1.0} and extra.sum(1).max() <= 1

    result = train(out, "0", "3d_cascade_fullres", options, device="cpu", workers=0, progress=False)
    assert result.validation is not None and result.validation["num_cases"] == 1
    state = torch.load(result.model_dir / "checkpoint_final.pt", weights_only=False)
    assert state["in_channels"] == 3

    pred = tmp_path / "pred"
    options = PredictOptions("3d_cascade_fullres", folds=["0"], mirror=False, device="cpu", progress=False)
    done = predict(data / "imagesTr", pred, out / "models", options)
    assert not done.failed and len(done.written) == 5
    summary = json.loads((pred / "prediction_summary.json").read_text())
    assert summary["configuration"] == "3d_cascade_fullres"
    for case_id in done.written:
        written = nib.load(str(pred / f"{case_id}.nii.gz"))
        source = nib.load(str(data / "imagesTr" / f"{case_id}_0000.nii.gz"))
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine)

    # the package of a cascade carries its first stage: the same label maps from the one file
    package = tmp_path / "cascade.autoseg"
    export_package(out, package, ExportOptions("3d_cascade_fullres", ["0"]))
    from_package = tmp_path / "pred_package"
    done = predict(data / "imagesTr", from_package, package, PredictOptions(mirror=False, device="cpu", progress=False))
    assert not done.failed and len(done.written) == 5
    for case_id in done.written:
        a, b = nib.load(str(from_package / f"{case_id}.nii.gz")), nib.load(str(pred / f"{case_id}.nii.gz"))
        assert np.array_equal(a.get_fdata(), b.get_fdata()) and a.header.binaryblock == b.header.binaryblock
