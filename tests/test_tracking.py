"""autoseg train --tensorboard: the metrics as scalars and a validation slice per epoch, beside metrics.jsonl."""
import json
import shutil

import numpy as np
import pytest

from autoseg.training.tracking import overlay_pair

from conftest import autoseg_here, write_nnunet_dataset


def test_overlay_pair_colours_reference_and_prediction_sides():
    image = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    reference = np.zeros((20, 30), np.int64)
    prediction = np.zeros((20, 30), np.int64)
    reference[5:10, 5:10] = 1
    prediction[12:15, 20:25] = 2
    pair = overlay_pair(image, reference, prediction)
    assert pair.shape == (3, 20, 62) and pair.dtype == np.uint8
    rgb = pair.transpose(1, 2, 0).astype(int)
    grey = rgb[:, :, 0] == rgb[:, :, 1]
    assert not grey[5:10, 5:10].any() and grey[12:15, 20:25].all()  # left: the reference only
    assert not grey[12:15, 52:57].any() and grey[5:10, 37:42].all()  # right: the prediction only


def test_train_with_tensorboard_writes_scalars_and_images(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra (pip install 'autoseg[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset

    data = write_nnunet_dataset(tmp_path / "Dataset001_Syn", n_cases=6, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "planned"
    plan_dataset(data, out, workers=1, configurations=("3d_fullres",), progress=False)
    preprocess_dataset(out, workers=1, progress=False)
    autoseg_here("train", out, "--epochs", "2", "--iterations-per-epoch", "2", "--no-validation", "--tensorboard",
                "--precision", "fp32", "--workers", "0", "-q")
    folder = out / "models/3d_fullres/fold_0"
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train_loss", "val_loss", "lr", "pseudo_dice/a", "pseudo_dice/b"} <= set(tags["scalars"])
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx([m["train_loss"] for m in metrics])
    assert [e.step for e in events.Images("validation/reference_vs_prediction")] == [1, 2]
    # switching tracking on or off is not a change of the run: it resumes
    autoseg_here("train", out, "--epochs", "3", "--iterations-per-epoch", "2", "--no-validation",
                "--precision", "fp32", "--workers", "0", "-q")
    shutil.rmtree(folder / "tensorboard")
